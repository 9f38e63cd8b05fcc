//! COCO datasets with images: an instances JSON and its image directory, decoded, letterboxed
//! to the network's square input and paired with ground truth in network pixels; and the way
//! back, from detections in network pixels to COCO results in the original images' pixels.
//!
//! ```no_run
//! use retina_wgpu::coco::{self, CocoDataset, DatasetOptions};
//!
//! let options = DatasetOptions { input_size: 128, ..Default::default() };
//! let data = CocoDataset::open_dir("scenes/val", &options)?; // annotations.json + images/
//! print!("{}", data.report());
//! let sample = &data.samples()[0];
//! let input = sample.to_chw(&data.options().normalize); // 3 x 128 x 128, what the network takes
//! let gt = sample.ground_truth(); // boxes in network pixels, classes in 0..K
//! # let detections: Vec<retina_wgpu::Detection> = Vec::new();
//! // ... the network and its post-processing turn `input` into `detections` ...
//! let results =
//!     coco::detections_to_results(&detections, sample.image_id(), sample.letterbox(), data.categories())?;
//! let eval = coco::evaluate(data.instances(), &results)?;
//! # Ok::<(), retina_wgpu::Error>(())
//! ```
//!
//! Geometry: each image is scaled by one factor (up to the rounding of its resized size, kept
//! exact in [`Letterbox`]) so that its longer side is the input size, placed at the top-left
//! corner, and padded at the right and bottom, as torchvision's `GeneralizedRCNNTransform` pads.
//! Network and original coordinates are therefore related by a scale alone, with no offset.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use image::imageops::{self, FilterType};
use rayon::prelude::*;

use retina_coco::{Annotation, BboxResult, Category, Image, Instances};

use crate::error::{Error, Result};
use crate::ops::image::Normalize;
use crate::ops::matcher::GroundTruth;
use crate::ops::postprocess::Detection;
use crate::progress::{Finish, NoProgress, Progress};

/// How a [`CocoDataset`] is loaded and what its samples become.
#[derive(Clone, Debug, PartialEq)]
pub struct DatasetOptions {
    /// Side of the square network input in pixels (default 128).
    pub input_size: u32,
    /// The normalisation of the network input, for [`Sample::to_chw`] (default ImageNet's).
    pub normalize: Normalize,
    /// Skip an image whose file is missing or cannot be decoded, and list it in
    /// [`LoadReport::skipped`], instead of failing (default false).
    pub skip_unreadable: bool,
}

impl Default for DatasetOptions {
    fn default() -> Self {
        Self {
            input_size: 128,
            normalize: Normalize::IMAGENET,
            skip_unreadable: false,
        }
    }
}

/// How one image was fitted into the square network input: scaled so that its longer side is
/// the input size, at the top-left corner, padded at the right and bottom.
///
/// The resized sides are rounded to whole pixels, so the x and y scales may differ slightly;
/// both are kept exact (`resized / original`), and [`Letterbox::to_original`] inverts
/// [`Letterbox::to_network`] up to f32 rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Letterbox {
    width: u32,
    height: u32,
    resized_width: u32,
    resized_height: u32,
    input_size: u32,
}

impl Letterbox {
    /// The letterbox of a `width` x `height` image in a square input of side `input_size`.
    pub fn new(width: u32, height: u32, input_size: u32) -> Result<Self> {
        if width == 0 || height == 0 || input_size == 0 {
            return Err(Error::invalid(format!(
                "letterbox of a {width}x{height} image into {input_size}x{input_size}: sizes must be positive"
            )));
        }
        let long = u64::from(width.max(height));
        // Rounded half up in integers, so that the longer side is exactly `input_size`.
        let resized = |side: u32| ((2 * u64::from(side) * u64::from(input_size) + long) / (2 * long)).max(1) as u32;
        Ok(Self {
            width,
            height,
            resized_width: resized(width),
            resized_height: resized(height),
            input_size,
        })
    }

    /// The original image's width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// The original image's height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Width of the image inside the input; the rest of each row is padding.
    pub fn resized_width(&self) -> u32 {
        self.resized_width
    }

    /// Height of the image inside the input; the rows below are padding.
    pub fn resized_height(&self) -> u32 {
        self.resized_height
    }

    /// Side of the square network input.
    pub fn input_size(&self) -> u32 {
        self.input_size
    }

