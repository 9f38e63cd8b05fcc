//! COCO's JSON formats: an instances (ground-truth) file and a bbox results file.
//!
//! Parsing is serde over the whole file; a malformed file is an [`Error::Format`] naming the
//! file, what is wrong and (for syntax and type errors) the line and column. After parsing, the
//! content is checked once, so that the evaluator and the dataset loader can rely on it: ids are
//! unique, every annotation's image and category exist, boxes and areas are finite and not
//! negative. Fields the crate does not use (`segmentation`, `info`, `licenses`, ...) are skipped
//! without being stored.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};

/// One entry of an instances file's `images`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// The image id annotations and results refer to.
    pub id: i64,
    /// The file, relative to the dataset's image directory (empty when the file has none).
    #[serde(default)]
    pub file_name: String,
    /// Width in pixels (0 when the file does not say).
    #[serde(default)]
    pub width: u32,
    /// Height in pixels (0 when the file does not say).
    #[serde(default)]
    pub height: u32,
}

/// One entry of an instances file's `annotations` (the bbox part of it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    /// Unique among the annotations.
    pub id: i64,
    /// The image it belongs to.
    pub image_id: i64,
    /// Its category (COCO's id, not a contiguous class index).
    pub category_id: i64,
    /// `[x, y, width, height]` in pixels.
    pub bbox: [f64; 4],
    /// The object's area in pixels. The evaluation's area ranges (small, medium, large) judge
    /// ground truth by this field, not by the box (for COCO it is the segmentation's area).
    pub area: f64,
    /// A crowd region: matched without counting as a hit or a miss, and kept out of training
    /// targets. Written as 0/1 (or true/false); absent means 0.
    #[serde(default, deserialize_with = "flag", serialize_with = "flag_as_int")]
    pub iscrowd: bool,
}

/// One entry of an instances file's `categories`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Category {
    /// The id annotations and results use (COCO's ids are not contiguous).
    pub id: i64,
    /// Its name (the id as text when the file has none).
    #[serde(default)]
    pub name: String,
    /// Its supercategory, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub supercategory: String,
}

/// One entry of a bbox results file: a detection in COCO's form.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BboxResult {
    /// The image it was detected in; must be an image of the ground truth.
    pub image_id: i64,
    /// COCO's category id; must be a category of the ground truth.
    pub category_id: i64,
    /// `[x, y, width, height]` in the original image's pixels.
    pub bbox: [f64; 4],
    /// Confidence; higher ranks first.
    pub score: f64,
}

/// A COCO instances file: images, annotations and categories, checked and indexed.
#[derive(Clone, Debug, Default)]
pub struct Instances {
    /// The images, in file order.
    pub images: Vec<Image>,
    /// The annotations, in file order.
    pub annotations: Vec<Annotation>,
    /// The categories, in file order.
    pub categories: Vec<Category>,
    image_index: HashMap<i64, usize>,
    category_index: HashMap<i64, usize>,
}

#[derive(Deserialize)]
struct InstancesFile {
    images: Vec<Image>,
    #[serde(default)]
    annotations: Vec<Annotation>,
    categories: Vec<Category>,
}

#[derive(Serialize)]
struct InstancesFileRef<'a> {
    images: &'a [Image],
    annotations: &'a [Annotation],
    categories: &'a [Category],
}

impl Instances {
    /// Builds and checks instances from their parts; `source` names them in errors.
    pub fn new(
        images: Vec<Image>,
        annotations: Vec<Annotation>,
        mut categories: Vec<Category>,
        source: &str,
    ) -> Result<Self> {
        let mut image_index = HashMap::with_capacity(images.len());
        for (i, image) in images.iter().enumerate() {
            if image_index.insert(image.id, i).is_some() {
                return Err(Error::format(
                    source,
                    format!("images[{i}]: duplicate image id {}", image.id),
                ));
            }
        }
        let mut category_index = HashMap::with_capacity(categories.len());
        for (i, category) in categories.iter_mut().enumerate() {
            if category_index.insert(category.id, i).is_some() {
                return Err(Error::format(
                    source,
                    format!("categories[{i}]: duplicate category id {}", category.id),
                ));
            }
            if category.name.is_empty() {
                category.name = category.id.to_string();
            }
        }
        let mut annotation_ids = HashMap::with_capacity(annotations.len());
        for (i, ann) in annotations.iter().enumerate() {
            let at = || format!("annotations[{i}] (id {})", ann.id);
            if annotation_ids.insert(ann.id, i).is_some() {
                return Err(Error::format(source, format!("{}: duplicate annotation id", at())));
            }
            if !image_index.contains_key(&ann.image_id) {
                return Err(Error::format(
                    source,
                    format!("{}: image_id {} is not in `images`", at(), ann.image_id),
                ));
            }
            if !category_index.contains_key(&ann.category_id) {
                return Err(Error::format(
                    source,
                    format!("{}: category_id {} is not in `categories`", at(), ann.category_id),
                ));
            }
            check_bbox(&ann.bbox).map_err(|why| Error::format(source, format!("{}: {why}", at())))?;
            if !ann.area.is_finite() || ann.area < 0.0 {
                return Err(Error::format(
                    source,
                    format!("{}: area {} is not a finite non-negative number", at(), ann.area),
                ));
            }
        }
        Ok(Self {
            images,
            annotations,
            categories,
            image_index,
            category_index,
        })
    }

