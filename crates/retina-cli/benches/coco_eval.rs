//! COCO bbox evaluation (pycocotools semantics) on the val2017-sized workload of
//! `coco::CocoWorkload` (5,000 images, 340,000 results): parsing the results file and
//! evaluating parsed inputs. `retina bench eval` measures the same, and the whole run from the
//! files, in one table; `scripts/coco_eval_speed.py` times pycocotools and faster-coco-eval on
//! the files it keeps.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use retina_cli::coco_workload::CocoWorkload;
use retina_wgpu::coco;

fn coco_eval(c: &mut Criterion) {
    let (gt, results) = CocoWorkload::default().generate(2017);
    let results_json = coco::results_to_json(&results);
    let mut group = c.benchmark_group("coco_eval");
    group.sample_size(10);
    group.throughput(Throughput::Elements(results.len() as u64));
    group.bench_function("parse_results", |b| {
        b.iter(|| {
            let parsed = coco::results_from_json(&results_json, "results").unwrap();
            coco::check_results(&gt, &parsed, "results").unwrap();
            parsed
        })
    });
    group.bench_function("evaluate", |b| b.iter(|| coco::evaluate(&gt, &results).unwrap().stats));
    group.finish();
}

criterion_group!(benches, coco_eval);
criterion_main!(benches);
