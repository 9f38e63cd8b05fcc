//! The crate's one error type.

/// Everything that can go wrong in `retina_wgpu`.
///
/// Bad input is reported before any work is dispatched; device trouble is caught with wgpu error
/// scopes and reported here instead of through wgpu's default (panicking) handler.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A parameter is outside its documented range (alpha outside [0, 1], a negative gamma, a
    /// label outside [-2, K), a NaN in a ground-truth box, ...).
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),

    /// Two inputs that must agree in length or shape do not.
    #[error("shape mismatch in {op}: {detail}")]
    ShapeMismatch {
        /// The operation (or layer) that checked the shapes.
        op: &'static str,
        /// What was expected and what was given.
        detail: String,
    },

    /// No GPU adapter could be found.
    #[error(
        "no GPU adapter found{0}: install a GPU driver with Vulkan, Metal or DX12 support, \
         or `apt-get install mesa-vulkan-drivers` for a software Vulkan device (lavapipe), \
         or choose the CPU backend (`Backend::Cpu`, `--backend cpu`)"
    )]
    NoAdapter(String),

    /// The device could not be created from the adapter, or was lost while in use.
    #[error("GPU device lost or unusable: {0}")]
    DeviceLost(String),

    /// Memory ran out: the GPU device's for a buffer or a pipeline, or the host's for a CPU
    /// tensor or result (the message says which, and how large the request was). CPU requests
    /// over [`crate::nn::MAX_HOST_BYTES`] are refused without trying.
    #[error("out of memory: {0}")]
    OutOfMemory(String),

    /// wgpu rejected a command (a validation error); this is a bug in the crate or a buffer
    /// handed in by the host application that does not have the documented usage flags.
    #[error("GPU validation error: {0}")]
    Validation(String),

    /// Mapping a buffer for readback failed or timed out.
    #[error("GPU readback failed: {0}")]
    ReadbackFailed(String),

    /// A file's content is not what it must be (malformed JSON, a missing field, an id that is not
    /// defined, a box with a negative size, a corrupt image, ...).
    #[error("{path}: {detail}")]
    Format {
        /// The file (or the name of the in-memory input).
        path: String,
        /// What is wrong, and where in the file when that is known.
        detail: String,
    },

    /// Reading or writing a file (vectors, checkpoints, images) failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::InvalidParameter`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidParameter(msg.into())
    }

    /// Shorthand for [`Error::ShapeMismatch`].
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::ShapeMismatch {
            op,
            detail: detail.into(),
        }
    }

    /// Shorthand for [`Error::Format`].
    pub fn format(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            detail: detail.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// Converts an error captured by a wgpu error scope.
    pub(crate) fn from_wgpu(err: wgpu::Error) -> Self {
        match err {
            wgpu::Error::OutOfMemory { .. } => Error::OutOfMemory(format!("GPU: {err}")),
            wgpu::Error::Validation { description, .. } => Error::Validation(description),
            other => Error::DeviceLost(other.to_string()),
        }
    }
}

impl From<retina_coco::Error> for Error {
    /// The COCO crate's errors are the same kinds as the crate's own: a bad parameter, a file
    /// whose content is wrong, a failed read or write.
    fn from(err: retina_coco::Error) -> Self {
        match err {
            retina_coco::Error::InvalidParameter(msg) => Error::InvalidParameter(msg),
            retina_coco::Error::Format { path, detail } => Error::Format { path, detail },
            retina_coco::Error::Io { path, source } => Error::Io { path, source },
            // `retina_coco::Error` is non-exhaustive: a kind added there later still converts.
            other => Error::Format {
                path: String::new(),
                detail: other.to_string(),
            },
        }
    }
}
