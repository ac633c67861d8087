//! The one error type of a request, and its mapping to HTTP statuses and gRPC codes
//! (DESIGN.md §5): bad input 400 / INVALID_ARGUMENT, unknown model 404 / NOT_FOUND, overload 503
//! with `Retry-After` / RESOURCE_EXHAUSTED, deadline 504 / DEADLINE_EXCEEDED, model failure 500 /
//! INTERNAL, shutting down or not ready 503 / UNAVAILABLE.

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
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

    /// The gRPC status code.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::Invalid(_) => tonic::Code::InvalidArgument,
            Self::NotFound(_) => tonic::Code::NotFound,
            Self::Overloaded(_) => tonic::Code::ResourceExhausted,
            Self::Unavailable(_) => tonic::Code::Unavailable,
            Self::Deadline(_) => tonic::Code::DeadlineExceeded,
            Self::Internal(_) => tonic::Code::Internal,
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

impl From<InferError> for tonic::Status {
    fn from(e: InferError) -> Self {
        tonic::Status::new(e.grpc_code(), e.to_string())
    }
}