    /// Network pixels per original pixel, `(x, y)`.
    pub fn scale(&self) -> (f64, f64) {
        (
            f64::from(self.resized_width) / f64::from(self.width),
            f64::from(self.resized_height) / f64::from(self.height),
        )
    }

    /// An `[x1, y1, x2, y2]` box from original to network pixels (scaled, not clipped).
    pub fn to_network(self, b: [f32; 4]) -> [f32; 4] {
        self.to_network_f64(b.map(f64::from))
    }

    /// An `[x1, y1, x2, y2]` box from network to original pixels, clipped to the original image.
    pub fn to_original(self, b: [f32; 4]) -> [f32; 4] {
        self.to_original_f64(b).map(|v| v as f32)
    }

    fn to_network_f64(self, b: [f64; 4]) -> [f32; 4] {
        let (sx, sy) = self.scale();
        [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy].map(|v| v as f32)
    }

    fn to_original_f64(self, b: [f32; 4]) -> [f64; 4] {
        let (w, h) = (f64::from(self.width), f64::from(self.height));
        let x = |v: f32| (f64::from(v) * w / f64::from(self.resized_width)).clamp(0.0, w);
        let y = |v: f32| (f64::from(v) * h / f64::from(self.resized_height)).clamp(0.0, h);
        [x(b[0]), y(b[1]), x(b[2]), y(b[3])]
    }
}

/// COCO's category ids (not contiguous: 1-90 for 80 classes) and the contiguous class indices
/// `0..K` a network predicts, in the order of the categories sorted by id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CategoryMap {
    ids: Vec<i64>,
    names: Vec<String>,
    classes: HashMap<i64, usize>,
}

impl CategoryMap {
    /// The map of `categories`, whose ids must be unique.
    pub fn new(categories: &[Category]) -> Result<Self> {
        let mut sorted: Vec<&Category> = categories.iter().collect();
        sorted.sort_by_key(|c| c.id);
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0].id == pair[1].id) {
            return Err(Error::invalid(format!("category id {} appears twice", pair[0].id)));
        }
        Ok(Self {
            ids: sorted.iter().map(|c| c.id).collect(),
            names: sorted.iter().map(|c| c.name.clone()).collect(),
            classes: sorted.iter().enumerate().map(|(class, c)| (c.id, class)).collect(),
        })
    }

    /// K, the number of classes.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no categories.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The class index of a COCO category id.
    pub fn class_of(&self, category_id: i64) -> Option<usize> {
        self.classes.get(&category_id).copied()
    }

    /// The COCO category id of a class index.
    pub fn category_id(&self, class: usize) -> Option<i64> {
        self.ids.get(class).copied()
    }

    /// The category name of a class index.
    pub fn name(&self, class: usize) -> Option<&str> {
        self.names.get(class).map(String::as_str)
    }

    /// The category ids, indexed by class.
    pub fn category_ids(&self) -> &[i64] {
        &self.ids
    }

    /// The category names, indexed by class.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// One image, letterboxed, with its training targets.
#[derive(Clone, Debug)]
pub struct Sample {
    image_id: i64,
    file_name: String,
    letterbox: Letterbox,
    rgb: Vec<u8>,
    boxes: Vec<[f32; 4]>,
    classes: Vec<i32>,
}

impl Sample {
    /// An image file on its own (no annotations), letterboxed to `input_size`, with image id
    /// `image_id`: what a detector runs on.
    pub fn open(path: impl AsRef<Path>, image_id: i64, input_size: u32) -> Result<Self> {
        let path = path.as_ref();
        let dir = path.parent().unwrap_or(Path::new(""));
        let file_name = path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let image = Image {
            id: image_id,
            file_name: file_name.clone(),
            width: 0,
            height: 0,
        };
        let (rgb, letterbox) = decode_letterboxed(dir, &image, input_size)?;
        Ok(Self {
            image_id,
            file_name,
            letterbox,
            rgb,
            boxes: Vec::new(),
            classes: Vec::new(),
        })
    }

    /// The COCO image id.
    pub fn image_id(&self) -> i64 {
        self.image_id
    }

    /// The file, relative to the image directory.
    pub fn file_name(&self) -> &str {
        &self.file_name
    }

    /// How the image sits in the network input.
    pub fn letterbox(&self) -> &Letterbox {
        &self.letterbox
    }

