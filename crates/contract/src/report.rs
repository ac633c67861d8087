//! The analysis report: what the model-watcher writes in its pod's `kinfer.dev/analysis`
//! annotation ([`AnalysisReport`] as JSON, see [`crate::pod`]) and the operator reads to move a
//! rollout on. The operator asks a pod for a version by setting `kinfer.dev/target-version`; the
//! watcher answers with a report whose `version` is that version and, once decided, a
//! [`Verdict`]. A watcher that restarts reads its last report back to finish what it left.

use serde::{Deserialize, Serialize};

/// Figures from an analysis window (also the InferenceService's `status.rollout.analysis`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AnalysisFigures {
    /// p99 of the new version, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99: Option<f64>,
    /// p99 of the previous version just before the swap, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_p99: Option<f64>,
    /// Fraction of failed requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// Drift score (PSI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<f64>,
    /// Requests seen in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<i64>,
    /// With a paired baseline: the baseline's fraction of failed requests in the same window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_error_rate: Option<f64>,
    /// With a paired baseline: requests the baseline answered in the same window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_requests: Option<i64>,
    /// With a paired baseline: the typical latency ratio new / baseline (Hodges–Lehmann).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ratio: Option<f64>,
    /// Lower bound of `latencyRatio` at the analysis's confidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ratio_low: Option<f64>,
    /// Upper bound of `latencyRatio` at the analysis's confidence (absent: unbounded yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ratio_high: Option<f64>,
    /// With a paired baseline: the fraction of requests run on both versions whose decisions
    /// differed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disagreement: Option<f64>,
    /// With a paired baseline: requests run on both versions and compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairs: Option<i64>,
    /// Set when the figures are those of a replay (live traffic was too thin): recent requests
    /// run on each version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed: Option<i64>,
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
    /// Served, and the analysis found no evidence either way within its longest window (too
    /// little traffic, too much noise): kept serving, and the rollout holds where it is.
    Inconclusive,
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
    /// A reason from [`crate::reasons`] when refused or rolled back.
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
    use crate::reasons;

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
