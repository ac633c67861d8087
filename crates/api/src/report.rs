//! The pod-level contract between the operator and the model-watcher, re-exported from
//! `kinfer_contract` (where the watcher's and the operator's code both find it): the analysis
//! report the watcher writes in its pod's `kinfer.dev/analysis` annotation, the labels every
//! kinfer pod carries, and the reasons both sides put on Events.

pub use kinfer_contract::pod::{INFERENCE_SERVICE_LABEL, MODEL_LABEL};
/// Event reasons (re-exported from the contract crate, where the runtime uses them too).
pub use kinfer_contract::reasons;
pub use kinfer_contract::report::{AnalysisPhase, AnalysisReport, GateFigures, Verdict};

/// Exit code of the verification Job's two checks when the artifact is refused
/// (`kinfer_contract::exit::REFUSED`).
pub const EXIT_REFUSED: i32 = kinfer_contract::exit::REFUSED;
