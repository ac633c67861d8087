//! Models: ONNX Runtime sessions, the loaded versions with their queues and workers (or, for
//! short unbatched runs, their session pool used on the request's own thread), the registry of
//! which version serves, the per-version statistics, the paired baseline of an analysis and the
//! ring of recent requests it may replay.

pub mod baseline;
pub mod inline;
pub mod registry;
pub mod ring;
pub mod session;
pub mod stats;
pub mod version;

use std::path::PathBuf;

use crate::tensor::TensorSpec;

/// What a loaded version is: names, tensors, whether it batches on dimension 0.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Model name.
    pub name: String,
    /// Version label.
    pub version: String,
    /// Inputs.
    pub inputs: Vec<TensorSpec>,
    /// Outputs.
    pub outputs: Vec<TensorSpec>,
    /// Every input and output has a dynamic first dimension, so requests can be stacked.
    pub batchable: bool,
    /// The file it came from.
    pub path: PathBuf,
    /// The execution provider its sessions run on (the CPU after a `--ep-fallback cpu`).
    pub provider: session::Provider,
}
