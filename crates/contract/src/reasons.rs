//! Reasons on Events, conditions and reports, stable so users can grep them
//! (`kubectl get events --field-selector reason=…`) and so the operator, the model-watcher and the
//! runtime say the same thing for the same cause.

/// A new version serves (Normal).
pub const PROMOTED: &str = "Promoted";
/// A version passed its analysis window and stays (Normal).
pub const ANALYSIS_PASSED: &str = "AnalysisPassed";
/// The artifact could not be fetched (Warning; retried).
pub const FETCH_FAILED: &str = "FetchFailed";
/// The artifact is larger than the models volume allows one artifact (Warning; refused before
/// anything is downloaded).
pub const ARTIFACT_TOO_LARGE: &str = "ArtifactTooLarge";
/// The fetched artifact's manifest digest differs from the one its verification recorded
/// (`status.digest` of the ModelVersion): the bytes under the prefix changed after they were
/// verified (Warning; refused).
pub const ARTIFACT_CHANGED: &str = "ArtifactChanged";
/// The signature bundle or a file digest does not hold (Warning; refused).
pub const SIGNATURE_INVALID: &str = "SignatureInvalid";
/// The artifact has no signature but the ModelVersion allows it (Warning; served).
pub const UNSIGNED: &str = "Unsigned";
/// The runtime could not load the model (Warning; refused).
pub const LOAD_FAILED: &str = "LoadFailed";
/// The golden set does not match within atol/rtol/minAgreement (Warning; refused).
pub const NUMERICAL_MISMATCH: &str = "NumericalMismatch";
/// The golden set cannot be read: not an `.npz`, a malformed, 0-d or oversized array, or
/// arrays with different sample counts (Warning; refused).
pub const GOLDEN_SET_INVALID: &str = "GoldenSetInvalid";
/// Shadow traffic disagreed with the serving version (Warning; refused).
pub const SHADOW_DISAGREEMENT: &str = "ShadowDisagreement";
/// p99 over the ratio or the budget (Warning; rolled back).
pub const LATENCY_REGRESSION: &str = "LatencyRegression";
/// Error rate over `maxErrorRate` (Warning; rolled back).
pub const ERROR_RATE_REGRESSION: &str = "ErrorRateRegression";
/// Output distribution moved (PSI over `maxScore`) (Warning; rolled back).
pub const DRIFT_DETECTED: &str = "DriftDetected";
/// A version was swapped back out (Warning).
pub const ROLLED_BACK: &str = "RolledBack";
/// The runtime restarted during a version's analysis and lost it: the candidate counts as
/// failed and the last judged version serves again (Warning; rolled back).
pub const RUNTIME_CRASHED: &str = "RuntimeCrashed";
/// The analysis reached its longest window without evidence either way: the rollout holds where
/// it is (Warning).
pub const ANALYSIS_INCONCLUSIVE: &str = "AnalysisInconclusive";
/// A rollout stopped where it is: a version regressed and `autoRollback` is off (Warning).
pub const ROLLOUT_STOPPED: &str = "RolloutStopped";
