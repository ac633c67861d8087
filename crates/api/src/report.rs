//! The pod-level contract between the operator and the model-watcher: what the watcher writes in
//! its pod's `kinfer.dev/analysis` annotation (an [`AnalysisReport`] as JSON), the labels and
//! environment every kinfer pod carries, and the reasons both sides put on Events.
//!
//! The operator asks a pod for a version by setting `kinfer.dev/target-version`; the watcher
//! answers with a report whose `version` is that version and, once decided, a `verdict`. The
//! `kinfer.dev/serving-version` annotation always says what the runtime serves now.

use serde::{Deserialize, Serialize};

use crate::inference_service::AnalysisFigures;

/// Pod label naming the InferenceService a pod belongs to.
pub const INFERENCE_SERVICE_LABEL: &str = "kinfer.dev/inferenceservice";
/// Pod label with the logical model name (for dashboards).
pub const MODEL_LABEL: &str = "kinfer.dev/model";
/// Exit code of the verification Job's two checks (`kinfer-watcher check`, `kinfer-runtime
/// --check`) when the artifact is refused: a property of the artifact, so the Job's
/// `podFailurePolicy` fails it at once instead of retrying. Other failures exit 1 and are retried.
pub const EXIT_REFUSED: i32 = kinfer_contract::exit::REFUSED;

/// Event reasons, stable so users can grep them (`kubectl get events --field-selector reason=…`).
pub mod reasons {
    /// A new version serves (Normal).
    pub const PROMOTED: &str = "Promoted";
    /// A version passed its analysis window and stays (Normal).
    pub const ANALYSIS_PASSED: &str = "AnalysisPassed";
    /// The artifact could not be fetched (Warning; retried).
    pub const FETCH_FAILED: &str = "FetchFailed";
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
    /// A rollout stopped where it is: a version regressed and `autoRollback` is off (Warning).
    pub const ROLLOUT_STOPPED: &str = "RolloutStopped";
}

/// How far the watcher has got with the version it was asked for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AnalysisPhase {
    /// Asked for, nothing done yet.
    #[default]
    Pending,
    /// Downloading from S3 (retrying when the store is unavailable).
    Fetching,
    /// Checking the signature bundle and file digests.
    Verifying,
    /// Staged in the runtime; running the golden set.
    Validating,
    /// Mirroring live traffic to the staged version.
    Shadowing,
    /// Promoted; comparing against the previous version's baseline.
    Analysing,
    /// A verdict is in.
    Done,
}

/// The outcome for one version in one pod.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Promoted and kept after the analysis window.
    Passed,
    /// Never served: fetch, signature, load, golden set or shadow refused it.
    Refused,
    /// Served, regressed, and was swapped back to the previous version.
    RolledBack,
    /// Served and regressed, and kept serving because `autoRollback` is off: the rollout stops
    /// where it is (nothing more is promoted) until the spec changes or a retry is asked for.
    Regressed,
}

/// Golden-set figures of the numerical gate.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GateFigures {
    /// Samples evaluated.
    pub samples: u64,
    /// Largest absolute error against the reference outputs.
    pub max_abs_error: f64,
    /// Largest relative error against the reference outputs.
    pub max_rel_error: f64,
    /// Fraction of samples whose decision (arg-max or threshold) matched.
    pub agreement: f64,
}

/// What the watcher writes in the `kinfer.dev/analysis` pod annotation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisReport {
    /// The version this report is about (the pod's target version).
    pub version: String,
    /// The version serving before this one, kept warm for rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// Where the watcher is.
    pub phase: AnalysisPhase,
    /// Set once `phase` is `Done`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// A reason from [`reasons`] when refused or rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human sentence with the figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Content digest of the artifact (`sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Fingerprint of the key that signed it (`sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// Golden-set figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateFigures>,
    /// Shadow agreement with the serving version, when shadowing ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow_agreement: Option<f64>,
    /// Analysis-window figures (p99 and baseline p99 in seconds, error rate, PSI, requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figures: Option<AnalysisFigures>,
    /// RFC 3339 time of the last update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<String>,
}

impl AnalysisReport {
    /// Parses the annotation value; `None` when absent or not a report (a hand-edited pod).
    pub fn from_annotation(value: Option<&str>) -> Option<Self> {
        value.and_then(|v| serde_json::from_str(v).ok())
    }

    /// Whether this report is the final answer about `version`.
    pub fn decided(&self, version: &str) -> Option<Verdict> {
        (self.version == version && self.phase == AnalysisPhase::Done)
            .then_some(self.verdict)
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_reads_verdicts() {
        let r = AnalysisReport {
            version: "v8".into(),
            previous_version: Some("v7".into()),
            phase: AnalysisPhase::Done,
            verdict: Some(Verdict::RolledBack),
            reason: Some(reasons::LATENCY_REGRESSION.into()),
            figures: Some(AnalysisFigures {
                p99: Some(0.02),
                baseline_p99: Some(0.001),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains(r#""phase":"Done""#) && s.contains(r#""verdict":"RolledBack""#));
        let back = AnalysisReport::from_annotation(Some(&s)).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.decided("v8"), Some(Verdict::RolledBack));
        assert_eq!(back.decided("v9"), None);
        assert!(AnalysisReport::from_annotation(Some("not json")).is_none());
        let pending = AnalysisReport {
            version: "v8".into(),
            phase: AnalysisPhase::Analysing,
            ..Default::default()
        };
        assert_eq!(pending.decided("v8"), None);
    }
}
