//! The one error type of BitNet-Rust, with context.

use std::path::PathBuf;

/// Every fallible function in the library returns this.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file that was being read or written.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A file or buffer is not what its format says it should be.
    #[error("invalid {format} data: {msg}")]
    Format {
        /// The format being parsed (e.g. "GGUF", "safetensors", "I2_S").
        format: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A buffer or tensor has the wrong number of elements or dimensions.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An argument outside the accepted range (bad dims, unknown names, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A well-formed request we do not support yet.
    #[error("not supported yet: {0}")]
    Unsupported(String),
    /// A configuration file has a missing or absurd field.
    #[error("config error: {0}")]
    Config(String),
    /// A device (e.g. CUDA) failed or is unavailable.
    #[error("device error: {0}")]
    Device(String),
    /// Another error, with a line saying what was being done.
    /// (Display prints the whole chain on one line, so `source()` is not repeated.)
    #[error("{context}: {inner}")]
    Context {
        /// What was being done when the error happened.
        context: String,
        /// The error itself.
        inner: Box<Error>,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::Format`].
    pub fn format(format: &'static str, msg: impl Into<String>) -> Self {
        Error::Format { format, msg: msg.into() }
    }
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    /// Shorthand for [`Error::Shape`].
    pub fn shape(msg: impl Into<String>) -> Self {
        Error::Shape(msg.into())
    }
    /// Shorthand for [`Error::Unsupported`].
    pub fn unsupported(msg: impl Into<String>) -> Self {
        Error::Unsupported(msg.into())
    }
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    /// Wraps `self` with a line of context.
    pub fn context(self, context: impl Into<String>) -> Self {
        Error::Context { context: context.into(), inner: Box::new(self) }
    }
    /// The innermost error, below all context lines.
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { inner, .. } => inner.root(),
            e => e,
        }
    }
}

/// Adds context to a `Result<_, Error>`.
pub trait ResultExt<T> {
    /// Wraps the error, if any, with `context`.
    fn context(self, context: impl Into<String>) -> Result<T>;
    /// Wraps the error, if any, with a lazily built context.
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn context(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|e| e.context(context))
    }
    fn with_context<S: Into<String>>(self, f: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| e.context(f()))
    }
}

/// Returns `Err(Error::Shape)` with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure_shape {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err($crate::Error::Shape(format!($($arg)+)));
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_chain_prints_outer_then_inner() {
        let e = Error::invalid("k = 7").context("loading layer 3");
        assert_eq!(e.to_string(), "loading layer 3: invalid argument: k = 7");
        assert!(matches!(e.root(), Error::InvalidArgument(_)));
    }

    #[test]
    fn result_ext_wraps_only_errors() {
        let ok: Result<u8> = Ok(1);
        assert_eq!(ok.context("x").unwrap(), 1);
        let err: Result<u8> = Err(Error::unsupported("TL2"));
        let msg = err.with_context(|| "reading tensor w").unwrap_err().to_string();
        assert_eq!(msg, "reading tensor w: not supported yet: TL2");
    }
}
