//! Checkpoints: a model directory holds `config.json` (the [`RetinaNetConfig`]) and
//! `model.safetensors` (the weights, f32, under the names of [`RetinaNet::params`]: convolution
//! weights `[out, in, kh, kw]`, biases and GroupNorm parameters `[C]`, so that PyTorch's
//! `safetensors.torch.load_file` reads them as a module's state dict). A training run adds
//! `optimizer.safetensors`: the SGD momentum of every parameter under the same names, and the
//! step in the file's metadata.
//!
//! Every file is written to a temporary file, synced and renamed into place: a crash or Ctrl-C
//! never leaves a broken checkpoint. Loading checks every tensor's presence, type and shape
//! against the configuration and names the file and the tensor when one is wrong.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::coco::write_file;
use crate::error::{Error, Result};
use crate::model::{ParamSpec, RetinaNet, RetinaNetConfig};
use crate::nn::Shape;

/// The configuration file of a model directory.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file of a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The optimiser state file of a training directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

/// The shape a parameter is stored with: `[C]` for `[1, C, 1, 1]`, else NCHW.
fn stored_shape(shape: Shape) -> Vec<usize> {
    if shape.n == 1 && shape.h == 1 && shape.w == 1 {
        vec![shape.c]
    } else {
        vec![shape.n, shape.c, shape.h, shape.w]
    }
}

/// Serialises `values` (in [`RetinaNet::params`] order) as safetensors bytes.
pub fn to_safetensors(net: &RetinaNet, values: &[Vec<f32>], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    if values.len() != net.params().len() {
        return Err(Error::shape(
            "checkpoint",
            format!("{} tensors for a network of {}", values.len(), net.params().len()),
        ));
    }
    let bytes: Vec<&[u8]> = values.iter().map(|v| bytemuck::cast_slice(v.as_slice())).collect();
    let mut views = Vec::with_capacity(values.len());
    for ((spec, data), v) in net.params().iter().zip(&bytes).zip(values) {
        if v.len() != spec.shape.len() {
            return Err(Error::shape(
                "checkpoint",
                format!(
                    "{} has {} values, its shape {} needs {}",
                    spec.name,
                    v.len(),
                    spec.shape,
                    spec.shape.len()
                ),
            ));
        }
        let view = TensorView::new(Dtype::F32, stored_shape(spec.shape), data)
            .map_err(|e| Error::invalid(format!("checkpoint tensor {}: {e}", spec.name)))?;
        views.push((spec.name.clone(), view));
    }
    safetensors::serialize(views, Some(metadata)).map_err(|e| Error::invalid(format!("writing safetensors: {e}")))
}

/// What a safetensors file of a network holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Contents {
    /// One tensor per parameter, in [`RetinaNet::params`] order.
    pub values: Vec<Vec<f32>>,
    /// The file's metadata.
    pub metadata: HashMap<String, String>,
}

/// Reads `net`'s parameters from safetensors bytes (`source` names them in errors), with the
/// file's metadata.
pub fn from_safetensors(net: &RetinaNet, bytes: &[u8], source: &str) -> Result<Contents> {
    read_tensors(net.params(), bytes, source)
}

/// Reads the tensors of `specs` (each F32 of its shape, finite, no other tensor in the file)
/// from safetensors bytes (`source` names them in errors), with the file's metadata.
pub(crate) fn read_tensors(specs: &[ParamSpec], bytes: &[u8], source: &str) -> Result<Contents> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(source, format!("not a readable safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::format(source, format!("not a readable safetensors file: {e}")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let mut values = Vec::with_capacity(specs.len());
    for spec in specs {
        let view = file.tensor(&spec.name).map_err(|_| {
            Error::format(
                source,
                format!(
                    "tensor `{}` is missing: the weights do not belong to this configuration",
                    spec.name
                ),
            )
        })?;
        let want = stored_shape(spec.shape);
        if view.dtype() != Dtype::F32 || view.shape() != want.as_slice() {
            return Err(Error::format(
                source,
                format!(
                    "tensor `{}` is {:?} {:?}, the configuration needs F32 {want:?}",
                    spec.name,
                    view.dtype(),
                    view.shape()
                ),
            ));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::format(
                source,
                format!("tensor `{}` holds a non-finite value at {i}", spec.name),
            ));
        }
        values.push(data);
    }
    let expected = specs.len();
    if file.len() != expected {
        return Err(Error::format(
            source,
            format!(
                "{} tensors, the configuration has {expected}: the weights do not belong to it",
                file.len()
            ),
        ));
    }
    Ok(Contents { values, metadata })
}

/// A model directory's paths.
#[derive(Clone, Debug)]
pub struct ModelDir(pub PathBuf);

impl ModelDir {
    /// `config.json`.
    pub fn config(&self) -> PathBuf {
        self.0.join(CONFIG_FILE)
    }

    /// `model.safetensors`.
    pub fn weights(&self) -> PathBuf {
        self.0.join(WEIGHTS_FILE)
    }

    /// `optimizer.safetensors`.
    pub fn optimizer(&self) -> PathBuf {
        self.0.join(OPTIMIZER_FILE)
    }

    /// `optimizer.safetensors.next`: a training checkpoint's optimizer state, written before its
    /// weights and renamed into place after them (see [`crate::train::Trainer::save`]).
    pub fn pending_optimizer(&self) -> PathBuf {
        self.0.join(format!("{OPTIMIZER_FILE}.next"))
    }
}

