//! The one error type of a request and its status (docs/runtime.md, "Protocol"): bad input 400, unknown model
//! 404, overload 503 with `Retry-After`, deadline 504, model failure 500, shutting down or not
//! ready 503. The wire mappings (gRPC codes, HTTP bodies) live with each protocol.

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InferError {
    /// The request is malformed or does not match the model.
    #[error("{0}")]
    Invalid(String),
    /// No such model or version.
    #[error("{0}")]
    NotFound(String),
    /// The queue is full: retry later.
    #[error("{0}")]
    Overloaded(String),
    /// The request's deadline passed before it ran.
    #[error("{0}")]
    Deadline(String),
    /// The server is not ready or is shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// ONNX Runtime failed.
    #[error("{0}")]
    Internal(String),
}

impl InferError {
    /// A 400 / INVALID_ARGUMENT error.
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(msg.into())
    }

    /// The HTTP status code.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Invalid(_) => 400,
            Self::NotFound(_) => 404,
            Self::Overloaded(_) | Self::Unavailable(_) => 503,
            Self::Deadline(_) => 504,
            Self::Internal(_) => 500,
        }
    }

    /// The label used in `kinfer_requests_total{code}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "400",
            Self::NotFound(_) => "404",
            Self::Overloaded(_) | Self::Unavailable(_) => "503",
            Self::Deadline(_) => "504",
            Self::Internal(_) => "500",
        }
    }
}

/// Panics caught on the request path since the process started (`kinfer_panics_total`): each is
/// a bug that was answered with an error instead of taking other requests down with it.
pub static PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
