//! Models: ONNX Runtime sessions and their workers, the registry of loaded versions, and the
//! per-version statistics.

pub mod registry;
pub mod session;
pub mod stats;
