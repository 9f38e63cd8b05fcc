//! The crate's error type.

/// Everything that can go wrong reading, checking or evaluating COCO data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A parameter is outside its documented range (evaluation parameters, a result that names
    /// an image or category the ground truth does not have, ...).
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),

    /// A file's content is not what it must be (malformed JSON, a missing field, an id that is
    /// not defined, a box with a negative size, ...).
    #[error("{path}: {detail}")]
    Format {
        /// The file (or the name of the in-memory input).
        path: String,
        /// What is wrong, and where in the file when that is known.
        detail: String,
    },

    /// Reading or writing a file failed.
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
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidParameter(msg.into())
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
}
