//! COCO datasets with images: a small dataset written to disk and loaded back, its targets
//! turned into detections and evaluated, unreadable images, the letterbox and the input tensor.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use image::{GrayImage, Luma, Rgb, RgbImage, Rgba, RgbaImage};
use retina_wgpu::coco::{
    self, Annotation, Category, CocoDataset, DatasetOptions, Image, Instances, Letterbox, Normalize,
    detections_to_results,
};
use retina_wgpu::{Detection, Error, Progress};

/// A directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("retina-coco-dataset-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("images")).unwrap();
        Self(dir)
    }

    fn image(&self, file_name: &str) -> PathBuf {
        self.0.join("images").join(file_name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn image(id: i64, file_name: &str, width: u32, height: u32) -> Image {
    Image {
        id,
        file_name: file_name.into(),
        width,
        height,
    }
}

fn annotation(id: i64, image_id: i64, category_id: i64, bbox: [f64; 4], iscrowd: bool) -> Annotation {
    Annotation {
        id,
        image_id,
        category_id,
        bbox,
        area: bbox[2] * bbox[3],
        iscrowd,
    }
}

/// Categories with ids that are neither contiguous nor in order.
fn categories() -> Vec<Category> {
    [(11, "triangle"), (3, "square"), (7, "disc")]
        .map(|(id, name)| Category {
            id,
            name: name.into(),
            supercategory: "shape".into(),
        })
        .to_vec()
}

const GREY: u8 = 200;
const RGB: [u8; 3] = [10, 120, 250];

/// Six images of different sizes and kinds and twelve annotations: one crowd, one of zero
/// width, one reaching 1 px past the right edge of its 90 px wide image.
fn write_fixture(dir: &TempDir) -> Instances {
    GrayImage::from_pixel(100, 100, Luma([GREY]))
        .save(dir.image("grey.png"))
        .unwrap();
    RgbImage::from_pixel(64, 64, Rgb(RGB))
        .save(dir.image("rgb.png"))
        .unwrap();
    RgbaImage::from_pixel(80, 80, Rgba([RGB[0], RGB[1], RGB[2], 128]))
        .save(dir.image("rgba.png"))
        .unwrap();
    RgbImage::from_fn(200, 120, |x, y| Rgb([x as u8, y as u8, 7]))
        .save(dir.image("landscape.png"))
        .unwrap();
    RgbImage::from_fn(90, 150, |x, y| Rgb([y as u8, x as u8, 99]))
        .save(dir.image("portrait.png"))
        .unwrap();
    RgbImage::from_fn(160, 100, |x, y| Rgb([x as u8, y as u8, (x + y) as u8]))
        .save(dir.image("photo.jpg"))
        .unwrap();
    let images = vec![
        image(1, "grey.png", 100, 100),
        image(2, "rgb.png", 64, 64),
        image(3, "rgba.png", 80, 80),
        image(4, "landscape.png", 200, 120),
        image(5, "portrait.png", 90, 150),
        image(6, "photo.jpg", 160, 100),
    ];
    let annotations = vec![
        annotation(1, 1, 3, [10.0, 10.0, 30.0, 40.0], false),
        annotation(2, 1, 7, [60.0, 60.0, 30.0, 30.0], true),
        annotation(3, 2, 7, [5.0, 5.0, 20.0, 20.0], false),
        annotation(4, 2, 11, [30.0, 30.0, 30.0, 25.0], false),
        annotation(5, 3, 11, [0.0, 0.0, 80.0, 80.0], false),
        annotation(6, 4, 3, [20.0, 30.0, 60.0, 50.0], false),
        annotation(7, 4, 7, [120.0, 10.0, 0.0, 30.0], false),
        annotation(8, 4, 7, [110.0, 60.0, 70.0, 40.0], false),
        annotation(9, 5, 11, [50.0, 20.0, 41.0, 30.0], false),
        annotation(10, 5, 3, [10.0, 80.0, 30.0, 60.0], false),
        annotation(11, 6, 7, [30.0, 20.0, 50.0, 40.0], false),
        annotation(12, 6, 3, [100.0, 50.0, 40.0, 30.0], false),
    ];
    let instances = Instances::new(images, annotations, categories(), "fixture").unwrap();
    instances.save(dir.0.join("annotations.json")).unwrap();
    instances
}

#[test]
fn targets_placed_as_detections_evaluate_to_ap_one() {
    let dir = TempDir::new("round-trip");
    let written = write_fixture(&dir);
    let options = DatasetOptions {
        input_size: 128,
        ..Default::default()
    };
    let data = CocoDataset::open_dir(&dir.0, &options).unwrap();

    let report = data.report();
    assert_eq!(
        (report.images, report.annotations, report.kept),
        (6, 12, 10),
        "{report}"
    );
    assert_eq!((report.crowd, report.degenerate, report.clipped), (1, 1, 1), "{report}");
    assert!(
        report.skipped.is_empty() && report.size_mismatches.is_empty(),
        "{report}"
    );
    assert!(report.to_string().contains("1 crowd excluded"), "{report}");

    assert_eq!(data.categories().category_ids(), &[3, 7, 11]);
    assert_eq!(data.categories().name(2), Some("triangle"));
    let ids: Vec<i64> = data.samples().iter().map(|s| s.image_id()).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6], "samples keep the file's image order");
    let landscape = data.samples()[3].letterbox();
    assert_eq!((landscape.resized_width(), landscape.resized_height()), (128, 77));
    let portrait = &data.samples()[4];
    assert_eq!(
        (
            portrait.letterbox().resized_width(),
            portrait.letterbox().resized_height()
        ),
        (77, 128)
    );
    // The box past the right edge is clipped there (x2 = 90 px = 77 network px).
    assert_eq!(portrait.classes(), &[2, 0]);
    assert!((portrait.boxes()[0][2] - 77.0).abs() < 1e-4, "{:?}", portrait.boxes());

    // One detection exactly on every training target, mapped back to the original images.
    let mut results = Vec::new();
    for sample in data.samples() {
        let detections: Vec<Detection> = sample
            .boxes()
            .iter()
            .zip(sample.classes())
            .enumerate()
            .map(|(i, (&bbox, &class))| Detection {
                bbox,
                score: 0.9 - 0.1 * i as f32,
                class: class as u32,
            })
            .collect();
        results.extend(
            detections_to_results(&detections, sample.image_id(), sample.letterbox(), data.categories()).unwrap(),
        );
    }
    assert_eq!(results.len(), 10);
    for r in &results {
        let gt = written
            .annotations
            .iter()
            .find(|a| a.image_id == r.image_id && a.category_id == r.category_id && !a.iscrowd && a.bbox[2] > 0.0)
            .unwrap();
        let expected = if gt.id == 9 { [50.0, 20.0, 40.0, 30.0] } else { gt.bbox };
        for (got, want) in r.bbox.iter().zip(expected) {
            assert!(
                (got - want).abs() < 1e-3,
                "annotation {}: {:?} vs {expected:?}",
                gt.id,
                r.bbox
            );
        }
    }

    // AP is exactly 1 against the ground truth as written, less the zero-width box: no box can
    // match that one (its IoU with anything is 0), so it is not part of a perfect score. The
    // crowd box needs no detection (unmatched crowd is ignored). The clipped box comes back as
    // its clipped self, IoU 40/41 = 0.976 with the box as written, above the top threshold 0.95;
    // every other box comes back within f32 rounding.
    let gt = Instances::new(
        written.images.clone(),
        written.annotations.iter().filter(|a| a.id != 7).cloned().collect(),
        written.categories.clone(),
        "fixture without its zero-width box",
    )
    .unwrap();
    let eval = coco::evaluate(&gt, &results).unwrap();
    assert_eq!(eval.stats[0], 1.0, "AP\n{}", eval.summary());
    assert_eq!(eval.stats[1], 1.0, "AP50\n{}", eval.summary());
    let with_zero_width = coco::evaluate(data.instances(), &results).unwrap();
    assert!(
        with_zero_width.stats[0] < 1.0,
        "the zero-width box counts as missed when kept"
    );
}

