//! The COCO bbox evaluator against pycocotools: the COCO API's own fake-detection test (stats
//! published in its README) and an edge case of our own (crowds, empty images, ties, more than
//! 100 detections, a ground truth with id 0, ...) whose expected values pycocotools computed
//! (`scripts/coco_reference.py`, committed in tests/coco/expected.json). No Python needed.

use std::path::{Path, PathBuf};

use retina_coco::Error;
use retina_coco::{self as coco, BboxResult, Evaluation, Instances};

fn coco_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/coco")
}

fn expected(case: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(coco_dir().join("expected.json")).expect("tests/coco/expected.json");
    let all: serde_json::Value = serde_json::from_str(&text).expect("expected.json parses");
    all["cases"][case].clone()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, pycocotools {w}");
    }
}

/// Evaluates one case of expected.json and checks everything pycocotools recorded for it.
fn check_case(case: &str) -> Evaluation {
    let want = expected(case);
    let gt = Instances::load(coco_dir().join(want["gt"].as_str().unwrap())).unwrap();
    let results = match want["results"].as_str() {
        Some(file) => coco::load_results(coco_dir().join(file), &gt).unwrap(),
        None => Vec::new(),
    };
    let eval = coco::evaluate(&gt, &results).unwrap();

    assert_close(&format!("{case} stats"), &eval.stats, &floats(&want["stats"]), 1e-9);
    assert_eq!(
        eval.summary(),
        want["summary"].as_str().unwrap().trim_end().to_owned() + "\n"
    );
    let ids: Vec<i64> = want["category_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(eval.category_ids, ids);
    assert_eq!(eval.image_ids.len() as u64, want["image_count"].as_u64().unwrap());
    let shape: Vec<usize> = floats(&want["shape_precision"]).iter().map(|&v| v as usize).collect();
    assert_eq!(eval.precision_shape.to_vec(), shape);

    assert_close(&format!("{case} recall"), &eval.recall, &floats(&want["recall"]), 1e-12);
    // Precision: every (t, k, a, m) column's mean over the recall axis, and the whole sum.
    let [t_len, r_len, k_len, a_len, m_len] = eval.precision_shape;
    let mut column_means = Vec::new();
    for t in 0..t_len {
        for k in 0..k_len {
            for a in 0..a_len {
                for m in 0..m_len {
                    let sum: f64 = (0..r_len)
                        .map(|r| eval.precision[(((t * r_len + r) * k_len + k) * a_len + a) * m_len + m])
                        .sum();
                    column_means.push(sum / r_len as f64);
                }
            }
        }
    }
    assert_close(
        &format!("{case} precision column means"),
        &column_means,
        &floats(&want["precision_mean_over_recall"]),
        1e-12,
    );
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    assert_close(
        &format!("{case} precision sum"),
        &[sum(&eval.precision)],
        &[want["precision_sum"].as_f64().unwrap()],
        1e-7,
    );
    assert_close(
        &format!("{case} scores sum"),
        &[sum(&eval.scores)],
        &[want["scores_sum"].as_f64().unwrap()],
        1e-7,
    );

    let per_category = want["per_category"].as_array().unwrap();
    assert_eq!(eval.per_category.len(), per_category.len());
    for (got, want) in eval.per_category.iter().zip(per_category) {
        assert_eq!(got.category_id, want["category_id"].as_i64().unwrap());
        let values = [got.ap, got.ap50, got.ap75];
        let wanted = [&want["ap"], &want["ap50"], &want["ap75"]].map(|v| v.as_f64().unwrap());
        assert_close(&format!("{case} category {}", got.category_id), &values, &wanted, 1e-9);
    }
    eval
}

#[test]
fn coco_api_fake_detections_give_the_published_stats() {
    let eval = check_case("val2014_100");
    // The numbers printed in ../shared/coco/README.md (pycocotools 2.0.11), independent of
    // expected.json.
    let published = [
        0.5045806987249628,
        0.6969727247299577,
        0.5729816669904824,
        0.5856257209410443,
        0.5193996948036719,
        0.5013978986347466,
        0.38681277964578054,
        0.5936795762842003,
        0.595352982877607,
        0.6398109626113442,
        0.5664205978994309,
        0.5642905982905982,
    ];
    assert_close("published stats", &eval.stats, &published, 1e-9);
}

#[test]
fn edge_case_matches_pycocotools_everywhere() {
    let eval = check_case("edge");
    // The case is built so that undefined cells exist: a category with no ground truth.
    assert!(eval.per_category.iter().any(|c| c.ap == -1.0));
    assert!(eval.precision.contains(&-1.0));
}

#[test]
fn empty_results_give_zeros_where_ground_truth_exists() {
    let eval = check_case("edge_empty");
    assert!(eval.stats.iter().all(|&s| s == 0.0), "{:?}", eval.stats);
}

#[test]
fn ground_truth_without_annotations_gives_minus_one() {
    let gt = Instances::from_json(
        br#"{"images": [{"id": 1, "width": 10, "height": 10}], "annotations": [], "categories": [{"id": 1, "name": "a"}]}"#,
        "gt",
    )
    .unwrap();
    let results = [BboxResult {
        image_id: 1,
        category_id: 1,
        bbox: [0.0, 0.0, 5.0, 5.0],
        score: 0.9,
    }];
    let eval = coco::evaluate(&gt, &results).unwrap();
    assert_eq!(eval.stats, [-1.0; 12]);
    assert!(eval.summary().lines().all(|l| l.ends_with("= -1.000")));
}

#[test]
fn json_output_carries_stats_arrays_and_per_category() {
    let gt = Instances::load(coco_dir().join("edge_gt.json")).unwrap();
    let results = coco::load_results(coco_dir().join("edge_results.json"), &gt).unwrap();
    let eval = coco::evaluate(&gt, &results).unwrap();
    let json = eval.to_json();
    assert_eq!(json["stats_by_name"]["AP50"].as_f64().unwrap(), eval.stats[1]);
    assert_eq!(json["precision"].as_array().unwrap().len(), eval.precision.len());
    assert_eq!(json["recall"].as_array().unwrap().len(), eval.recall.len());
    assert_eq!(json["per_category"].as_array().unwrap().len(), eval.category_ids.len());
    assert_eq!(json["precision_shape"][1], 101);
}

// ---------------------------------------------------------------------------------------------
// Bad input: a clear error naming the file and what is wrong, never a panic.

const GT: &str = r#"{
  "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
  "annotations": [
    {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
    {"id": 2, "image_id": 2, "category_id": 7, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0}
  ],
  "categories": [{"id": 7, "name": "seven"}]
}"#;

fn format_error(result: retina_coco::Result<impl std::fmt::Debug>) -> (String, String) {
    match result {
        Err(Error::Format { path, detail }) => (path, detail),
        other => panic!("expected a format error, got {other:?}"),
    }
}

fn gt() -> Instances {
    Instances::from_json(GT.as_bytes(), "gt.json").unwrap()
}

#[test]
fn malformed_json_names_file_line_and_column() {
    let (path, detail) = format_error(Instances::from_json(b"{\n  \"images\": [,]\n}", "bad.json"));
    assert_eq!(path, "bad.json");
    assert!(detail.contains("line 2 column"), "{detail}");
    let (_, detail) = format_error(coco::results_from_json(b"[{\"image_id\": 1,", "r.json"));
    assert!(detail.contains("line 1"), "{detail}");
}

#[test]
fn missing_fields_are_named() {
    let no_area = GT.replace(r#", "area": 400"#, "");
    let (_, detail) = format_error(Instances::from_json(no_area.as_bytes(), "gt.json"));
    assert!(detail.contains("missing field `area`"), "{detail}");
    let (_, detail) = format_error(coco::results_from_json(
        br#"[{"image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1]}]"#,
        "r.json",
    ));
    assert!(detail.contains("missing field `score`"), "{detail}");
}

#[test]
fn duplicate_and_dangling_ids_in_ground_truth_are_errors() {
    let dup = GT.replace(r#""id": 2, "image_id": 2"#, r#""id": 1, "image_id": 2"#);
    let (_, detail) = format_error(Instances::from_json(dup.as_bytes(), "gt.json"));
    assert!(detail.contains("duplicate annotation id"), "{detail}");
    let dangling = GT.replace(r#""image_id": 2"#, r#""image_id": 9"#);
    let (_, detail) = format_error(Instances::from_json(dangling.as_bytes(), "gt.json"));
    assert!(detail.contains("image_id 9 is not in `images`"), "{detail}");
    let dup_image = GT.replace(r#"{"id": 2, "width""#, r#"{"id": 1, "width""#);
    let (_, detail) = format_error(Instances::from_json(dup_image.as_bytes(), "gt.json"));
    assert!(detail.contains("duplicate image id 1"), "{detail}");
    let unknown_category = GT.replace(r#""category_id": 7, "bbox": [0"#, r#""category_id": 8, "bbox": [0"#);
    let (_, detail) = format_error(Instances::from_json(unknown_category.as_bytes(), "gt.json"));
    assert!(detail.contains("category_id 8 is not in `categories`"), "{detail}");
}

#[test]
fn results_outside_the_ground_truth_are_errors() {
    let gt = gt();
    let dir = std::env::temp_dir().join(format!("retina-coco-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let cases = [
        (
            r#"[{"image_id": 3, "category_id": 7, "bbox": [0, 0, 1, 1], "score": 0.5}]"#,
            "image_id 3",
        ),
        (
            r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]"#,
            "category_id 1",
        ),
        (
            r#"[{"image_id": 1, "category_id": 7, "bbox": [0, 0, -1, 1], "score": 0.5}]"#,
            "negative width",
        ),
        (
            r#"[{"image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1e999], "score": 0.5}]"#,
            "line 1",
        ),
        (
            r#"[{"image_id": 1, "category_id": 7, "bbox": [0, 0, 1], "score": 0.5}]"#,
            "line 1",
        ),
        (r#"{"image_id": 1}"#, "invalid type"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = write(&format!("r{i}.json"), text);
        let (named, detail) = format_error(coco::load_results(&path, &gt));
        assert_eq!(Path::new(&named), path, "{detail}");
        assert!(detail.contains(needle), "case {i}: {detail}");
    }
    // In memory, NaN and infinities cannot come from JSON but can from a caller.
    for bad in [f64::NAN, f64::INFINITY] {
        let r = BboxResult {
            image_id: 1,
            category_id: 7,
            bbox: [0.0, 0.0, bad, 1.0],
            score: 0.5,
        };
        let (_, detail) = format_error(coco::evaluate(&gt, &[r]));
        assert!(detail.contains("not finite"), "{detail}");
        let r = BboxResult {
            bbox: [0.0, 0.0, 1.0, 1.0],
            score: bad,
            ..r
        };
        let (_, detail) = format_error(coco::evaluate(&gt, &[r]));
        assert!(detail.contains("score"), "{detail}");
    }
    let missing = coco::load_results(dir.join("absent.json"), &gt);
    assert!(matches!(missing, Err(Error::Io { .. })), "{missing:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_perfect_detector_scores_one_and_ties_keep_file_order() {
    let gt = gt();
    let hit = |image_id, bbox, score| BboxResult {
        image_id,
        category_id: 7,
        bbox,
        score,
    };
    let perfect = [
        hit(1, [10.0, 10.0, 20.0, 20.0], 0.9),
        hit(2, [0.0, 0.0, 50.0, 50.0], 0.8),
    ];
    let eval = coco::evaluate(&gt, &perfect).unwrap();
    assert_eq!(eval.stats[0], 1.0);
    assert_eq!(eval.stats[8], 1.0);
    // A false positive tied with a hit: pycocotools' stable sort ranks whichever comes first in
    // the file first, so the order of two tied results changes AP50.
    let miss = hit(1, [60.0, 60.0, 20.0, 20.0], 0.9);
    let first = coco::evaluate(&gt, &[miss, perfect[0], perfect[1]]).unwrap().stats[1];
    let second = coco::evaluate(&gt, &[perfect[0], miss, perfect[1]]).unwrap().stats[1];
    assert!(first < second, "{first} vs {second}");
}
