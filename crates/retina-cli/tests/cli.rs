//! The `retina` command line.

#[path = "../../retina-wgpu/tests/common/mod.rs"]
mod common;

use std::process::Command;

fn retina(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_retina"))
        .args(args)
        .output()
        .expect("running retina")
}

#[test]
fn bench_focal_json_rows_are_complete_and_consistent() {
    let backend = if common::gpu().is_some() { "both" } else { "cpu" };
    let out = retina(&[
        "bench",
        "focal",
        "--sizes",
        "8000,16k",
        "--classes",
        "40",
        "--iters",
        "1",
        "--json",
        "--backend",
        backend,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON array");
    let rows = rows.as_array().unwrap();
    let expected = if backend == "both" { 6 } else { 2 };
    assert_eq!(rows.len(), expected, "{rows:?}");
    for row in rows {
        for key in ["op", "backend", "adapter", "size", "seconds", "throughput", "unit"] {
            assert!(row.get(key).is_some(), "row lacks {key}: {row}");
        }
        let size = row["size"].as_f64().unwrap();
        let seconds = row["seconds"].as_f64().unwrap();
        assert!([8000.0, 16000.0].contains(&size), "{row}");
        assert!(seconds > 0.0);
        let throughput = row["throughput"].as_f64().unwrap();
        assert!((throughput - size / seconds).abs() <= 1e-6 * throughput, "{row}");
        assert!(["gpu", "cpu"].contains(&row["backend"].as_str().unwrap()));
    }
}

#[test]
fn bench_match_json_has_a_row_per_box_count_and_backend() {
    let backend = if common::gpu().is_some() { "both" } else { "cpu" };
    let out = retina(&[
        "bench",
        "match",
        "--image",
        "128",
        "--boxes",
        "1,7",
        "--batch",
        "2",
        "--iters",
        "1",
        "--json",
        "--backend",
        backend,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON array");
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), if backend == "both" { 6 } else { 2 });
    let anchors = retina_wgpu::AnchorConfig::retinanet().num_anchors(128, 128).unwrap() as f64;
    for row in rows {
        assert_eq!(row["size"].as_f64().unwrap(), 2.0 * anchors, "{row}");
        assert_eq!(row["unit"], "anchors/s");
        assert!(row["op"].as_str().unwrap().starts_with("assign_targets"));
    }
}

#[test]
fn bench_nms_json_covers_plain_batched_and_postprocessing() {
    let backend = if common::gpu().is_some() { "both" } else { "cpu" };
    let args = [
        "bench",
        "nms",
        "--sizes",
        "100,300",
        "--classes",
        "4",
        "--batch",
        "2",
        "--image",
        "128",
        "--iters",
        "1",
    ];
    let out = retina(&[&args[..], &["--json", "--backend", backend]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON array");
    let rows = rows.as_array().unwrap();
    let per_backend = 2 * 2 + 1;
    assert_eq!(
        rows.len(),
        per_backend * if backend == "both" { 2 } else { 1 },
        "{rows:?}"
    );
    let ops: Vec<&str> = rows.iter().map(|r| r["op"].as_str().unwrap()).collect();
    assert!(
        ops.contains(&"nms") && ops.contains(&"batched_nms[4 classes]"),
        "{ops:?}"
    );
    assert!(ops.iter().any(|op| op.starts_with("postprocess[2 x")), "{ops:?}");
}

#[test]
fn bench_conv_json_reports_flops_of_every_distinct_layer() {
    let backend = if common::gpu().is_some() { "both" } else { "cpu" };
    let args = [
        "bench",
        "conv",
        "--batch",
        "1",
        "--size",
        "32",
        "--classes",
        "2",
        "--iters",
        "1",
        "--json",
    ];
    let out = retina(&[&args[..], &["--backend", backend]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON array");
    let rows = rows.as_array().unwrap();
    assert!(!rows.is_empty() && rows.len().is_multiple_of(2));
    // The first backbone convolution: 3 -> 16, 3x3, stride 2 on 32 x 32: 2 * 16 * 16 * 16 * 27 FLOP.
    let first = rows
        .iter()
        .find(|r| r["op"] == "conv_forward[conv 3x3 3->16 stride 2 pad 1 @32x32]")
        .expect("first layer row");
    assert_eq!(first["size"].as_f64().unwrap(), 2.0 * 16.0 * 16.0 * 16.0 * 27.0);
    assert_eq!(first["unit"], "FLOP/s");
}

#[test]
fn bench_gemm_json_has_the_three_products_of_each_convolution() {
    let args = [
        "bench",
        "gemm",
        "--batch",
        "1",
        "--size",
        "32",
        "--classes",
        "2",
        "--iters",
        "1",
        "--json",
        "--backend",
        "cpu",
    ];
    let out = retina(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON array");
    let rows = rows.as_array().unwrap();
    // The first backbone convolution, 3 -> 16, 3x3, stride 2 on one 32 x 32 image (16 x 16
    // outputs): forward 16 x 27 x 256, weight gradient 16 x 256 x 27, input gradient
    // 3 x 144 x 1024, each 2 M K N FLOP.
    for (m, k, n) in [(16u64, 27u64, 256u64), (16, 256, 27), (3, 144, 1024)] {
        let op = format!("gemm[{m}x{k}x{n}]");
        let row = rows
            .iter()
            .find(|r| r["op"] == op.as_str())
            .unwrap_or_else(|| panic!("no {op} row"));
        assert_eq!(row["size"].as_u64().unwrap(), 2 * m * k * n, "{op}");
        assert!(row["seconds"].as_f64().unwrap() > 0.0);
    }
    let mut ops: Vec<&str> = rows.iter().map(|r| r["op"].as_str().unwrap()).collect();
    let all = ops.len();
    ops.sort_unstable();
    ops.dedup();
    assert_eq!(ops.len(), all, "each product once per backend");
}

#[test]
fn info_names_the_chosen_adapter() {
    if common::gpu().is_none() {
        return;
    }
    let out = retina(&["info"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let ctx = common::gpu().unwrap();
    assert!(text.contains(&format!("Chosen: {}", ctx.adapter_info().name)), "{text}");
    assert!(text.contains("max_storage_buffer_binding_size"), "{text}");
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let out = retina(&["bench", "focal", "--sizes", "0", "--backend", "cpu"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be positive"));
    let out = retina(&["bench", "focal", "--sizes", "lots", "--backend", "cpu"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a size"));
}

fn coco_file(name: &str) -> String {
    format!("{}/../retina-coco/tests/coco/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn eval_prints_cocoeval_summary_verbatim_and_writes_json() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(coco_file("expected.json")).unwrap()).unwrap();
    let case = &expected["cases"]["val2014_100"];
    let json_out = std::env::temp_dir().join(format!("retina-eval-{}.json", std::process::id()));
    let out = retina(&[
        "eval",
        "--gt",
        &coco_file("instances_val2014_100.json"),
        "--results",
        &coco_file("instances_val2014_fakebbox100_results.json"),
        "--per-class",
        "--json",
        json_out.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (table, per_class) = stdout.split_once("\n\n").expect("summary, blank line, per-class table");
    assert_eq!(table.trim_end(), case["summary"].as_str().unwrap().trim_end());
    // Header plus one row per category; person (id 1) has the AP pycocotools gives it.
    assert_eq!(per_class.lines().count(), 81);
    let person = per_class
        .lines()
        .find(|l| l.contains(" person "))
        .expect("a row for person");
    let ap = case["per_category"][0]["ap"].as_f64().unwrap();
    assert!(person.contains(&format!("{ap:.3}")), "{person}");
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
    assert_eq!(written["stats"], case["stats"]);
    std::fs::remove_file(&json_out).unwrap();
}

#[test]
fn eval_with_results_from_another_set_fails_naming_the_file() {
    let results = std::env::temp_dir().join(format!("retina-eval-bad-{}.json", std::process::id()));
    std::fs::write(
        &results,
        r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]"#,
    )
    .unwrap();
    let out = retina(&[
        "eval",
        "--gt",
        &coco_file("instances_val2014_100.json"),
        "--results",
        results.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(results.to_str().unwrap()) && stderr.contains("image_id 1"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::fs::remove_file(&results).unwrap();
}

#[test]
fn bench_eval_json_rows_time_a_generated_workload() {
    let out = retina(&["bench", "eval", "--images", "60", "--iters", "1", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is one JSON array");
    let ops: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["op"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        [
            "coco_parse_gt",
            "coco_parse_results",
            "coco_evaluate",
            "coco_eval_total"
        ]
    );
    for row in rows.as_array().unwrap() {
        assert_eq!(row["backend"], "cpu");
        assert!(row["size"].as_u64().unwrap() > 60, "{row}");
        assert!(row["seconds"].as_f64().unwrap() > 0.0);
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("retina-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn train_detect_and_eval_a_model_end_to_end() {
    let dir = scratch("train");
    let model = dir.join("model");
    let common = ["--backend", "cpu"];
    let out = retina(
        &[
            &[
                "train",
                "--steps",
                "4",
                "--batch",
                "2",
                "--log-every",
                "2",
                "--quiet",
                "--out",
            ][..],
            &[model.to_str().unwrap()],
            &common,
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics = std::fs::read_to_string(model.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "{metrics}");
    let line: serde_json::Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(line["step"], 4);
    assert!(line["loss"].as_f64().unwrap() > 0.0);
    // A second run into the same directory must not overwrite it without --resume.
    let again = retina(
        &[
            &["train", "--steps", "6", "--batch", "2", "--quiet", "--out"][..],
            &[model.to_str().unwrap()],
            &common,
        ]
        .concat(),
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let resumed = retina(
        &[
            &["train", "--steps", "6", "--batch", "2", "--quiet", "--resume", "--out"][..],
            &[model.to_str().unwrap()],
            &common,
        ]
        .concat(),
    );
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("6 steps"));

    // Detect on two synthetic images, with drawing.
    let data = dir.join("synth");
    let synth = retina(&["synth", "--out", data.to_str().unwrap(), "--images", "3"]);
    assert!(synth.status.success(), "{}", String::from_utf8_lossy(&synth.stderr));
    let detections = dir.join("detections");
    let image = data.join("images/000000.png");
    let out = retina(
        &[
            &[
                "detect",
                "--model",
                model.to_str().unwrap(),
                "--out",
                detections.to_str().unwrap(),
            ][..],
            &["--score", "0.01", "--draw", image.to_str().unwrap()],
            &common,
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(detections.join("results.json")).unwrap()).unwrap();
    for r in results.as_array().unwrap() {
        assert_eq!(r["image_id"], 1);
        assert!((1..=4).contains(&r["category_id"].as_i64().unwrap()), "{r}");
    }
    assert!(detections.join("000000.detections.png").is_file());

    // Evaluate the model on the dataset on disk: the 12-line table.
    let out = retina(
        &[
            &[
                "eval",
                "--model",
                model.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
            ][..],
            &common,
        ]
        .concat(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("maxDets="))
            .count(),
        12
    );

    // The same data named by file and directory; a missing image fails naming it, or is
    // skipped and counted with --skip-unreadable.
    std::fs::remove_file(data.join("images/000002.png")).unwrap();
    let annotations = data.join("annotations.json");
    let images = data.join("images");
    let by_files = [
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--annotations",
        annotations.to_str().unwrap(),
        "--images",
        images.to_str().unwrap(),
        "--backend",
        "cpu",
    ];
    let out = retina(&by_files);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("000002.png"));
    let out = retina(&[&by_files[..], &["--skip-unreadable"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("000002.png"),
        "the skipped file is named"
    );

    // A missing image and a corrupt checkpoint are errors naming the file.
    let out = retina(
        &[
            &["detect", "--model", model.to_str().unwrap(), "absent.png"][..],
            &common,
        ]
        .concat(),
    );
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("absent.png"));
    std::fs::write(model.join("model.safetensors"), b"not a checkpoint").unwrap();
    let out = retina(
        &[
            &["detect", "--model", model.to_str().unwrap(), image.to_str().unwrap()][..],
            &common,
        ]
        .concat(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("model.safetensors") && !stderr.contains("panicked"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn demo_writes_its_pictures_and_numbers() {
    let dir = scratch("demo");
    let out = retina(&[
        "demo",
        "--steps",
        "3",
        "--val-images",
        "8",
        "--backend",
        "cpu",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Average Precision  (AP) @[ IoU=0.50:0.95"), "{stdout}");
    for file in [
        "detections.png",
        "loss.png",
        "metrics.json",
        "val_results.json",
        "model/model.safetensors",
        "val/annotations.json",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let metrics: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["training"]["steps"], 3);
    assert!(metrics["coco"]["AP50"].as_f64().unwrap() >= 0.0);
    let grid = image::open(dir.join("detections.png")).unwrap();
    assert!(grid.width() >= 4 * 384, "{} px wide", grid.width());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Mean of the AP column `col` (10 = AP) over the rows of `label` in runs.csv, in percent.
fn csv_mean(runs: &str, label: &str, col: usize) -> f64 {
    let values: Vec<f64> = runs
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f[1] == label)
        .map(|f| f[col].parse::<f64>().unwrap())
        .collect();
    assert!(!values.is_empty(), "no row of {label}");
    100.0 * values.iter().sum::<f64>() / values.len() as f64
}

#[test]
fn ablate_tiny_grid_writes_its_tables_csv_and_plots() {
    let dir = scratch("ablate");
    let args = [
        "ablate",
        "--grid",
        "tiny",
        "--backend",
        "cpu",
        "--out",
        dir.to_str().unwrap(),
    ];
    let out = retina(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in [
        "runs.csv",
        "curves.csv",
        "results.md",
        "fig1_loss_vs_pt.png",
        "fig4_positive.png",
        "fig4_negative.png",
        "ap_vs_gamma.png",
        "loss_curves_ce.png",
        "loss_curves_focal.png",
        "loss_curves_ohem.png",
        "reference_model/model.safetensors",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    // Every run saved checkpoints (every 250 steps by default: none in 100 steps; the jobs
    // test below saves some) and nothing of them is left once the runs are recorded.
    assert!(!dir.join("in-progress").exists());
    for png in [
        "fig1_loss_vs_pt.png",
        "fig4_positive.png",
        "ap_vs_gamma.png",
        "loss_curves_ohem.png",
    ] {
        assert_eq!(image::open(dir.join(png)).unwrap().width(), 800, "{png}");
    }
    let runs = std::fs::read_to_string(dir.join("runs.csv")).unwrap();
    let table = std::fs::read_to_string(dir.join("results.md")).unwrap();
    assert_eq!(runs.lines().count(), 1 + 3 * 2, "three settings x two seeds:\n{runs}");
    assert!(runs.contains("\nohem,OHEM B=32 nms=0.7,,0,,32,0.7,,0,100,"), "{runs}");
    let curves = std::fs::read_to_string(dir.join("curves.csv")).unwrap();
    assert!(
        curves.lines().count() > 4 * 10,
        "a loss point every few steps of each run"
    );

    // The table's cells are the mean of the runs' rows (to the printed 0.1 AP).
    for (label, alpha_row) in [("CE a=0.75", "| 0.75 | "), ("FL g=2 a=0.25", "| 2 | 0.25 | ")] {
        let row = table
            .lines()
            .find(|l| l.starts_with(alpha_row))
            .unwrap_or_else(|| panic!("no row {alpha_row} in\n{table}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let first = if label.starts_with("CE") { 2 } else { 3 };
        for (k, col) in [10, 11, 12].into_iter().enumerate() {
            let mean: f64 = cells[first + k].split(' ').next().unwrap().parse().unwrap();
            let want = csv_mean(&runs, label, col);
            assert!(
                (mean - want).abs() <= 0.05 + 1e-9,
                "{label} column {col}: table {mean}, runs {want}"
            );
        }
    }

    // The AP of the saved reference run (FL, seed 0) is what an independent evaluation of that
    // model on the same validation scenes gives.
    let json = dir.join("eval.json");
    let out = retina(&[
        "eval",
        "--model",
        dir.join("reference_model").to_str().unwrap(),
        "--data",
        dir.join("val").to_str().unwrap(),
        "--backend",
        "cpu",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let row: Vec<&str> = runs
        .lines()
        .find(|l| l.starts_with("focal,FL g=2 a=0.25,") && l.split(',').nth(8) == Some("0"))
        .unwrap()
        .split(',')
        .collect();
    let stats = eval["stats"].as_array().unwrap();
    for (i, col) in [10, 11, 12].into_iter().enumerate() {
        let ran: f64 = row[col].parse().unwrap();
        assert!(
            (ran - stats[i].as_f64().unwrap()).abs() < 1e-6,
            "stat {i}: {ran} vs {}",
            stats[i]
        );
    }

    // Never overwritten without --resume; with it, nothing is left to run.
    let again = retina(&args);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let resumed = retina(&[&args[..], &["--resume"]].concat());
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("0 runs to do"));
    assert_eq!(std::fs::read_to_string(dir.join("runs.csv")).unwrap(), runs);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// runs.csv's rows without the seconds column, sorted (runs finish in any order with --jobs).
fn runs_without_time(dir: &std::path::Path) -> Vec<String> {
    let runs = std::fs::read_to_string(dir.join("runs.csv")).unwrap();
    let mut rows: Vec<String> = runs
        .lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(',').collect();
            f.remove(13);
            f.join(",")
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn ablate_jobs_runs_each_run_as_a_sequential_run_with_as_many_threads() {
    // Two runs at once with one thread each against one run after another on one thread: the
    // same runs, the same numbers (the worker pool changes where a run executes, nothing else).
    let (one, two) = (scratch("ablate-jobs1"), scratch("ablate-jobs2"));
    let common = ["ablate", "--grid", "tiny", "--backend", "cpu", "--fig4-images", "1"];
    // With checkpoints every 40 steps (saved, then deleted as each run is recorded): the
    // same numbers as the runs of --jobs 2 without them.
    let out = retina_with(
        &[
            &common[..],
            &["--out", one.to_str().unwrap(), "--checkpoint-every", "40"],
        ]
        .concat(),
        &[("RAYON_NUM_THREADS", "1")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!one.join("in-progress").exists());
    let out = retina_with(
        &[
            &common[..],
            &["--out", two.to_str().unwrap(), "--jobs", "2", "--checkpoint-every", "0"],
        ]
        .concat(),
        &[("RAYON_NUM_THREADS", "2")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 runs at once, 1 thread each"));
    let rows = runs_without_time(&one);
    assert_eq!(rows.len(), 1 + 3 * 2);
    assert_eq!(rows, runs_without_time(&two));
    // --only trains some settings and keeps every other run; a resume with another schedule
    // or thread count is refused, naming what differs.
    let out = retina_with(
        &[
            &common[..],
            &["--out", one.to_str().unwrap(), "--resume", "--seeds", "3"],
        ]
        .concat(),
        &[("RAYON_NUM_THREADS", "2")],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trained_on") && err.contains("1 thread per run"), "{err}");
    let out = retina_with(
        &[
            &common[..],
            &["--out", one.to_str().unwrap(), "--resume", "--steps", "50"],
        ]
        .concat(),
        &[("RAYON_NUM_THREADS", "1")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("steps: 100 kept, 50 asked for"));
    let only = [
        &common[..],
        &["--out", one.to_str().unwrap(), "--resume", "--seeds", "3"],
    ]
    .concat();
    // The checkpoint of a run already recorded (left by a stop between the record and its
    // deletion) is deleted by the resume.
    let stale = one.join("in-progress/CE-a=0.75-seed-0");
    std::fs::create_dir_all(&stale).unwrap();
    let out = retina_with(
        &[&only[..], &["--only", "CE", "--only", "FL g=2"]].concat(),
        &[("RAYON_NUM_THREADS", "1")],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stale.exists() && !one.join("in-progress").exists());
    let after = runs_without_time(&one);
    assert_eq!(after.len(), rows.len() + 2, "{after:?}");
    assert!(rows.iter().all(|r| after.contains(r)), "a kept run was lost");
    let seed2: Vec<&str> = after
        .iter()
        .filter(|r| r.split(',').nth(8) == Some("2"))
        .filter_map(|r| r.split(',').nth(1))
        .collect();
    assert_eq!(seed2, ["CE a=0.75", "FL g=2 a=0.25"]);
    // A run stopped part-way leaves its checkpoint: the directory is then an experiment that
    // only --resume continues.
    let fresh = scratch("ablate-stopped");
    std::fs::create_dir_all(fresh.join("in-progress/CE-a=0.75-seed-0")).unwrap();
    let out = retina_with(&[&common[..], &["--out", fresh.to_str().unwrap()]].concat(), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));
    std::fs::remove_dir_all(&fresh).unwrap();
    let out = retina_with(&[&only[..], &["--only", "nothing"]].concat(), &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("matches no setting"));
    for args in [&["--jobs", "0"][..], &["--jobs", "2", "--backend", "gpu"]] {
        let out = retina_with(
            &[
                &["ablate", "--grid", "tiny", "--out"][..],
                &[one.to_str().unwrap(), "--resume"],
                args,
            ]
            .concat(),
            &[],
        );
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("--jobs"), "{args:?}");
    }
    std::fs::remove_dir_all(&one).unwrap();
    std::fs::remove_dir_all(&two).unwrap();
}

// --- Bad options (moved from the library's bad-input sweep) -----------------------------------

fn retina_with(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_retina"));
    cmd.args(args)
        .env_remove("WGPU_NOOP_BACKEND")
        .env("XDG_RUNTIME_DIR", "/tmp");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the retina binary runs")
}

#[test]
fn the_command_line_refuses_bad_options_without_panicking() {
    for args in [
        &["bench", "conv", "--batch", "0", "--iters", "1", "--backend", "cpu"][..],
        &["bench", "conv", "--size", "0", "--iters", "1", "--backend", "cpu"],
        &["bench", "conv", "--size", "1000000", "--iters", "1", "--backend", "cpu"],
        &["bench", "focal", "--sizes", "1e15", "--iters", "1", "--backend", "cpu"],
        &["bench", "nms", "--sizes", "1e15", "--iters", "1", "--backend", "cpu"],
        &[
            "bench",
            "match",
            "--image",
            "4000000000",
            "--iters",
            "1",
            "--backend",
            "cpu",
        ],
    ] {
        let out = retina_with(args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_ne!(out.status.code(), Some(101), "{args:?} panicked: {stderr}");
        assert!(out.status.code().is_some(), "{args:?} was killed (an abort?): {stderr}");
        assert!(stderr.contains("rror"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_bad_wgpu_backend_is_named_and_both_backends_fall_back_to_the_cpu() {
    let out = retina_with(
        &["bench", "focal", "--sizes", "1000", "--iters", "1", "--backend", "gpu"],
        &[("WGPU_BACKEND", "nonsense")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("WGPU_BACKEND") && stderr.contains("nonsense"),
        "{stderr}"
    );

    // No adapter at all (wgpu's no-op backend, not enabled): the CPU half runs alone.
    let out = retina_with(
        &[
            "bench",
            "focal",
            "--sizes",
            "1000",
            "--iters",
            "1",
            "--backend",
            "both",
            "--json",
        ],
        &[("WGPU_BACKEND", "noop")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("skipping the GPU half"), "{stderr}");
    assert!(stdout.contains("\"cpu\"") && !stdout.contains("\"gpu\""), "{stdout}");
    let out = retina_with(
        &["bench", "focal", "--sizes", "1000", "--iters", "1", "--backend", "gpu"],
        &[("WGPU_BACKEND", "noop")],
    );
    assert!(!out.status.success());
}

#[test]
fn retina_synth_writes_the_dataset_and_prints_the_statistics() {
    use std::process::Command;

    let dir = std::env::temp_dir().join(format!("retina-synth-{}-cli", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let preview = dir.join("preview.png");
    let out = Command::new(env!("CARGO_BIN_EXE_retina"))
        .args(["synth", "--out"])
        .arg(&dir)
        .args(["--images", "12", "--seed", "3", "--preview"])
        .arg(&preview)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("12 images of 128 x 128"), "{stdout}");
    assert!(stdout.contains("objects with an anchor at IoU >= 0.5"), "{stdout}");
    assert!(stdout.contains("background anchors per positive"), "{stdout}");
    assert!(
        stdout.contains(&dir.join("annotations.json").display().to_string()),
        "{stdout}"
    );
    let instances = retina_wgpu::coco::Instances::load(dir.join("annotations.json")).unwrap();
    assert_eq!(instances.images.len(), 12);
    assert!(dir.join("images/000011.png").is_file());
    let grid = image::open(&preview).unwrap();
    assert_eq!((grid.width(), grid.height()), (4 * 256 + 3 * 4, 3 * 256 + 2 * 4));

    // The recipe regenerates the same dataset.
    let again = std::env::temp_dir().join(format!("retina-synth-{}-cli-again", std::process::id()));
    let _ = std::fs::remove_dir_all(&again);
    let out = Command::new(env!("CARGO_BIN_EXE_retina"))
        .args(["synth", "--out"])
        .arg(&again)
        .args(["--images", "12", "--seed", "3", "--config"])
        .arg(dir.join("synth.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        std::fs::read(again.join("annotations.json")).unwrap(),
        std::fs::read(dir.join("annotations.json")).unwrap()
    );
    assert_eq!(
        std::fs::read(again.join("images/000007.png")).unwrap(),
        std::fs::read(dir.join("images/000007.png")).unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&again).unwrap();
}

/// `retina train` killed (SIGKILL) at pseudo-random moments while it saves a checkpoint every
/// step: after every kill the directory holds a whole checkpoint (or none yet), which loads,
/// and resuming until the run is done gives the same weights, bit for bit, as a run that was
/// never interrupted.
#[test]
fn a_training_run_killed_at_random_moments_resumes_to_the_same_weights() {
    let root = scratch("kill");
    std::fs::create_dir_all(&root).unwrap();
    let config = root.join("tiny.json");
    let tiny = serde_json::json!({
        "input_size": 64,
        "backbone_channels": [4, 8, 8, 16, 16],
        "fpn_channels": 16,
        "head_convs": 1,
        "head_channels": 16
    });
    std::fs::write(&config, tiny.to_string()).unwrap();
    let steps = "1000";
    let args = |out: &std::path::Path, resume: bool| {
        let mut a: Vec<String> = [
            "train",
            "--data",
            "synthetic",
            "--backend",
            "cpu",
            "--steps",
            steps,
            "--batch",
            "2",
            "--size",
            "64",
            "--save-every",
            "1",
            "--log-every",
            "10",
            "--quiet",
        ]
        .map(String::from)
        .to_vec();
        a.extend(["--config".into(), config.display().to_string()]);
        a.extend(["--out".into(), out.display().to_string()]);
        if resume {
            a.push("--resume".into());
        }
        a
    };
    let straight = root.join("straight");
    let out = Command::new(env!("CARGO_BIN_EXE_retina"))
        .args(args(&straight, false))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, want) = retina_wgpu::model::checkpoint::load_model(&straight).unwrap();

    let killed = root.join("killed");
    let weights = killed.join("model.safetensors");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut kills = 0;
    while kills < 12 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_retina"))
            .args(args(&killed, weights.exists()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        std::thread::sleep(std::time::Duration::from_millis(100 + state % 500));
        if child.try_wait().unwrap().is_some() {
            break; // finished before the kill
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        eprintln!("kill {kills}: checkpoint {}", weights.exists());
        if weights.exists() {
            retina_wgpu::model::checkpoint::load_model(&killed).unwrap();
            retina_wgpu::train::saved_options(&killed).unwrap();
        }
    }
    assert!(kills >= 3, "only {kills} kills landed before the run finished");
    let out = Command::new(env!("CARGO_BIN_EXE_retina"))
        .args(args(&killed, weights.exists()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, got) = retina_wgpu::model::checkpoint::load_model(&killed).unwrap();
    assert!(
        got == want,
        "the resumed run's weights differ from the uninterrupted run's"
    );
    std::fs::remove_dir_all(&root).unwrap();
}

/// `retina detect --model faces` on a real photo, on each backend: one face with five landmarks
/// in `results.json` (image pixels, as the reference pipeline gives them: the golden vectors of
/// tests/golden/retinaface.json), the drawn photo, and `retina bench detect` rows.
#[test]
fn detect_faces_writes_landmarks_and_the_drawn_photo() {
    let photo = concat!(env!("CARGO_MANIFEST_DIR"), "/../../photos/astronaut.png");
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../retina-wgpu/tests/golden/retinaface.json"
    );
    let golden = common::parse_golden(path, &std::fs::read_to_string(path).unwrap());
    let want = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["photo"] == "photos/astronaut.png" && c["crop"][2] == 512 && c["score_threshold"] == 0.9)
        .expect("the full astronaut photo at the default threshold");
    let want = common::f32s(&want["faces"][0]);
    let backends: &[&str] = if common::gpu().is_some() {
        &["cpu", "gpu"]
    } else {
        &["cpu"]
    };
    for backend in backends {
        let out_dir = scratch(&format!("faces-{backend}"));
        let out = retina(&[
            "detect",
            "--model",
            "faces",
            "--draw",
            "--backend",
            backend,
            "--out",
            out_dir.to_str().unwrap(),
            photo,
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("1 faces"), "{stdout}");
        let results: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).unwrap()).unwrap();
        let face = &results[0];
        let bbox = common::f32s(&face["bbox"]);
        let marks: Vec<f32> = face["landmarks"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(common::f32s)
            .collect();
        assert_eq!(marks.len(), 10, "{face}");
        for (got, want) in bbox.iter().chain(&marks).zip(want[..4].iter().chain(&want[5..])) {
            assert!((got - want).abs() < 0.02, "{backend}: {face} vs the reference {want:?}");
        }
        assert!((face["score"].as_f64().unwrap() as f32 - want[4]).abs() < 1e-5);
        let drawn = image::open(out_dir.join("astronaut.faces.png"))
            .expect("the drawn photo")
            .into_rgb8();
        assert_eq!(drawn.dimensions(), (512, 512));
        let original = image::open(photo).unwrap().into_rgb8();
        assert_ne!(drawn, original, "boxes and landmarks were drawn");
    }
    let out = retina(&[
        "bench",
        "detect",
        "--model",
        "faces",
        "--size",
        "160x120",
        "--iters",
        "1",
        "--json",
        "--backend",
        backends[backends.len() - 1],
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["op"], "detect_faces_160x120");
    assert_eq!(rows[0]["unit"], "images/s");
    assert!(rows[0]["throughput"].as_f64().unwrap() > 0.0);
    // The per-layer profile: the network's 56 convolutions, each timed, within the whole pass.
    let args = [
        "bench", "detect", "--model", "faces", "--size", "160x120", "--iters", "1", "--layers",
    ];
    let out = retina(&[&args[..], &["--json"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = doc["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 56, "{doc}");
    assert_eq!(layers[0]["layer"], "body.stem");
    assert_eq!(layers[0]["input"], "[1, 3, 120, 160]");
    assert_eq!(layers[1]["kind"], "depthwise");
    // One timed pass: the layers are timed inside it, so they and the rest add up to it.
    let sum: f64 = layers.iter().map(|l| l["seconds"].as_f64().unwrap()).sum();
    let (pass, elsewhere) = (
        doc["forward_seconds"].as_f64().unwrap(),
        doc["elsewhere_seconds"].as_f64().unwrap(),
    );
    assert!(sum > 0.0 && elsewhere >= 0.0, "{doc}");
    assert!((sum + elsewhere - pass).abs() <= 1e-9 * pass.max(1.0), "{doc}");
    let out = retina(&[&args[..], &["--backend", "gpu"]].concat());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CPU backend only"));
}

/// `retina detect`, `eval` and `bench detect` on a torchvision RetinaNet directory: the small v1
/// model of tests/golden/torchvision_retinanet.json (weights by the formula both sides compute)
/// written as `scripts/import_torchvision.py` writes one; its detections of `photos/chelsea.png`
/// in results.json are torchvision's.
#[test]
fn detect_eval_and_bench_a_torchvision_retinanet() {
    use common::tv_formula::{compare, model_tensors, safetensors_bytes};
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../retina-wgpu/tests/golden/torchvision_retinanet.json"
    );
    let file = common::parse_golden(path, &std::fs::read_to_string(path).unwrap());
    let m = &file["small"][0];
    let case = &m["cases"][0];
    assert_eq!(
        (m["variant"].as_str(), case["photo"].as_str()),
        (Some("v1"), Some("chelsea.png"))
    );
    let dir = scratch("torchvision-model");
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "architecture": "torchvision_retinanet",
        "variant": "v1",
        "num_classes": 91,
        "min_size": case["min_size"],
        "max_size": case["max_size"],
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors_bytes(&model_tensors(&file, m)),
    )
    .unwrap();
    let photos = concat!(env!("CARGO_MANIFEST_DIR"), "/../../photos");
    let photo = format!("{photos}/chelsea.png");
    let out_dir = scratch("torchvision-detect");
    let model = dir.to_str().unwrap();
    let out = retina(&[
        "detect",
        "--model",
        model,
        "--draw",
        "--backend",
        "cpu",
        "--out",
        out_dir.to_str().unwrap(),
        &photo,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).unwrap()).unwrap();
    let found: Vec<retina_wgpu::Detection> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["image_id"], 1);
            let b = common::f32s(&r["bbox"]);
            retina_wgpu::Detection {
                bbox: [b[0], b[1], b[0] + b[2], b[1] + b[3]],
                score: r["score"].as_f64().unwrap() as f32,
                class: r["category_id"].as_u64().unwrap() as u32,
            }
        })
        .collect();
    compare("retina detect", &found, case, 0.05);
    let drawn = image::open(out_dir.join("chelsea.detections.png")).unwrap().into_rgb8();
    assert_eq!(drawn.dimensions(), (451, 300));
    assert_ne!(drawn, image::open(&photo).unwrap().into_rgb8(), "boxes were drawn");

    // COCO evaluation on a one-image ground truth made of torchvision's best detection: AP50 1.
    let best = &case["boxes"][0];
    let b = common::f32s(best);
    let gt = serde_json::json!({
        "images": [{"id": 1, "file_name": "chelsea.png", "width": 451, "height": 300}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": case["labels"][0], "iscrowd": 0,
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])}],
        "categories": (1..=90).map(|i| serde_json::json!({"id": i, "name": format!("c{i}")})).collect::<Vec<_>>(),
    });
    let gt_path = out_dir.join("gt.json");
    std::fs::write(&gt_path, gt.to_string()).unwrap();
    let out = retina(&[
        "eval",
        "--model",
        model,
        "--annotations",
        gt_path.to_str().unwrap(),
        "--images",
        photos,
        "--backend",
        "cpu",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 1.000"),
        "{stdout}"
    );

    let out = retina(&[
        "bench",
        "detect",
        "--model",
        model,
        "--size",
        "160x120",
        "--iters",
        "1",
        "--json",
        "--backend",
        "cpu",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows[0]["op"], "torchvision_v1_160x120");
    assert_eq!(rows[1]["op"], "torchvision_v1_160x120_network");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&out_dir);
}
