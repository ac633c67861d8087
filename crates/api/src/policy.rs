//! The decision policy of an InferenceService (`spec.policy`): thresholds on one output's score
//! mapped to labels, returned as an extra `decision` output, and the sampled decision log.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Threshold classification of one output, returned as an extra `decision` output.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DecisionPolicy {
    /// The model output (a score per batch row) the thresholds apply to.
    pub output: String,
    /// Checked from the highest `min` down; the first with `score >= min` gives the label. A
    /// score that is NaN or infinite gets the reserved label `invalid`.
    #[x_kube(validation = Rule::new("self.size() > 0 && self.size() <= 7").message("policy.thresholds must have 1 to 7 entries"))]
    #[x_kube(validation = Rule::new("self.all(t, t.label != 'invalid')").message("policy label 'invalid' is reserved for NaN or infinite scores"))]
    pub thresholds: Vec<Threshold>,
    /// Label when no threshold matches.
    #[serde(default = "default_label")]
    #[x_kube(validation = Rule::new("self != 'invalid'").message("policy label 'invalid' is reserved for NaN or infinite scores"))]
    pub default: String,
    /// The sampled decision log: one JSON line per sampled request with the request id, the
    /// model version and its artifact digest, the labels, the scores and the latency (the audit
    /// trail of which version decided what). Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_log: Option<DecisionLog>,
}

/// Where and how often decisions are logged.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DecisionLog {
    /// Fraction of requests logged, between 0 and 1 (every 1/rate-th request).
    #[serde(default = "default_sample_rate")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("policy.decisionLog.sampleRate must be between 0 and 1"))]
    pub sample_rate: f64,
    /// `stdout`: JSON lines in the runtime container's log, next to its own log lines (tell them
    /// apart by `"kind":"decision"`), for the cluster's log collector (`kubectl logs -c
    /// runtime`). `file`: `/var/log/kinfer/decisions.jsonl` on the pod's `decision-log` volume
    /// (an emptyDir), rotated at 64 MiB with one previous file kept, for a log-shipping sidecar.
    #[serde(default)]
    pub sink: DecisionLogSink,
}

/// The decision log's destination.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum DecisionLogSink {
    /// The runtime container's standard output.
    #[default]
    Stdout,
    /// A file on the pod's `decision-log` volume.
    File,
}

fn default_sample_rate() -> f64 {
    1.0
}

/// One threshold of a decision policy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Threshold {
    /// Scores at or above this get `label`.
    pub min: f64,
    /// The label, e.g. `block`.
    pub label: String,
}

fn default_label() -> String {
    "allow".into()
}
