//! [`ClientError`]: what a call or the connection of the worker client can fail with.

use crate::protocol::{ErrorBody, ErrorCode};

/// Errors of the worker client. [`ClientError::code`] gives the iii code of each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The called function (or the engine on its behalf) answered with an error.
    #[error("{}: {}", .0.code, .0.message)]
    Invocation(ErrorBody),

    /// No answer within the call's timeout (code `TIMEOUT`). A late answer is ignored.
    #[error("invocation timed out after {0} ms")]
    Timeout(u64),

    /// The connection the call was sent on closed before the answer came
    /// (code `invocation_stopped`).
    #[error("invocation stopped: {0}")]
    Stopped(String),

    /// The client was shut down (code `SHUTDOWN`).
    #[error("the client is shut down")]
    Shutdown,

    /// The first connection could not be made in time.
    #[error("could not connect to {url}: {reason}")]
    Connect {
        /// The engine URL.
        url: String,
        /// The last failure.
        reason: String,
    },

    /// The engine refused this worker for good (section 2.11); the client stopped.
    #[error("registration rejected by the engine ({code}) in namespace '{namespace}'")]
    Rejected {
        /// The `registrationrejected` code, e.g. `WORKER_NAMESPACE_CONFLICT`.
        code: String,
        /// The namespace of the rejection.
        namespace: String,
    },

    /// An argument that can never be valid (a bad URL, an empty function id).
    #[error(transparent)]
    Core(#[from] crate::Error),
}

impl ClientError {
    /// The iii error code: the remote code for [`ClientError::Invocation`], otherwise the code
    /// the iii SDKs produce locally.
    pub fn code(&self) -> &str {
        match self {
            ClientError::Invocation(body) => &body.code,
            ClientError::Timeout(_) => ErrorCode::Timeout.as_str(),
            ClientError::Stopped(_) => ErrorCode::InvocationStopped.as_str(),
            ClientError::Shutdown => ErrorCode::Shutdown.as_str(),
            ClientError::Connect { .. } => ErrorCode::ConnectionFailed.as_str(),
            ClientError::Rejected { code, .. } => code,
            ClientError::Core(e) => e.code(),
        }
    }

    /// The error as an [`ErrorBody`] (what a handler would send back to its own caller).
    pub fn to_error_body(&self) -> ErrorBody {
        match self {
            ClientError::Invocation(body) => body.clone(),
            other => ErrorBody::new(other.code(), other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes() {
        assert_eq!(ClientError::Timeout(5).code(), "TIMEOUT");
        assert_eq!(
            ClientError::Stopped("x".into()).code(),
            "invocation_stopped"
        );
        let e = ClientError::Invocation(ErrorBody::new("boom", "bad"));
        assert_eq!(e.code(), "boom");
        assert_eq!(e.to_string(), "boom: bad");
    }
}
