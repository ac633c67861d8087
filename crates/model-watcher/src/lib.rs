//! The kinfer model-watcher library, used by the `kinfer-watcher` sidecar binary.
//!
//! Today it holds [`fetch`] (atomic, resumable, content-addressed downloads from any
//! S3-compatible store) and [`signature`] (offline verification of OpenSSF model-signing bundles,
//! the `model_signing` PyPI tool's format, against trusted P-256 / P-384 public keys). The
//! numerical gate and in-pod analysis (issue 5) will join them here.

pub mod fetch;
pub mod signature;
