//! A deterministic COCO-val2017-sized evaluation workload: ground truth and a detector's bbox
//! results with val2017's size and statistics, for measuring the evaluator (`retina bench eval`)
//! against pycocotools and faster-coco-eval on the very same files.
//!
//! Everything is drawn from [`SeededRng`], so a seed gives the same files on every platform:
//!
//! - **Images**: [`CocoWorkload::images`] (5,000) with large, increasing, non-contiguous ids
//!   (like COCO's), 70% landscape 640 x 360..480, 25% portrait 360..480 x 640, 5% 500..640
//!   square-ish; 1% have no annotations.
//! - **Categories**: COCO's 80 ids (1-90 without 12, 26, 29, 30, 45, 66, 68, 69, 71, 83) with
//!   their real names and supercategories. `person` is 30% of the objects, the other 79 follow
//!   a Zipf-like law (weight `1 / rank^0.7`); each image holds 1 to 7 categories.
//! - **Annotations**: [`CocoWorkload::annotations`] (36,781, val2017's count), spread over the
//!   images with a heavy tail (at least one in 99% of the images, up to several dozen). Their `area` (what the area ranges
//!   judge) is 41% small (< 32²), 34% medium (< 96²), 25% large, log-uniform within each range;
//!   the box is `area / fill` with a fill of 0.6-0.9 (as a segmentation's area is of its box)
//!   and an aspect ratio `exp(N(0, 0.5))`, clipped to the image (the area is then refitted), its
//!   coordinates rounded to 0.01 px. 1% are crowd regions.
//! - **Detections**: per image `uniform(36..=100)` capped at [`CocoWorkload::max_detections`]
//!   (340,000 in all for the defaults), sorted by score within the image, images in order. Each
//!   non-crowd object is found with probability 0.6 (small), 0.85 (medium) or 0.95 (large) by a
//!   jittered copy of its box (relative noise 0.02-0.4, so IoUs from about 0.3 to 0.98, the
//!   score higher for the better ones), with a second, looser duplicate 30% of the time and a
//!   copy labelled with a wrong category 10% of the time; the rest are background boxes
//!   anywhere in the image (half of them of a category the image holds) with low scores.
//!   Coordinates and scores are `f32` values (as a detector writes them), and 20% of the
//!   scores are rounded to 0.01 so that ties occur (pycocotools breaks them by file order).
//!
//! [`write_val2017_like`] writes the two as `instances.json` and `results.json`; the instances
//! file is about as heavy as COCO's (about 20 MB; val2017's is 25 MB): each annotation carries a
//! polygon `segmentation` of 9 to 80 points, more for larger objects (an RLE for crowds), and
//! each image COCO's other fields, so that parsing it costs what parsing the real file costs.

use std::path::{Path, PathBuf};

use serde::Serialize;

use retina_coco::{Annotation, BboxResult, Category, Image, Instances, Result, save_results, write_file};
use retina_wgpu::nn::SeededRng;

/// COCO's 80 category names in id order, then their supercategories by id range.
const NAMES: &str = "person,bicycle,car,motorcycle,airplane,bus,train,truck,boat,traffic light,fire hydrant,\
stop sign,parking meter,bench,bird,cat,dog,horse,sheep,cow,elephant,bear,zebra,giraffe,backpack,umbrella,handbag,\
tie,suitcase,frisbee,skis,snowboard,sports ball,kite,baseball bat,baseball glove,skateboard,surfboard,\
tennis racket,bottle,wine glass,cup,fork,knife,spoon,bowl,banana,apple,sandwich,orange,broccoli,carrot,hot dog,\
pizza,donut,cake,chair,couch,potted plant,bed,dining table,toilet,tv,laptop,mouse,remote,keyboard,cell phone,\
microwave,oven,toaster,sink,refrigerator,book,clock,vase,scissors,teddy bear,hair drier,toothbrush";
const SUPER: [(i64, &str); 12] = [
    (1, "person"),
    (9, "vehicle"),
    (15, "outdoor"),
    (25, "animal"),
    (33, "accessory"),
    (43, "sports"),
    (51, "kitchen"),
    (61, "food"),
    (70, "furniture"),
    (77, "electronic"),
    (83, "appliance"),
    (90, "indoor"),
];