#[test]
fn the_input_tensor_is_normalised_and_zero_padded() {
    let dir = TempDir::new("tensor");
    write_fixture(&dir);
    let data = CocoDataset::open_dir(&dir.0, &DatasetOptions::default()).unwrap();
    let size = 128;
    let plane = size * size;
    let imagenet = |c: usize, p: u8| (p as f32 / 255.0 - [0.485, 0.456, 0.406][c]) / [0.229, 0.224, 0.225][c];

    let grey = data.samples()[0].to_chw(&data.options().normalize);
    assert_eq!(grey.len(), 3 * plane);
    for c in 0..3 {
        for (y, x) in [(0, 0), (64, 17), (127, 127)] {
            assert!((grey[c * plane + y * size + x] - imagenet(c, GREY)).abs() < 1e-6);
        }
    }
    // RGB (64 px, upscaled) and RGBA (alpha dropped) give the same pixels.
    for sample in &data.samples()[1..3] {
        let t = sample.to_chw(&Normalize::IMAGENET);
        for c in 0..3 {
            assert!((t[c * plane + 100 * size + 3] - imagenet(c, RGB[c])).abs() < 1e-6);
        }
    }
    let unit = data.samples()[1].to_chw(&Normalize::UNIT);
    assert!((unit[2 * plane] - 250.0 / 255.0).abs() < 1e-6);

    // Landscape 200x120 -> 128x77: rows 77.. are padding, 0.0 (the mean colour).
    let landscape = &data.samples()[3];
    let t = landscape.to_chw(&Normalize::IMAGENET);
    let padded = |y: usize, x: usize| (0..3).all(|c| t[c * plane + y * size + x] == 0.0);
    assert!((77..size).all(|y| (0..size).all(|x| padded(y, x))));
    assert!(!padded(76, 100), "the last image row is not padding");
    // Portrait 90x150 -> 77x128: columns 77.. are padding.
    let t = data.samples()[4].to_chw(&Normalize::IMAGENET);
    assert!((0..size).all(|y| (77..size).all(|x| (0..3).all(|c| t[c * plane + y * size + x] == 0.0))));
    assert_eq!(
        data.samples()[4].rgb().len(),
        77 * 128 * 3,
        "stored as u8 RGB without padding"
    );

    let mut short = vec![0.0; 10];
    assert!(landscape.write_chw(&Normalize::IMAGENET, &mut short).is_err());
    assert!(Normalize::new([0.5; 3], [0.2, 0.0, 0.2]).is_err());
    let custom = Normalize::new([0.5; 3], [0.25; 3]).unwrap();
    let t = data.samples()[0].to_chw(&custom);
    assert!((t[0] - (GREY as f32 / 255.0 - 0.5) / 0.25).abs() < 1e-6);
}

