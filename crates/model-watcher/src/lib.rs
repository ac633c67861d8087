//! The kinfer model-watcher library, used by the `kinfer-watcher` sidecar binary.
//!
//! Today it holds [`signature`]: offline verification of OpenSSF model-signing bundles (the
//! `model_signing` PyPI tool's format) against trusted P-256 / P-384 public keys. Fetching,
//! the numerical gate and in-pod analysis (issue 5) will join it here.

pub mod signature;
