//! `retina bench eval`: the COCO bbox evaluation on a val2017-sized workload, from files.
//!
//! Rows (all CPU, size = number of results): `coco_parse_gt` (read + parse + check the instances
//! file), `coco_parse_results` (read + parse + check the results against it), `coco_evaluate`
//! ([`coco::evaluate`] on parsed inputs) and `coco_eval_total` (all of it plus the summary text:
//! what `COCO(gt)`, `loadRes`, `evaluate`, `accumulate` and `summarize` do in pycocotools).
//! The 12 stats go to stderr. With `--keep DIR` the files stay in `DIR`, with
//! `DIR/retina_bench.json` (`{"rows", "stats", "summary"}`), for `scripts/coco_eval_speed.py`.

use std::path::PathBuf;

use crate::coco_workload::CocoWorkload;
use clap::Args;
use retina_wgpu::coco::{self, Instances};
use retina_wgpu::{Error, Result};

use super::{Common, Row, median_seconds, progress, report};
use crate::cli::BackendChoice;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// An instances file to use instead of the generated workload (needs --results).
    #[arg(long, requires = "results")]
    gt: Option<PathBuf>,
    /// A bbox results file to use instead of the generated workload (needs --gt).
    #[arg(long, requires = "gt")]
    results: Option<PathBuf>,
    /// Write the generated files (and retina_bench.json) to this directory and keep them.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Seed of the generated workload.
    #[arg(long, default_value_t = 2017)]
    seed: u64,
    /// Images of the generated workload (val2017: 5,000); annotations scale with it.
    #[arg(long, default_value_t = 5000)]
    images: usize,
    #[command(flatten)]
    common: Common,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.common.backend == BackendChoice::Gpu {
        return Err(Error::InvalidParameter("bench eval runs on the CPU only".into()));
    }
    let temp = std::env::temp_dir().join(format!("retina-bench-eval-{}", std::process::id()));
    let (gt_path, results_path) = match (&args.gt, &args.results) {
        (Some(gt), Some(results)) => (gt.clone(), results.clone()),
        _ => {
            if args.images == 0 {
                return Err(Error::InvalidParameter(
                    "bench eval: --images must be at least 1".into(),
                ));
            }
            let val2017 = CocoWorkload::default();
            let workload = CocoWorkload {
                images: args.images,
                annotations: val2017.annotations * args.images / val2017.images,
                ..val2017
            };
            let bar = progress(1, "generating the val2017-like workload");
            let paths = workload.write(args.keep.as_ref().unwrap_or(&temp), args.seed)?;
            bar.finish_and_clear();
            paths
        }
    };
    let outcome = measure(&args, &gt_path, &results_path);
    if args.keep.is_none() && args.gt.is_none() {
        let _ = std::fs::remove_dir_all(&temp);
    }
    let (rows, eval) = outcome?;
    eprintln!("stats: {:?}", eval.stats);
    if let Some(dir) = &args.keep {
        let json = serde_json::json!({ "rows": rows, "stats": eval.stats, "summary": eval.summary() });
        let path = dir.join("retina_bench.json");
        std::fs::create_dir_all(dir).map_err(|e| Error::Io {
            path: dir.display().to_string(),
            source: e,
        })?;
        coco::write_file(&path, json.to_string().as_bytes())?;
    }
    report(&rows, args.common.json)?;
    if !args.common.json {
        print!("\n{}", eval.summary());
    }
    Ok(())
}

fn measure(args: &EvalArgs, gt_path: &PathBuf, results_path: &PathBuf) -> Result<(Vec<Row>, coco::Evaluation)> {
    let gt = Instances::load(gt_path)?;
    let results = coco::load_results(results_path, &gt)?;
    let n = results.len() as u64;
    let iters = args.common.iters;
    let bar = progress(4 * iters.max(1) as u64, "coco eval");
    let row = |op: &str, seconds: f64| Row {
        op: op.to_string(),
        backend: "cpu",
        adapter: retina_wgpu::Backend::Cpu.describe(),
        size: n,
        seconds,
        throughput: n as f64 / seconds,
        unit: "results/s".into(),
        bytes: None,
        compare: op.to_string(),
    };
    let mut rows = vec![row(
        "coco_parse_gt",
        median_seconds(iters, &bar, || {
            Instances::load(gt_path).map(drop).map_err(retina_wgpu::Error::from)
        })?,
    )];
    let parse = median_seconds(iters, &bar, || {
        coco::load_results(results_path, &gt)
            .map(drop)
            .map_err(retina_wgpu::Error::from)
    })?;
    rows.push(row("coco_parse_results", parse));
    rows.push(row(
        "coco_evaluate",
        median_seconds(iters, &bar, || {
            coco::evaluate(&gt, &results)
                .map(drop)
                .map_err(retina_wgpu::Error::from)
        })?,
    ));
    let total = median_seconds(iters, &bar, || {
        let gt = Instances::load(gt_path)?;
        let results = coco::load_results(results_path, &gt)?;
        std::hint::black_box(coco::evaluate(&gt, &results)?.summary());
        Ok(())
    })?;
    rows.push(row("coco_eval_total", total));
    bar.finish_and_clear();
    Ok((rows, coco::evaluate(&gt, &results)?))
}