    /// The resized image without its padding: `resized_height` rows of `resized_width` RGB
    /// pixels, 8 bits each (see [`Letterbox`]).
    pub fn rgb(&self) -> &[u8] {
        &self.rgb
    }

    /// Ground-truth boxes `[x1, y1, x2, y2]` in network pixels, clipped to the image, each with
    /// a positive width and height.
    pub fn boxes(&self) -> &[[f32; 4]] {
        &self.boxes
    }

    /// The class index (`0..K`, see [`CategoryMap`]) of each box.
    pub fn classes(&self) -> &[i32] {
        &self.classes
    }

    /// Boxes and classes as the matcher takes them.
    pub fn ground_truth(&self) -> GroundTruth<'_> {
        GroundTruth {
            boxes: &self.boxes,
            classes: &self.classes,
        }
    }

    /// Length of the network input: `3 * input_size * input_size`.
    pub fn chw_len(&self) -> usize {
        3 * (self.letterbox.input_size as usize).pow(2)
    }

    /// Writes the network input, `[3, input_size, input_size]` (R, G, B planes, rows top to
    /// bottom), into `out` (of [`Sample::chw_len`] values): each pixel normalised, the padding
    /// 0.0 (the mean colour after normalisation, as torchvision pads after normalising).
    pub fn write_chw(&self, normalize: &Normalize, out: &mut [f32]) -> Result<()> {
        let side = self.letterbox.input_size as usize;
        normalize.write_chw(&self.rgb, self.letterbox.resized_width as usize, side, out)
    }

    /// The network input as a new vector (see [`Sample::write_chw`]).
    pub fn to_chw(&self, normalize: &Normalize) -> Vec<f32> {
        let mut out = vec![0.0; self.chw_len()];
        self.write_chw(normalize, &mut out)
            .expect("the buffer has chw_len values");
        out
    }
}

/// What loading a dataset kept, dropped and corrected. Annotation counts are over the images
/// that were loaded. Its `Display` is a summary line, then a line per skipped image and per
/// image whose size disagrees with the instances file, each ending in a newline.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadReport {
    /// Images loaded.
    pub images: usize,
    /// Annotations of the loaded images.
    pub annotations: usize,
    /// Annotations kept as training targets.
    pub kept: usize,
    /// Crowd annotations, kept out of the training targets (the evaluation ignores detections
    /// that match them; they are neither positives nor negatives).
    pub crowd: usize,
    /// Annotations dropped because their box is empty (zero width or height, or nothing left
    /// after clipping to the image).
    pub degenerate: usize,
    /// Kept annotations whose box reached outside the image and was clipped to it.
    pub clipped: usize,
    /// Images left out with `skip_unreadable`.
    pub skipped: Vec<SkippedImage>,
    /// Images whose decoded size differs from the instances file's `width` and `height`; the
    /// decoded size is used.
    pub size_mismatches: Vec<SizeMismatch>,
}

/// An image left out because its file is missing or cannot be decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct SkippedImage {
    /// Its COCO id.
    pub image_id: i64,
    /// Its file, relative to the image directory.
    pub file_name: String,
    /// The error, naming the file.
    pub reason: String,
}

/// An image whose pixels disagree with the size the instances file gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct SizeMismatch {
    /// Its COCO id.
    pub image_id: i64,
    /// Its file, relative to the image directory.
    pub file_name: String,
    /// `(width, height)` in the instances file.
    pub declared: (u32, u32),
    /// `(width, height)` of the decoded image, the one used.
    pub decoded: (u32, u32),
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} images loaded, {} skipped; {} annotations: {} kept ({} clipped to the image), \
             {} crowd excluded, {} degenerate dropped",
            self.images,
            self.skipped.len(),
            self.annotations,
            self.kept,
            self.clipped,
            self.crowd,
            self.degenerate
        )?;
        for s in &self.skipped {
            writeln!(f, "  skipped image {} ({}): {}", s.image_id, s.file_name, s.reason)?;
        }
        for m in &self.size_mismatches {
            writeln!(
                f,
                "  image {} ({}) is {}x{}, not {}x{} as the instances say; using its own size",
                m.image_id, m.file_name, m.decoded.0, m.decoded.1, m.declared.0, m.declared.1
            )?;
        }
        Ok(())
    }
}