/// A dataset of `good.png` plus the named images, none of which is written by this function.
fn dataset_with(dir: &TempDir, others: &[&str]) {
    RgbImage::from_pixel(40, 30, Rgb(RGB))
        .save(dir.image("good.png"))
        .unwrap();
    let mut images = vec![image(1, "good.png", 40, 30)];
    let mut annotations = vec![annotation(1, 1, 3, [1.0, 1.0, 10.0, 10.0], false)];
    for (i, name) in others.iter().enumerate() {
        let id = i as i64 + 2;
        images.push(image(id, name, 40, 30));
        annotations.push(annotation(id, id, 7, [1.0, 1.0, 10.0, 10.0], false));
    }
    Instances::new(images, annotations, categories(), "fixture")
        .unwrap()
        .save(dir.0.join("annotations.json"))
        .unwrap();
}

#[test]
fn unreadable_images_are_errors_naming_the_file_or_skipped_and_counted() {
    let dir = TempDir::new("unreadable");
    std::fs::write(dir.image("corrupt.png"), b"this is not a PNG").unwrap();

    dataset_with(&dir, &["corrupt.png"]);
    let err = CocoDataset::open_dir(&dir.0, &DatasetOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err:?}");
    assert!(err.to_string().contains("corrupt.png"), "{err}");

    dataset_with(&dir, &["missing.png"]);
    let err = CocoDataset::open_dir(&dir.0, &DatasetOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.png"), "{err}");

    dataset_with(&dir, &["corrupt.png", "missing.png"]);
    let options = DatasetOptions {
        skip_unreadable: true,
        ..Default::default()
    };
    let data = CocoDataset::open_dir(&dir.0, &options).unwrap();
    let report = data.report();
    assert_eq!(
        (data.len(), report.images, report.annotations, report.kept),
        (1, 1, 1, 1),
        "{report}"
    );
    let skipped: Vec<&str> = report.skipped.iter().map(|s| s.file_name.as_str()).collect();
    assert_eq!(skipped, ["corrupt.png", "missing.png"]);
    assert!(report.skipped[0].reason.contains("corrupt.png"));
    let text = report.to_string();
    assert!(
        text.contains("1 images loaded, 2 skipped") && text.contains("missing.png"),
        "{text}"
    );
}

/// An image whose header claims more than the documented limits is refused by the decoder
/// before its pixels are allocated, naming the file: a 20,000-pixel-wide strip (past
/// `MAX_IMAGE_SIDE`), and a PNG header that claims 15,000 x 15,000 pixels (675 MB of RGB, past
/// `MAX_IMAGE_BYTES`) over a file of a few bytes.
#[test]
fn images_that_claim_more_than_the_limits_are_refused_before_decoding() {
    assert_eq!(coco::MAX_IMAGE_SIDE, 16_384);
    let dir = TempDir::new("huge");
    GrayImage::from_pixel(20_000, 1, Luma([7]))
        .save(dir.image("strip.png"))
        .unwrap();
    // A real 1 x 1 PNG with its IHDR width and height rewritten (and the chunk's CRC with them).
    let mut png = Vec::new();
    RgbImage::from_pixel(1, 1, Rgb([1, 2, 3]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png[16..20].copy_from_slice(&15_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&15_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    std::fs::write(dir.image("claims.png"), &png).unwrap();
    for name in ["strip.png", "claims.png"] {
        dataset_with(&dir, &[name]);
        let err = CocoDataset::open_dir(&dir.0, &DatasetOptions::default()).unwrap_err();
        assert!(matches!(err, Error::Format { .. }), "{name}: {err:?}");
        let text = err.to_string();
        assert!(
            text.contains(name) && text.to_lowercase().contains("limit"),
            "{name}: {text}"
        );
    }
}

/// CRC-32 (PNG's polynomial), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Records what a load reports: (label, total) of each start, the units advanced, the finishes.
#[derive(Default)]
struct Recorder {
    starts: Mutex<Vec<(String, u64)>>,
    units: AtomicU64,
    finishes: AtomicU64,
}

impl Progress for Recorder {
    fn start(&self, label: &str, total: u64) {
        self.starts.lock().unwrap().push((label.to_string(), total));
    }

    fn advance(&self, units: u64) {
        self.units.fetch_add(units, Ordering::SeqCst);
    }

    fn finish(&self) {
        self.finishes.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn loading_reports_progress_in_images_and_finishes_on_errors_too() {
    let dir = TempDir::new("progress");
    std::fs::write(dir.image("corrupt.png"), b"this is not a PNG").unwrap();
    dataset_with(&dir, &["corrupt.png", "missing.png"]);
    let load = |skip_unreadable: bool, progress: &Recorder| {
        let instances = Instances::load(dir.0.join("annotations.json")).unwrap();
        let options = DatasetOptions {
            skip_unreadable,
            ..Default::default()
        };
        CocoDataset::from_instances_with_progress(instances, dir.0.join("images"), &options, progress)
    };

    let progress = Recorder::default();
    let data = load(true, &progress).unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(*progress.starts.lock().unwrap(), [("decoding images".to_string(), 3)]);
    assert_eq!(progress.units.load(Ordering::SeqCst), 3, "every image, read or skipped");
    assert_eq!(progress.finishes.load(Ordering::SeqCst), 1);

    let progress = Recorder::default();
    assert!(load(false, &progress).is_err());
    assert_eq!(progress.starts.lock().unwrap().len(), 1);
    assert_eq!(
        progress.finishes.load(Ordering::SeqCst),
        1,
        "an error finishes the report"
    );
}

#[test]
fn the_decoded_size_wins_over_the_declared_one() {
    let dir = TempDir::new("size");
    RgbImage::from_pixel(60, 30, Rgb(RGB))
        .save(dir.image("wide.png"))
        .unwrap();
    let instances = Instances::new(
        vec![image(1, "wide.png", 50, 30)],
        vec![annotation(1, 1, 3, [40.0, 0.0, 20.0, 10.0], false)],
        categories(),
        "fixture",
    )
    .unwrap();
    let data = CocoDataset::from_instances(instances, dir.0.join("images"), &DatasetOptions::default()).unwrap();
    let report = data.report();
    assert_eq!(report.size_mismatches.len(), 1, "{report}");
    assert_eq!(
        (report.size_mismatches[0].declared, report.size_mismatches[0].decoded),
        ((50, 30), (60, 30))
    );
    assert_eq!(report.clipped, 0, "the box fits the decoded 60 px");
    assert_eq!(data.samples()[0].letterbox().width(), 60);
}

#[test]
fn detections_with_unknown_classes_or_bad_boxes_are_errors() {
    let cats = coco::CategoryMap::new(&categories()).unwrap();
    let lb = Letterbox::new(100, 50, 128).unwrap();
    let det = |bbox: [f32; 4], class| Detection {
        bbox,
        score: 0.5,
        class,
    };
    assert!(detections_to_results(&[det([0.0, 0.0, 10.0, 10.0], 3)], 1, &lb, &cats).is_err());
    assert!(detections_to_results(&[det([10.0, 0.0, 5.0, 10.0], 0)], 1, &lb, &cats).is_err());
    assert!(detections_to_results(&[det([f32::NAN, 0.0, 5.0, 10.0], 0)], 1, &lb, &cats).is_err());
    // A box reaching into the padding comes back clipped to the image.
    let r = detections_to_results(&[det([64.0, 32.0, 128.0, 128.0], 1)], 1, &lb, &cats).unwrap();
    assert_eq!((r[0].category_id, r[0].bbox), (7, [50.0, 25.0, 50.0, 25.0]));
}

#[test]
fn to_original_inverts_to_network() {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    for &input_size in &[64, 128, 320, 512, 800] {
        for _ in 0..200 {
            let (w, h) = (1 + (next() * 3000.0) as u32, 1 + (next() * 3000.0) as u32);
            let lb = Letterbox::new(w, h, input_size).unwrap();
            assert_eq!(lb.resized_width().max(lb.resized_height()), input_size);
            for _ in 0..20 {
                let xs = [next() * w as f64, next() * w as f64];
                let ys = [next() * h as f64, next() * h as f64];
                let b = [xs[0].min(xs[1]), ys[0].min(ys[1]), xs[0].max(xs[1]), ys[0].max(ys[1])].map(|v| v as f32);
                let back = lb.to_original(lb.to_network(b));
                for (got, want) in back.iter().zip(b) {
                    assert!(
                        (got - want).abs() <= 1e-3,
                        "{w}x{h} -> {input_size}: {b:?} came back as {back:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn missing_annotations_file_is_an_io_error_naming_it() {
    let dir = TempDir::new("no-json");
    let err = CocoDataset::load(dir.0.join("nope.json"), Path::new("images"), &DatasetOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. }) && err.to_string().contains("nope.json"),
        "{err}"
    );
}