    /// Parses and checks an instances JSON held in memory; `source` names it in errors.
    pub fn from_json(bytes: &[u8], source: &str) -> Result<Self> {
        let file: InstancesFile = parse_json(bytes, source)?;
        Self::new(file.images, file.annotations, file.categories, source)
    }

    /// Reads, parses and checks an instances JSON file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&bytes, &path.display().to_string())
    }

    /// The instances as COCO JSON (images, annotations, categories).
    pub fn to_json(&self) -> Vec<u8> {
        let file = InstancesFileRef {
            images: &self.images,
            annotations: &self.annotations,
            categories: &self.categories,
        };
        serde_json::to_vec(&file).expect("instances serialise: plain numbers and strings")
    }

    /// Writes the instances as COCO JSON, through a temporary file renamed into place.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_file(path.as_ref(), &self.to_json())
    }

    /// The position of an image id in [`Instances::images`].
    pub fn image_position(&self, id: i64) -> Option<usize> {
        self.image_index.get(&id).copied()
    }

    /// The position of a category id in [`Instances::categories`].
    pub fn category_position(&self, id: i64) -> Option<usize> {
        self.category_index.get(&id).copied()
    }
}

/// Parses a bbox results JSON (an array of `{image_id, category_id, bbox, score}`) held in
/// memory and checks each entry on its own (finite box of non-negative size, finite score);
/// `source` names it in errors. Whether its images and categories exist is checked against a
/// ground truth by [`check_results`] (done by [`load_results`] and the evaluator).
pub fn results_from_json(bytes: &[u8], source: &str) -> Result<Vec<BboxResult>> {
    let results: Vec<BboxResult> = parse_json(bytes, source)?;
    for (i, r) in results.iter().enumerate() {
        check_result_values(i, r, source)?;
    }
    Ok(results)
}

/// Reads a bbox results JSON file and checks it against the ground truth `gt`.
pub fn load_results(path: impl AsRef<Path>, gt: &Instances) -> Result<Vec<BboxResult>> {
    let path = path.as_ref();
    let source = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let results: Vec<BboxResult> = parse_json(&bytes, &source)?;
    check_results(gt, &results, &source)?;
    Ok(results)
}

/// Checks results against a ground truth: every image and category must be one of its own
/// (pycocotools asserts the first as "Results do not correspond to current coco set" and
/// silently drops the second; here both are errors), boxes finite with non-negative sizes and
/// scores finite. `source` names the results in errors.
pub fn check_results(gt: &Instances, results: &[BboxResult], source: &str) -> Result<()> {
    for (i, r) in results.iter().enumerate() {
        if gt.image_position(r.image_id).is_none() {
            return Err(Error::format(
                source,
                format!(
                    "results[{i}]: image_id {} is not an image of the ground truth \
                     (results do not correspond to the current COCO set)",
                    r.image_id
                ),
            ));
        }
        if gt.category_position(r.category_id).is_none() {
            return Err(Error::format(
                source,
                format!(
                    "results[{i}]: category_id {} is not a category of the ground truth",
                    r.category_id
                ),
            ));
        }
        check_result_values(i, r, source)?;
    }
    Ok(())
}

/// Result `i` on its own: a finite box of non-negative size and a finite score.
fn check_result_values(i: usize, r: &BboxResult, source: &str) -> Result<()> {
    check_bbox(&r.bbox).map_err(|why| Error::format(source, format!("results[{i}]: {why}")))?;
    if !r.score.is_finite() {
        return Err(Error::format(
            source,
            format!("results[{i}]: score {} is not finite", r.score),
        ));
    }
    Ok(())
}

/// Results as a COCO results JSON array.
pub fn results_to_json(results: &[BboxResult]) -> Vec<u8> {
    serde_json::to_vec(results).expect("results serialise: plain numbers")
}

/// Writes results as a COCO results JSON file, through a temporary file renamed into place.
pub fn save_results(path: impl AsRef<Path>, results: &[BboxResult]) -> Result<()> {
    write_file(path.as_ref(), &results_to_json(results))
}

/// Writes `bytes` to `path` through `path.tmp`, synced and renamed into place, so that a reader
/// never sees half a file and a crash never leaves one.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable (best effort: not every platform syncs a directory).
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(dir) = std::fs::File::open(dir)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], source: &str) -> Result<T> {
    // serde_json's message ends in "at line L column C" for syntax and type errors.
    serde_json::from_slice(bytes).map_err(|e| Error::format(source, format!("invalid COCO JSON: {e}")))
}

fn check_bbox(bbox: &[f64; 4]) -> std::result::Result<(), String> {
    if bbox.iter().any(|v| !v.is_finite()) {
        return Err(format!("bbox {bbox:?} has a value that is not finite"));
    }
    if bbox[2] < 0.0 || bbox[3] < 0.0 {
        return Err(format!("bbox {bbox:?} has a negative width or height"));
    }
    Ok(())
}

/// `iscrowd` as COCO writes it (0/1), or as a boolean.
fn flag<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Int(i64),
    }
    Ok(match Flag::deserialize(d)? {
        Flag::Bool(b) => b,
        Flag::Int(i) => i != 0,
    })
}

fn flag_as_int<S: serde::Serializer>(v: &bool, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u8(u8::from(*v))
}