/// A COCO dataset with its images decoded and letterboxed: samples in the instances file's
/// image order, the instances themselves (the ground truth of the evaluation), the category
/// map and a [`LoadReport`].
///
/// Training targets are the non-crowd annotations, clipped to the image, without empty boxes,
/// mapped to network pixels. When an image's decoded size differs from the instances file's
/// `width` and `height`, the decoded size is used (annotations are taken to be in its pixels,
/// results come back in them) and the image is listed in [`LoadReport::size_mismatches`].
#[derive(Clone, Debug)]
pub struct CocoDataset {
    instances: Instances,
    categories: CategoryMap,
    samples: Vec<Sample>,
    report: LoadReport,
    options: DatasetOptions,
}

impl CocoDataset {
    /// Loads an instances JSON and decodes its images from `images_dir` (PNG or JPEG; grey,
    /// RGB or RGBA, 8 or 16 bits, all become 8-bit RGB; alpha is dropped), in parallel.
    ///
    /// A missing image file is an [`Error::Io`], an undecodable one an [`Error::Format`], both
    /// naming the file, unless [`DatasetOptions::skip_unreadable`] is set.
    pub fn load(annotations: impl AsRef<Path>, images_dir: impl AsRef<Path>, options: &DatasetOptions) -> Result<Self> {
        Self::from_instances(Instances::load(annotations)?, images_dir, options)
    }

    /// Loads the layout `dir/annotations.json` + `dir/images/` (see [`CocoDataset::load`]).
    pub fn open_dir(dir: impl AsRef<Path>, options: &DatasetOptions) -> Result<Self> {
        let dir = dir.as_ref();
        Self::load(dir.join("annotations.json"), dir.join("images"), options)
    }

    /// Decodes the images of instances already in memory from `images_dir` (see
    /// [`CocoDataset::load`]).
    pub fn from_instances(
        instances: Instances,
        images_dir: impl AsRef<Path>,
        options: &DatasetOptions,
    ) -> Result<Self> {
        Self::from_instances_with_progress(instances, images_dir, options, &NoProgress)
    }