/// COCO's 80 category ids: 1-90 without the 10 that were never annotated.
pub fn coco_category_ids() -> Vec<i64> {
    (1..=90)
        .filter(|id| ![12, 26, 29, 30, 45, 66, 68, 69, 71, 83].contains(id))
        .collect()
}

/// COCO's 80 categories with their real names and supercategories.
pub fn coco_categories() -> Vec<Category> {
    coco_category_ids()
        .into_iter()
        .zip(NAMES.split(','))
        .map(|(id, name)| Category {
            id,
            name: name.to_string(),
            supercategory: SUPER
                .iter()
                .find(|(last, _)| id <= *last)
                .map_or("", |s| s.1)
                .to_string(),
        })
        .collect()
}

/// The size of a generated workload; [`Default`] is COCO val2017's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CocoWorkload {
    /// Images (val2017: 5,000).
    pub images: usize,
    /// Ground-truth annotations (val2017: 36,781).
    pub annotations: usize,
    /// Detections per image at most (COCO's `maxDets`: 100).
    pub max_detections: usize,
}

impl Default for CocoWorkload {
    fn default() -> Self {
        Self {
            images: 5000,
            annotations: 36_781,
            max_detections: 100,
        }
    }
}

/// Uniform in `[a, b)`.
fn range(rng: &mut SeededRng, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.uniform()
}

/// An index drawn from cumulative weights `cum` (last = total).
fn pick(rng: &mut SeededRng, cum: &[f64]) -> usize {
    let u = rng.uniform() * cum[cum.len() - 1];
    cum.partition_point(|&c| c <= u).min(cum.len() - 1)
}

fn cumulative(weights: impl IntoIterator<Item = f64>) -> Vec<f64> {
    weights
        .into_iter()
        .scan(0.0, |sum, w| {
            *sum += w;
            Some(*sum)
        })
        .collect()
}

