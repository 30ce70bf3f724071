//! The one error type of `fnmesh-core`, and the table of wire error codes ([`codes`]).
//!
//! Every variant is mapped one to one onto a Python exception class by the binding
//! (`fnmesh-py/src/errors.rs`), so adding a variant means adding its class too.

pub mod codes;

pub use codes::ErrorCode;

/// Errors produced by the fnmesh core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A frame is not valid JSON, is not an object, has no string `type`, or a known message
    /// lacks a required field or has a field of the wrong shape.
    #[error("malformed frame: {0}")]
    MalformedFrame(String),

    /// A frame exceeds the configured size limit.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Size of the offending frame in bytes.
        size: usize,
        /// The limit in force.
        limit: usize,
    },

    /// Under the `reject` conflict policy, another owner already serves this function.
    #[error(
        "function '{function_id}' in namespace '{namespace}' is already registered by '{owner}'"
    )]
    FunctionConflict {
        /// Namespace of the function.
        namespace: String,
        /// Id of the function.
        function_id: String,
        /// The owner that keeps the function.
        owner: String,
    },

    /// Another live connection already registered a worker with this name in this namespace.
    #[error("worker '{name}' in namespace '{namespace}' is already connected as '{owner}'")]
    WorkerConflict {
        /// Namespace of the worker.
        namespace: String,
        /// The worker name.
        name: String,
        /// Id of the live connection that keeps the name.
        owner: String,
    },

    /// A namespace that is present but blank (empty or whitespace only).
    #[error("namespace must not be blank")]
    InvalidNamespace,

    /// An argument that can never be valid (an empty function id, for example).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// The wire error code for this error, as used in `ErrorBody.code` and
    /// `registrationrejected.code`.
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }

    /// The wire error code for this error, from the table of [`ErrorCode`]s.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Error::MalformedFrame(_) => ErrorCode::DeserializationError,
            Error::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Error::FunctionConflict { .. } => ErrorCode::FunctionNamespaceConflict,
            Error::WorkerConflict { .. } => ErrorCode::WorkerNamespaceConflict,
            Error::InvalidNamespace => ErrorCode::InvalidNamespace,
            Error::InvalidArgument(_) => ErrorCode::InvalidArguments,
        }
    }
}

/// Result alias used across the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;