    /// [`CocoDataset::from_instances`], reporting the decoding to `progress` in images.
    pub fn from_instances_with_progress(
        instances: Instances,
        images_dir: impl AsRef<Path>,
        options: &DatasetOptions,
        progress: &dyn Progress,
    ) -> Result<Self> {
        if options.input_size == 0 {
            return Err(Error::invalid("the input size must be positive"));
        }
        let dir = images_dir.as_ref();
        let categories = CategoryMap::new(&instances.categories)?;

        let finish = Finish::start(progress, "decoding images", instances.images.len() as u64);
        let decode = |image: &Image| {
            let decoded = decode_letterboxed(dir, image, options.input_size);
            progress.advance(1);
            decoded
        };
        let decoded: Result<Vec<Result<Decoded>>> = if options.skip_unreadable {
            Ok(instances.images.par_iter().map(decode).collect())
        } else {
            // Stops at the first error instead of decoding everything first.
            instances.images.par_iter().map(|image| decode(image).map(Ok)).collect()
        };
        drop(finish);
        let decoded = decoded?;

        let mut per_image: Vec<Vec<&Annotation>> = vec![Vec::new(); instances.images.len()];
        for ann in &instances.annotations {
            if let Some(i) = instances.image_position(ann.image_id) {
                per_image[i].push(ann);
            }
        }

        let mut report = LoadReport::default();
        let mut samples = Vec::with_capacity(decoded.len());
        for ((image, decoded), annotations) in instances.images.iter().zip(decoded).zip(per_image) {
            let (rgb, letterbox) = match decoded {
                Ok(decoded) => decoded,
                Err(e) => {
                    report.skipped.push(SkippedImage {
                        image_id: image.id,
                        file_name: image.file_name.clone(),
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            let decoded_size = (letterbox.width, letterbox.height);
            if image.width != 0 && image.height != 0 && (image.width, image.height) != decoded_size {
                report.size_mismatches.push(SizeMismatch {
                    image_id: image.id,
                    file_name: image.file_name.clone(),
                    declared: (image.width, image.height),
                    decoded: decoded_size,
                });
            }
            let (mut boxes, mut classes) = (Vec::new(), Vec::new());
            for ann in annotations {
                report.annotations += 1;
                if ann.iscrowd {
                    report.crowd += 1;
                    continue;
                }
                let Some((target, clipped)) = target_box(ann.bbox, &letterbox) else {
                    report.degenerate += 1;
                    continue;
                };
                let class = categories.class_of(ann.category_id).ok_or_else(|| {
                    Error::invalid(format!("annotation {}: unknown category {}", ann.id, ann.category_id))
                })?;
                report.kept += 1;
                report.clipped += usize::from(clipped);
                boxes.push(target);
                classes.push(class as i32);
            }
            report.images += 1;
            samples.push(Sample {
                image_id: image.id,
                file_name: image.file_name.clone(),
                letterbox,
                rgb,
                boxes,
                classes,
            });
        }
        Ok(Self {
            instances,
            categories,
            samples,
            report,
            options: options.clone(),
        })
    }

    /// The samples, in the instances file's image order (skipped images left out).
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The instances as loaded: the ground truth to evaluate results against.
    pub fn instances(&self) -> &Instances {
        &self.instances
    }

    /// The category ids of the classes.
    pub fn categories(&self) -> &CategoryMap {
        &self.categories
    }

    /// What loading kept, dropped and corrected.
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    /// The options it was loaded with.
    pub fn options(&self) -> &DatasetOptions {
        &self.options
    }
}

/// One image's detections (boxes in network pixels, class indices) as COCO results: boxes
/// mapped to the original image's pixels, clipped to it, as `[x, y, width, height]`; classes
/// mapped to category ids. A class outside the map, or a box that is not finite with
/// `x2 >= x1` and `y2 >= y1`, is an error.
pub fn detections_to_results(
    detections: &[Detection],
    image_id: i64,
    letterbox: &Letterbox,
    categories: &CategoryMap,
) -> Result<Vec<BboxResult>> {
    detections
        .iter()
        .map(|d| {
            let category_id = categories.category_id(d.class as usize).ok_or_else(|| {
                Error::invalid(format!(
                    "detection class {} is not one of the {} classes",
                    d.class,
                    categories.len()
                ))
            })?;
            let [x1, y1, x2, y2] = d.bbox;
            if !(d.score.is_finite() && d.bbox.iter().all(|v| v.is_finite()) && x2 >= x1 && y2 >= y1) {
                return Err(Error::invalid(format!(
                    "detection {:?} (score {}) is not a finite box with x2 >= x1 and y2 >= y1",
                    d.bbox, d.score
                )));
            }
            let [x1, y1, x2, y2] = letterbox.to_original_f64(d.bbox);
            Ok(BboxResult {
                image_id,
                category_id,
                bbox: [x1, y1, x2 - x1, y2 - y1],
                score: f64::from(d.score),
            })
        })
        .collect()
}

/// The widest and tallest image a dataset decodes (16,384 px a side).
pub const MAX_IMAGE_SIDE: u32 = 16_384;
/// The most memory one image's decoding may take (512 MiB, the `image` crate's default).
pub const MAX_IMAGE_BYTES: u64 = 512 << 20;

/// The decoder limits of every image a dataset reads: a file whose header claims more is refused
/// before its pixels are allocated.
fn image_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_BYTES);
    limits
}

/// Decodes an image file (PNG, JPEG, ...) into 8-bit RGB within the dataset's limits
/// ([`MAX_IMAGE_SIDE`] a side, [`MAX_IMAGE_BYTES`] of decoding memory; a header that claims
/// more is refused before the pixels are allocated): a grey image has its channel replicated,
/// an alpha channel is dropped.
pub fn read_rgb(path: impl AsRef<Path>) -> Result<image::RgbImage> {
    let path = path.as_ref();
    let mut reader = image::ImageReader::open(path)
        .and_then(|reader| reader.with_guessed_format())
        .map_err(|e| Error::io(path, e))?;
    reader.limits(image_limits());
    Ok(reader
        .decode()
        .map_err(|e| Error::format(path.display().to_string(), format!("cannot decode the image: {e}")))?
        .into_rgb8())
}

/// An image's letterboxed pixels (without padding) and its letterbox.
type Decoded = (Vec<u8>, Letterbox);

fn decode_letterboxed(dir: &Path, image: &Image, input_size: u32) -> Result<Decoded> {
    if image.file_name.is_empty() {
        return Err(Error::format(
            dir.display().to_string(),
            format!("image {} has no file_name", image.id),
        ));
    }
    let path = dir.join(&image.file_name);
    let source = || path.display().to_string();
    let rgb = read_rgb(&path)?;
    let letterbox = Letterbox::new(rgb.width(), rgb.height(), input_size)
        .map_err(|_| Error::format(source(), "the image has no pixels"))?;
    let size = (letterbox.resized_width, letterbox.resized_height);
    let resized = if rgb.dimensions() == size {
        rgb
    } else {
        // Triangle (bilinear) widens its support when shrinking, so it averages, not aliases.
        imageops::resize(&rgb, size.0, size.1, FilterType::Triangle)
    };
    Ok((resized.into_raw(), letterbox))
}

/// An annotation's `[x, y, w, h]` as a training target: clipped to the image, mapped to network
/// pixels, with whether clipping changed it; `None` when nothing of it is left.
fn target_box(bbox: [f64; 4], letterbox: &Letterbox) -> Option<([f32; 4], bool)> {
    let (w, h) = (f64::from(letterbox.width), f64::from(letterbox.height));
    let raw = [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]];
    let clipped = [
        raw[0].clamp(0.0, w),
        raw[1].clamp(0.0, h),
        raw[2].clamp(0.0, w),
        raw[3].clamp(0.0, h),
    ];
    let b = letterbox.to_network_f64(clipped);
    (b[2] > b[0] && b[3] > b[1]).then_some((b, clipped != raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longer_side_fills_the_input_and_the_aspect_ratio_is_kept() {
        let lb = Letterbox::new(640, 480, 128).unwrap();
        assert_eq!((lb.resized_width(), lb.resized_height()), (128, 96));
        let lb = Letterbox::new(333, 500, 128).unwrap();
        // 333 * 128 / 500 = 85.248
        assert_eq!((lb.resized_width(), lb.resized_height()), (85, 128));
        let lb = Letterbox::new(3, 1000, 128).unwrap();
        assert_eq!(
            (lb.resized_width(), lb.resized_height()),
            (1, 128),
            "never below one pixel"
        );
        let lb = Letterbox::new(50, 20, 512).unwrap();
        assert_eq!(
            (lb.resized_width(), lb.resized_height()),
            (512, 205),
            "upscaled: 204.8 rounds up"
        );
        assert!(Letterbox::new(0, 10, 128).is_err());
        assert!(Letterbox::new(10, 10, 0).is_err());
    }

    #[test]
    fn scales_are_exact_per_axis() {
        let lb = Letterbox::new(333, 500, 128).unwrap();
        assert_eq!(lb.scale(), (85.0 / 333.0, 128.0 / 500.0));
        assert_eq!(lb.to_network([0.0, 0.0, 333.0, 500.0]), [0.0, 0.0, 85.0, 128.0]);
        assert_eq!(lb.to_original([0.0, 0.0, 85.0, 128.0]), [0.0, 0.0, 333.0, 500.0]);
    }

    #[test]
    fn to_original_clips_to_the_image() {
        let lb = Letterbox::new(200, 100, 100).unwrap();
        assert_eq!(lb.to_original([-5.0, -1.0, 120.0, 90.0]), [0.0, 0.0, 200.0, 100.0]);
    }

    #[test]
    fn targets_are_clipped_and_empty_boxes_dropped() {
        let lb = Letterbox::new(100, 50, 200).unwrap();
        assert_eq!(
            target_box([10.0, 5.0, 20.0, 10.0], &lb),
            Some(([20.0, 10.0, 60.0, 30.0], false))
        );
        assert_eq!(
            target_box([90.0, 40.0, 20.0, 20.0], &lb),
            Some(([180.0, 80.0, 200.0, 100.0], true))
        );
        assert_eq!(target_box([10.0, 5.0, 0.0, 10.0], &lb), None);
        assert_eq!(target_box([100.0, 5.0, 10.0, 10.0], &lb), None, "wholly outside");
    }

    #[test]
    fn categories_map_by_sorted_id() {
        let cat = |id: i64, name: &str| Category {
            id,
            name: name.into(),
            supercategory: String::new(),
        };
        let map = CategoryMap::new(&[cat(90, "toothbrush"), cat(1, "person"), cat(3, "car")]).unwrap();
        assert_eq!(map.category_ids(), &[1, 3, 90]);
        assert_eq!((map.class_of(90), map.class_of(2)), (Some(2), None));
        assert_eq!(
            (map.category_id(1), map.name(1), map.category_id(3)),
            (Some(3), Some("car"), None)
        );
        assert!(CategoryMap::new(&[cat(1, "a"), cat(1, "b")]).is_err());
    }
}
