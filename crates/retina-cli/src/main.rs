//! `retina`: the command line of retina-wgpu.

use clap::Parser;
use retina_cli::cli;

fn main() -> std::process::ExitCode {
    // This thread joins rayon's global pool as one of its threads, as OpenMP's master thread
    // does: the CPU backend's parallel loops (hundreds per training step) then start on a
    // thread of the pool, which takes part in them, instead of being handed to the pool from
    // outside while this thread sleeps until they end (three threads taking turns on two
    // cores). Measured on 2 cores: training steps 13-18% faster. The pool keeps its size
    // (RAYON_NUM_THREADS, else one thread per core), this thread included.
    if let Err(e) = rayon::ThreadPoolBuilder::new().use_current_thread().build_global() {
        eprintln!("warning: rayon's thread pool: {e}");
    }
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
