//! The detector: the small RetinaNet (docs/ARCHITECTURE.md) over [`crate::nn::Engine`], and its training
//! loss.

pub mod checkpoint;
mod detect;
mod faces_gpu;
mod loss;
pub mod retinaface;
mod retinanet;
pub mod torchvision;
mod torchvision_gpu;

pub use crate::ops::ohem::Ohem;
pub use detect::{DetectEngine, Detector, PreparedDetector, detect_dataset, evaluate_dataset};
pub use faces_gpu::PreparedFaces;
pub use loss::{AnchorSet, ClassLoss, DetectionLoss, EngineLoss, HostLoss, LossEngine, LossValues};
pub use retinaface::{Face, LayerTime, RetinaFace, RetinaFaceConfig};
pub use retinanet::{
    MAX_CHANNELS, MAX_CLASSES, MAX_HEAD_CONVS, MAX_INPUT_SIZE, MAX_PARAMETERS, ParamSpec, RetinaNet, RetinaNetConfig,
    Tape,
};
pub use torchvision::{TorchvisionConfig, TorchvisionRetinaNet};
pub use torchvision_gpu::PreparedTorchvision;