/// The most bytes of a `config.json` that [`load_model`] reads (16 MiB); a larger file is
/// refused before it is read.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;
/// The most bytes of a safetensors header (the `safetensors` crate's own limit, 100 MB).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Reads `path` when it holds at most `max` bytes (`what` names it in the error); a larger file
/// is refused before anything is read or allocated.
pub(crate) fn read_limited(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if len > max {
        return Err(Error::format(
            path.display().to_string(),
            format!("{len} bytes, more than {what} can hold ({max} bytes at most)"),
        ));
    }
    std::fs::read(path).map_err(|e| Error::io(path, e))
}

/// The most bytes a safetensors file of `net`'s parameters (weights or momentum) can hold:
/// the f32 values, the header's length and the largest header.
pub(crate) fn max_tensor_file_bytes(net: &RetinaNet) -> u64 {
    4 * net.num_scalars() as u64 + 8 + MAX_HEADER_BYTES
}

/// The JSON header of a safetensors file, read without reading the tensors (at most
/// [`MAX_HEADER_BYTES`]).
pub(crate) fn read_safetensors_header(path: &Path) -> Result<serde_json::Value> {
    use std::io::Read;
    let source = || path.display().to_string();
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|_| {
        Error::format(
            source(),
            "not a safetensors file: shorter than its 8-byte header length",
        )
    })?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(Error::format(
            source(),
            format!("a safetensors header of {len} bytes, more than the limit of {MAX_HEADER_BYTES}"),
        ));
    }
    let mut header = Vec::new();
    file.take(len)
        .read_to_end(&mut header)
        .map_err(|e| Error::io(path, e))?;
    if header.len() as u64 != len {
        return Err(Error::format(
            source(),
            format!("the header claims {len} bytes but the file holds {}", header.len()),
        ));
    }
    serde_json::from_slice(&header).map_err(|e| Error::format(source(), format!("not a safetensors header: {e}")))
}

/// Writes `config.json` and `model.safetensors` into `dir` (created if needed).
pub fn save_model(dir: impl AsRef<Path>, net: &RetinaNet, values: &[Vec<f32>]) -> Result<()> {
    write_model(dir.as_ref(), net, values, None)
}

/// [`save_model`], recording the training step the weights are at (when there is one) in the
/// weights' metadata, where a resumed run checks it against the optimizer state's.
pub(crate) fn write_model(dir: &Path, net: &RetinaNet, values: &[Vec<f32>], step: Option<usize>) -> Result<()> {
    let dir = ModelDir(dir.to_path_buf());
    std::fs::create_dir_all(&dir.0).map_err(|e| Error::io(&dir.0, e))?;
    let config = serde_json::to_vec_pretty(net.config()).expect("the configuration serialises");
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), "retina-wgpu RetinaNet".to_string());
    metadata.insert(
        "config".to_string(),
        String::from_utf8(config.clone()).expect("JSON is UTF-8"),
    );
    if let Some(step) = step {
        metadata.insert("step".to_string(), step.to_string());
    }
    write_file(&dir.weights(), &to_safetensors(net, values, metadata)?)?;
    Ok(write_file(&dir.config(), &config)?)
}

/// The training step a safetensors file's metadata records, if it records one.
pub(crate) fn recorded_step(path: &Path) -> Result<Option<usize>> {
    let header = read_safetensors_header(path)?;
    match header.get("__metadata__").and_then(|m| m.get("step")) {
        None => Ok(None),
        Some(step) => step
            .as_str()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| Error::format(path.display().to_string(), format!("metadata `step` is {step}"))),
    }
}

/// Completes a training checkpoint that a killed process left half-committed: the optimizer
/// state of a save is written to `optimizer.safetensors.next` before the weights and renamed
/// into place after them, so when `.next` records the step the weights record, the weights of
/// that save are in place and `.next` is renamed now; any other `.next` is a save that never
/// reached its weights, and is removed. Then the weights and the optimizer state must record
/// the same step (checkpoints written before steps were recorded in the weights pass).
pub(crate) fn finish_pending_save(dir: &Path) -> Result<()> {
    let paths = ModelDir(dir.to_path_buf());
    let pending = paths.pending_optimizer();
    let weights_step = recorded_step(&paths.weights())?;
    if pending.exists() {
        let pending_step = recorded_step(&pending).ok().flatten();
        if pending_step.is_some() && pending_step == weights_step {
            std::fs::rename(&pending, paths.optimizer()).map_err(|e| Error::io(&pending, e))?;
            sync_dir(dir);
        } else {
            std::fs::remove_file(&pending).map_err(|e| Error::io(&pending, e))?;
        }
    }
    let optimizer_step = recorded_step(&paths.optimizer())?;
    if let (Some(w), Some(o)) = (weights_step, optimizer_step)
        && w != o
    {
        return Err(Error::format(
            dir.display().to_string(),
            format!("inconsistent checkpoint: the weights are at step {w} but the optimizer state at step {o}"),
        ));
    }
    Ok(())
}

/// Makes a rename in `dir` durable (best effort: not every platform can sync a directory).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Reads a model directory: the network of its `config.json` and the weights of its
/// `model.safetensors`.
pub fn load_model(dir: impl AsRef<Path>) -> Result<(RetinaNet, Vec<Vec<f32>>)> {
    let dir = ModelDir(dir.as_ref().to_path_buf());
    let config_path = dir.config();
    let text = read_limited(&config_path, MAX_CONFIG_BYTES, "a model configuration")?;
    let config: RetinaNetConfig = serde_json::from_slice(&text)
        .map_err(|e| Error::format(config_path.display().to_string(), format!("invalid configuration: {e}")))?;
    let net = RetinaNet::new(config).map_err(|e| Error::format(config_path.display().to_string(), e.to_string()))?;
    let weights = dir.weights();
    let bytes = read_limited(&weights, max_tensor_file_bytes(&net), "this network's weights")?;
    let values = from_safetensors(&net, &bytes, &weights.display().to_string())?.values;
    Ok((net, values))
}