/// A score as a detector writes it: an `f32`, or 20% of the time rounded to 0.01 (ties).
fn score(rng: &mut SeededRng, s: f64) -> f64 {
    if rng.uniform() < 0.2 {
        round2(s).clamp(0.01, 0.99)
    } else {
        f64::from(s as f32)
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// `[x, y, w, h]` clipped to a `width x height` image, at least 1 px wide and high.
fn clip(b: [f64; 4], width: f64, height: f64) -> [f64; 4] {
    let (w, h) = (b[2].clamp(1.0, width), b[3].clamp(1.0, height));
    [b[0].clamp(0.0, width - w), b[1].clamp(0.0, height - h), w, h]
}

impl CocoWorkload {
    /// Generates the ground truth and the results (see the module's documentation). Panics
    /// when there are annotations but no images.
    pub fn generate(&self, seed: u64) -> (Instances, Vec<BboxResult>) {
        let mut rng = SeededRng::new(seed);
        let categories = coco_categories();
        // person: 30% of the objects; the others by 1 / rank^0.7, ranks a fixed permutation.
        let zipf: Vec<f64> = (1..categories.len()).map(|r| 1.0 / (r as f64).powf(0.7)).collect();
        let zsum: f64 = zipf.iter().sum();
        let cat_cum = cumulative((0..categories.len()).map(|k| {
            if k == 0 {
                0.3
            } else {
                0.7 * zipf[(k * 37) % zipf.len()] / zsum
            }
        }));

        let images = self.draw_images(&mut rng);
        let (annotations, image_cats) = self.draw_annotations(&mut rng, &images, &categories, &cat_cum);
        let results = self.draw_results(&mut rng, &images, &annotations, &image_cats, &categories, &cat_cum);
        let gt = Instances::new(images, annotations, categories, "generated val2017-like workload")
            .expect("the generator draws valid ids, boxes and areas");
        (gt, results)
    }

    /// The images: ids increasing by random steps, COCO's mix of landscape, portrait and
    /// square-ish sizes.
    fn draw_images(&self, rng: &mut SeededRng) -> Vec<Image> {
        let mut id = 100_000_i64;
        (0..self.images)
            .map(|_| {
                id += 1 + (rng.next_u64() % 200) as i64;
                let u = rng.uniform();
                let short = 360 + (rng.next_u64() % 121) as u32;
                let (width, height) = if u < 0.7 {
                    (640, short)
                } else if u < 0.95 {
                    (short, 640)
                } else {
                    (500 + (rng.next_u64() % 141) as u32, 500 + (rng.next_u64() % 141) as u32)
                };
                Image {
                    id,
                    file_name: format!("{id:012}.jpg"),
                    width,
                    height,
                }
            })
            .collect()
    }

    /// The annotations, in draw order, and each image's categories.
    fn draw_annotations(
        &self,
        rng: &mut SeededRng,
        images: &[Image],
        categories: &[Category],
        cat_cum: &[f64],
    ) -> (Vec<Annotation>, Vec<Vec<usize>>) {
        // Annotations per image: one for each of 99% of the images, the rest spread by a
        // heavy-tailed weight (Exp(1)^1.2); each image holds 1-7 categories (the first the most
        // often).
        let mut filled: Vec<usize> = (0..self.images).filter(|_| rng.uniform() >= 0.01).collect();
        if filled.is_empty() {
            filled = (0..self.images).collect();
        }
        let img_cum = cumulative(filled.iter().map(|_| (-rng.uniform().max(1e-12).ln()).powf(1.2)));
        let image_cats: Vec<Vec<usize>> = (0..self.images)
            .map(|_| {
                let n = 1 + (rng.uniform().powf(1.5) * 7.0) as usize;
                (0..n).map(|_| pick(rng, cat_cum)).collect()
            })
            .collect();
        let mut annotations: Vec<Annotation> = Vec::with_capacity(self.annotations);
        let mut ann_id = 0_i64;
        for k in 0..self.annotations {
            let i = filled.get(k).copied().unwrap_or_else(|| filled[pick(rng, &img_cum)]);
            let image = &images[i];
            let cats = &image_cats[i];
            let category = cats[((rng.uniform().powi(2) * cats.len() as f64) as usize).min(cats.len() - 1)];
            let (width, height) = (f64::from(image.width), f64::from(image.height));
            let u = rng.uniform();
            let (lo, hi) = if u < 0.41 {
                (16.0, 1024.0)
            } else if u < 0.75 {
                (1024.0, 9216.0)
            } else {
                (9216.0, 0.6 * width * height)
            };
            let target = (range(rng, f64::ln(lo), f64::ln(hi))).exp();
            let fill = range(rng, 0.6, 0.9);
            let aspect = (0.5 * rng.normal()).exp();
            let (w, h) = ((target / fill * aspect).sqrt(), (target / fill / aspect).sqrt());
            let (x, y) = (
                rng.uniform() * (width - w).max(0.0),
                rng.uniform() * (height - h).max(0.0),
            );
            let b = clip([x, y, w, h], width, height).map(round2);
            ann_id += 1 + (rng.next_u64() % 1000) as i64;
            annotations.push(Annotation {
                id: ann_id,
                image_id: image.id,
                category_id: categories[category].id,
                bbox: b,
                area: b[2] * b[3] * fill,
                iscrowd: rng.uniform() < 0.01,
            });
        }
        (annotations, image_cats)
    }

    /// A detector's results per image: noisy copies of the found objects (small ones found
    /// less often), some with a wrong class, then background detections up to a per-image count,
    /// the best `max_detections` kept.
    fn draw_results(
        &self,
        rng: &mut SeededRng,
        images: &[Image],
        annotations: &[Annotation],
        image_cats: &[Vec<usize>],
        categories: &[Category],
        cat_cum: &[f64],
    ) -> Vec<BboxResult> {
        // Annotations grouped by image, as COCO's files roughly are not; keep the draw order.
        let mut by_image: Vec<Vec<usize>> = vec![Vec::new(); self.images];
        let positions: std::collections::HashMap<i64, usize> =
            images.iter().enumerate().map(|(i, im)| (im.id, i)).collect();
        for (a, ann) in annotations.iter().enumerate() {
            by_image[positions[&ann.image_id]].push(a);
        }

        let f32v = |v: f64| f64::from(v as f32);
        let mut results = Vec::with_capacity(self.images * 68);
        let mut dets: Vec<BboxResult> = Vec::new();
        for (i, image) in images.iter().enumerate() {
            let (width, height) = (f64::from(image.width), f64::from(image.height));
            dets.clear();
            for &a in &by_image[i] {
                let ann = &annotations[a];
                if ann.iscrowd {
                    continue;
                }
                let found = match ann.area {
                    a if a < 1024.0 => 0.6,
                    a if a < 9216.0 => 0.85,
                    _ => 0.95,
                };
                if rng.uniform() >= found {
                    continue;
                }
                let copies = 1 + usize::from(rng.uniform() < 0.3);
                for copy in 0..copies {
                    let u = rng.uniform();
                    let noise = if u < 0.5 {
                        range(rng, 0.02, 0.08)
                    } else if u < 0.8 {
                        range(rng, 0.08, 0.2)
                    } else {
                        range(rng, 0.2, 0.4)
                    } * (1 + copy) as f64;
                    let [x, y, w, h] = ann.bbox;
                    let (nw, nh) = (w * (noise * rng.normal()).exp(), h * (noise * rng.normal()).exp());
                    let (nx, ny) = (
                        x + (w - nw) / 2.0 + noise * w * rng.normal(),
                        y + (h - nh) / 2.0 + noise * h * rng.normal(),
                    );
                    let quality = (1.0 - 1.8 * noise).max(0.05);
                    let s = (quality * range(rng, 0.5, 1.0)).clamp(0.01, 0.999);
                    let s = score(rng, s);
                    let mut category_id = ann.category_id;
                    if copy == 0 && rng.uniform() < 0.1 {
                        dets.push(BboxResult {
                            image_id: image.id,
                            category_id: categories[pick(rng, cat_cum)].id,
                            bbox: clip([nx, ny, nw, nh], width, height).map(f32v),
                            score: score(rng, s * 0.6),
                        });
                    }
                    if copy > 0 && rng.uniform() < 0.2 {
                        category_id = categories[pick(rng, cat_cum)].id;
                    }
                    dets.push(BboxResult {
                        image_id: image.id,
                        category_id,
                        bbox: clip([nx, ny, nw, nh], width, height).map(f32v),
                        score: s,
                    });
                }
            }
            let total = (36 + (rng.next_u64() % 65) as usize).min(self.max_detections);
            while dets.len() < total {
                let side = (range(rng, f64::ln(8.0), f64::ln(400.0))).exp();
                let aspect = (0.5 * rng.normal()).exp();
                let (w, h) = (side * aspect.sqrt(), side / aspect.sqrt());
                let b = [rng.uniform() * (width - w), rng.uniform() * (height - h), w, h];
                let category = if rng.uniform() < 0.5 {
                    image_cats[i][(rng.next_u64() % image_cats[i].len() as u64) as usize]
                } else {
                    pick(rng, cat_cum)
                };
                let s = 0.05 + 0.45 * rng.uniform().powi(3);
                let s = score(rng, s);
                dets.push(BboxResult {
                    image_id: image.id,
                    category_id: categories[category].id,
                    bbox: clip(b, width, height).map(f32v),
                    score: s,
                });
            }
            // A detector's output: the best `max_detections`, by score (stable, so ties keep
            // the order they were drawn in).
            dets.sort_by(|a, b| b.score.total_cmp(&a.score));
            dets.truncate(self.max_detections);
            results.extend_from_slice(&dets);
        }
        results
    }

    /// Generates the workload and writes `instances.json` (with polygons, see the module's
    /// documentation) and `results.json` into `dir` (created if missing); returns their paths.
    pub fn write(&self, dir: &Path, seed: u64) -> Result<(PathBuf, PathBuf)> {
        let (gt, results) = self.generate(seed);
        std::fs::create_dir_all(dir).map_err(|e| retina_coco::Error::io(dir, e))?;
        let (gt_path, results_path) = (dir.join("instances.json"), dir.join("results.json"));
        write_file(&gt_path, &instances_file_json(&gt, seed))?;
        save_results(&results_path, &results)?;
        Ok((gt_path, results_path))
    }
}

/// [`CocoWorkload::default`]'s workload (val2017's size) from `seed`.
pub fn val2017_like(seed: u64) -> (Instances, Vec<BboxResult>) {
    CocoWorkload::default().generate(seed)
}

/// [`val2017_like`] written to `dir/instances.json` and `dir/results.json`.
pub fn write_val2017_like(dir: &Path, seed: u64) -> Result<(PathBuf, PathBuf)> {
    CocoWorkload::default().write(dir, seed)
}

#[derive(Serialize)]
struct FileImage<'a> {
    license: u32,
    file_name: &'a str,
    coco_url: String,
    height: u32,
    width: u32,
    date_captured: String,
    flickr_url: String,
    id: i64,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Segmentation {
    Polygons(Vec<Vec<f64>>),
    Rle { counts: Vec<u64>, size: [u32; 2] },
}

#[derive(Serialize)]
struct FileAnnotation {
    segmentation: Segmentation,
    area: f64,
    iscrowd: u8,
    image_id: i64,
    bbox: [f64; 4],
    category_id: i64,
    id: i64,
}

#[derive(Serialize)]
struct License {
    url: String,
    id: u32,
    name: String,
}

#[derive(Serialize)]
struct InstancesFile<'a> {
    info: serde_json::Value,
    licenses: Vec<License>,
    images: Vec<FileImage<'a>>,
    annotations: Vec<FileAnnotation>,
    categories: &'a [Category],
}

/// The instances as COCO writes them: COCO's image fields, a polygon per object (an
/// uncompressed RLE per crowd) drawn around the box from `seed`.
fn instances_file_json(gt: &Instances, seed: u64) -> Vec<u8> {
    let mut rng = SeededRng::new(seed ^ 0x5eed_0f5e_6e00_0000);
    let heights: std::collections::HashMap<i64, (u32, u32)> =
        gt.images.iter().map(|im| (im.id, (im.height, im.width))).collect();
    let images = gt
        .images
        .iter()
        .enumerate()
        .map(|(k, im)| FileImage {
            license: 1 + (k % 8) as u32,
            file_name: &im.file_name,
            coco_url: format!("http://images.cocodataset.org/val2017/{}", im.file_name),
            height: im.height,
            width: im.width,
            date_captured: format!(
                "2013-11-{:02} {:02}:{:02}:{:02}",
                1 + k % 28,
                k % 24,
                k % 60,
                (k * 7) % 60
            ),
            flickr_url: format!(
                "http://farm{}.staticflickr.com/{}/{}_{:x}_z.jpg",
                1 + k % 9,
                1000 + k,
                im.id,
                k
            ),
            id: im.id,
        })
        .collect();
    let annotations = gt
        .annotations
        .iter()
        .map(|ann| {
            let [x, y, w, h] = ann.bbox;
            let segmentation = if ann.iscrowd {
                let (ih, iw) = heights[&ann.image_id];
                let total = u64::from(ih) * u64::from(iw);
                let mut counts: Vec<u64> = (0..2 * (h as u64).clamp(1, 200))
                    .map(|_| rng.next_u64() % 300)
                    .collect();
                let used: u64 = counts.iter().sum();
                counts.push(total.saturating_sub(used));
                Segmentation::Rle { counts, size: [ih, iw] }
            } else {
                let n = (8 + (ann.area.sqrt() / 4.0) as usize).min(80);
                let (cx, cy) = (x + w / 2.0, y + h / 2.0);
                let points = (0..n)
                    .flat_map(|k| {
                        let t = std::f64::consts::TAU * (k as f64 + 0.5 * rng.uniform()) / n as f64;
                        let r = 0.5 * range(&mut rng, 0.7, 1.0);
                        let px = (cx + r * w * t.cos()).clamp(x, x + w);
                        let py = (cy + r * h * t.sin()).clamp(y, y + h);
                        [round2(px), round2(py)]
                    })
                    .collect();
                Segmentation::Polygons(vec![points])
            };
            FileAnnotation {
                segmentation,
                area: ann.area,
                iscrowd: u8::from(ann.iscrowd),
                image_id: ann.image_id,
                bbox: ann.bbox,
                category_id: ann.category_id,
                id: ann.id,
            }
        })
        .collect();
    let file = InstancesFile {
        info: serde_json::json!({
            "description": "retina-wgpu synthetic val2017-like workload",
            "url": "https://cocodataset.org",
            "version": "1.0",
            "year": 2017,
            "contributor": "retina-wgpu",
            "date_created": "2017/09/01",
            "seed": seed,
        }),
        licenses: (1..=8)
            .map(|id| License {
                url: format!("http://creativecommons.org/licenses/by/{id}.0/"),
                id,
                name: format!("License {id}"),
            })
            .collect(),
        images,
        annotations,
        categories: &gt.categories,
    };
    serde_json::to_vec(&file).expect("instances serialise: plain numbers and strings")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_is_deterministic_and_val2017_like() {
        let (gt, results) = val2017_like(7);
        let (gt2, results2) = val2017_like(7);
        assert_eq!(
            (gt.images.len(), gt.annotations.len(), gt.categories.len()),
            (5000, 36_781, 80)
        );
        assert_eq!(gt.images.len(), gt2.images.len());
        assert_eq!(gt.annotations.first(), gt2.annotations.first());
        assert_eq!(gt.annotations.last(), gt2.annotations.last());
        assert_eq!(gt.images.last(), gt2.images.last());
        assert_eq!(results.len(), results2.len());
        assert_eq!(results.first(), results2.first());
        assert_eq!(results.last(), results2.last());
        assert_ne!(val2017_like(8).1.first(), results.first());
        assert!((320_000..360_000).contains(&results.len()), "{} results", results.len());

        let ids = coco_category_ids();
        assert_eq!((ids.len(), ids[11], ids[79]), (80, 13, 90));
        assert_eq!(gt.categories[79].name, "toothbrush");
        assert_eq!(gt.categories[79].supercategory, "indoor");

        let n = gt.annotations.len() as f64;
        let frac = |f: &dyn Fn(&Annotation) -> bool| gt.annotations.iter().filter(|a| f(a)).count() as f64 / n;
        assert!((frac(&|a| a.area < 1024.0) - 0.41).abs() < 0.03);
        assert!((frac(&|a| (1024.0..9216.0).contains(&a.area)) - 0.34).abs() < 0.03);
        assert!((frac(&|a| a.iscrowd) - 0.01).abs() < 0.005);
        assert!((frac(&|a| a.category_id == 1) - 0.3).abs() < 0.03);
        for a in &gt.annotations {
            let fill = a.area / (a.bbox[2] * a.bbox[3]);
            assert!((0.6..0.9).contains(&fill), "{a:?}");
        }

        let mut per_image = std::collections::HashMap::new();
        for r in &results {
            *per_image.entry(r.image_id).or_insert(0) += 1;
            assert!(
                r.score > 0.0 && r.score < 1.0 && r.bbox[2] >= 1.0 && r.bbox[3] >= 1.0,
                "{r:?}"
            );
        }
        assert_eq!(per_image.len(), 5000);
        assert!(per_image.values().all(|&c| c <= 100));
        let mut scores: Vec<u64> = results.iter().map(|r| r.score.to_bits()).collect();
        scores.sort_unstable();
        scores.dedup();
        assert!(scores.len() < results.len() * 9 / 10, "ties are present");
        check_against_gt(&gt, &results);
    }

    fn check_against_gt(gt: &Instances, results: &[BboxResult]) {
        retina_coco::check_results(gt, results, "generated").unwrap();
        for r in results {
            let im = &gt.images[gt.image_position(r.image_id).unwrap()];
            assert!(r.bbox[0] + r.bbox[2] <= f64::from(im.width) + 1e-3, "{r:?} {im:?}");
            assert!(r.bbox[1] + r.bbox[3] <= f64::from(im.height) + 1e-3, "{r:?} {im:?}");
        }
    }

    #[test]
    fn the_files_parse_back_to_the_same_workload() {
        let dir = std::env::temp_dir().join(format!("retina-workload-test-{}", std::process::id()));
        let small = CocoWorkload {
            images: 50,
            annotations: 400,
            max_detections: 100,
        };
        let (gt_path, results_path) = small.write(&dir, 3).unwrap();
        let (gt, results) = small.generate(3);
        let loaded = Instances::load(&gt_path).unwrap();
        assert_eq!(loaded.images, gt.images);
        assert_eq!(loaded.annotations, gt.annotations);
        assert_eq!(loaded.categories, gt.categories);
        assert_eq!(retina_coco::load_results(&results_path, &loaded).unwrap(), results);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
