//! The runtime's admin API (HTTP/1.1 + JSON on the pod's Unix socket): one request and one
//! answer type per endpoint, and the error body. Every call is idempotent: repeating one whose
//! answer was lost leaves the runtime as the first call did.
//!
//! | endpoint | request | answer |
//! | --- | --- | --- |
//! | `POST /admin/stage` | [`StageRequest`] | [`StageAnswer`] |
//! | `POST /admin/evaluate` | [`EvaluateRequest`] | [`EvaluateAnswer`] |
//! | `POST /admin/shadow` | [`ShadowRequest`] | [`ShadowAnswer`] |
//! | `POST /admin/baseline` | [`BaselineRequest`] | [`BaselineAnswer`] |
//! | `POST /admin/replay` | [`ReplayRequest`] | [`ReplayAnswer`] |
//! | `POST /admin/serve` (and its older name `promote`) | [`VersionRequest`] | [`ServeAnswer`] |
//! | `POST /admin/rollback` | [`VersionRequest`] (the version to go back to) | [`ServeAnswer`] |
//! | `POST /admin/unload` | [`VersionRequest`] | [`UnloadAnswer`] |
//! | `GET /admin/stats` | — | [`StatsAnswer`] |
//!
//! Errors are [`ErrorBody`] with 400 (malformed), 404 (not loaded), 409 (conflict, with a
//! [`Conflict`] code), 422 (the model does not load or evaluate).

use std::{collections::BTreeMap, path::PathBuf};

use serde::{Deserialize, Serialize};

/// Paths of the endpoints.
pub mod paths {
    /// Load and warm a version, not serving.
    pub const STAGE: &str = "/admin/stage";
    /// Run a golden set through a loaded version.
    pub const EVALUATE: &str = "/admin/evaluate";
    /// Mirror live traffic to a loaded version.
    pub const SHADOW: &str = "/admin/shadow";
    /// Answer a fraction of live requests with the previous version during an analysis.
    pub const BASELINE: &str = "/admin/baseline";
    /// Run recent requests kept in memory on both versions of the split.
    pub const REPLAY: &str = "/admin/replay";
    /// Make a loaded version serve.
    pub const SERVE: &str = "/admin/serve";
    /// The older name of [`SERVE`].
    pub const PROMOTE: &str = "/admin/promote";
    /// Make a loaded version serve again because the one serving regressed.
    pub const ROLLBACK: &str = "/admin/rollback";
    /// Free a version that does not serve.
    pub const UNLOAD: &str = "/admin/unload";
    /// What serves and each version's statistics.
    pub const STATS: &str = "/admin/stats";
}

/// `POST /admin/stage`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StageRequest {
    /// The version label.
    pub version: String,
    /// The model file.
    pub path: PathBuf,
    /// Content digest of the artifact (`sha256:…`). Staging a loaded label again with the same
    /// digest is a no-op answered 409 [`Conflict::AlreadyLoaded`]; with another digest the
    /// version is reloaded from the new bytes, unless it serves ([`Conflict::OtherBytes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// A loaded tensor's name, datatype and shape (`-1` where dynamic).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// Name in the graph.
    pub name: String,
    /// OIP datatype name.
    pub datatype: String,
    /// Dimensions.
    pub shape: Vec<i64>,
}

/// Answer to `stage`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StageAnswer {
    /// The version label.
    pub version: String,
    /// Digest the runtime recorded for it.
    #[serde(default)]
    pub digest: Option<String>,
    /// Milliseconds to load and warm.
    pub load_ms: u64,
    /// Whether requests are stacked into batches (the load probe's verdict).
    pub batching: bool,
    /// Inputs.
    pub inputs: Vec<TensorInfo>,
    /// Outputs.
    pub outputs: Vec<TensorInfo>,
}

/// A request naming one version (`serve`, `promote`, `rollback`, `unload`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VersionRequest {
    /// The version.
    pub version: String,
}

/// Answer to `serve` and `rollback`: the state after the call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServeAnswer {
    /// The version serving now.
    pub serving: String,
    /// The version serving before it, still loaded.
    #[serde(default)]
    pub previous: Option<String>,
    /// Whether this call changed what serves (false when it already served: a repeated call).
    pub changed: bool,
}

/// Answer to `unload`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct UnloadAnswer {
    /// The version freed.
    pub unloaded: String,
}

/// `POST /admin/evaluate`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    /// A loaded version.
    pub version: String,
    /// The golden set (`.npz`).
    pub golden: PathBuf,
    /// Absolute tolerance.
    #[serde(default = "default_atol")]
    pub atol: f64,
    /// Relative tolerance.
    #[serde(default = "default_rtol")]
    pub rtol: f64,
}

fn default_atol() -> f64 {
    1e-5
}
fn default_rtol() -> f64 {
    1e-4
}

/// What an evaluation found.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EvaluateAnswer {
    /// Version evaluated.
    pub version: String,
    /// Samples (dimension 0).
    pub samples: u64,
    /// Largest |actual - expected|.
    pub max_abs_error: f64,
    /// Largest |actual - expected| / |expected| (where expected != 0).
    pub max_rel_error: f64,
    /// Elements outside `atol + rtol * |expected|`.
    pub mismatched_elements: u64,
    /// Fraction of samples whose decision (arg-max of the first output's row, or score >= 0.5
    /// for one value per row) equals the reference's.
    pub agreement: f64,
    /// No element outside the tolerance.
    pub within_tolerance: bool,
    /// Tolerance used.
    pub atol: f64,
    /// Tolerance used.
    pub rtol: f64,
}

/// `POST /admin/shadow`: mirror `sample_rate` of live traffic to `version`; 0 stops.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ShadowRequest {
    /// A loaded version (ignored when stopping).
    #[serde(default)]
    pub version: String,
    /// Fraction of live requests mirrored, 0 to 1.
    pub sample_rate: f64,
}

/// A shadow's figures.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShadowSummary {
    /// The shadowed version.
    pub version: String,
    /// Fraction mirrored.
    pub sample_rate: f64,
    /// Requests mirrored.
    pub mirrored: u64,
    /// Mirrored requests whose answer came back and was compared.
    pub compared: u64,
    /// Compared requests whose decision matched the serving version's.
    pub agreed: u64,
    /// agreed / compared; `None` before any comparison.
    pub agreement: Option<f64>,
    /// Mirrored requests the shadow failed.
    pub errors: u64,
    /// The shadow's latency.
    pub latency: Percentiles,
}

/// Answer to `shadow`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ShadowAnswer {
    /// The shadow now (none after a stop).
    pub shadow: Option<ShadowSummary>,
    /// The shadow this call replaced or stopped, with its final figures.
    pub stopped: Option<ShadowSummary>,
}

/// `POST /admin/baseline`: while the serving version (the candidate) is analysed, answer
/// `fraction` of its live requests with `version` (the version that served before, kept loaded),
/// picked at random per request, and run `pair_rate` of all live requests on the other version
/// too, off the request path, to compare the two answers on identical inputs. Each call starts
/// the figures afresh; `fraction` 0 stops (and returns the final figures).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BaselineRequest {
    /// The baseline: a loaded version that does not serve (ignored when stopping).
    #[serde(default)]
    pub version: String,
    /// Fraction of live requests the baseline answers, 0 to 0.5 (0 stops).
    pub fraction: f64,
    /// Fraction of live requests also run on the other version and compared, 0 to 1.
    #[serde(default)]
    pub pair_rate: f64,
}

/// One arm of a paired baseline: the requests one version answered since the split began.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArmSummary {
    /// The version.
    pub version: String,
    /// Requests answered (ok + errors).
    pub requests: u64,
    /// Failures the server is answerable for (as [`VersionStats::server_errors`]).
    pub server_errors: u64,
    /// End-to-end latency histogram: `[lower µs, upper µs, count]` per non-empty bucket, in
    /// increasing order (log-linear buckets, ~4.4% wide).
    pub latency: Vec<[u64; 3]>,
    /// `value` or `argmax`, as [`VersionStats::output_kind`].
    pub output_kind: String,
    /// Counts per bin of the first output, as [`VersionStats::output_distribution`].
    pub output_distribution: Vec<u64>,
}

/// Both versions run on the same inputs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PairSummary {
    /// Requests run on both versions whose two answers were compared.
    pub compared: u64,
    /// Compared requests whose decisions (arg-max, or score >= 0.5, of the first output per
    /// row) were the same for every row.
    pub agreed: u64,
    /// Mean over compared requests of the largest absolute difference of the first output.
    pub mean_abs_deviation: f64,
    /// Largest absolute difference of the first output seen.
    pub max_abs_deviation: f64,
    /// Requests that could not be run on the other version (its queue full, an error).
    pub errors: u64,
}

/// A paired baseline's figures.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BaselineSummary {
    /// Fraction of live requests answered by the baseline.
    pub fraction: f64,
    /// Fraction of live requests run on both versions.
    pub pair_rate: f64,
    /// Milliseconds since the split began.
    pub elapsed_ms: u64,
    /// The serving version under analysis.
    pub candidate: ArmSummary,
    /// The previous version.
    pub baseline: ArmSummary,
    /// The pairwise comparison.
    pub pairs: PairSummary,
    /// Recent requests replayed on both versions during this split (`POST /admin/replay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplaySummary>,
}

/// The replay of a split: recent live requests, kept in memory, run on each version once, one
/// request at a time in a random order of the two, so both see the same inputs at the same
/// moments. Kept apart from the live arms (its load is not the live load).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplaySummary {
    /// Requests taken from the ring to replay.
    pub queued: u64,
    /// Whether the replay is still running.
    pub running: bool,
    /// The candidate on the replayed requests.
    pub candidate: ArmSummary,
    /// The baseline on the same requests.
    pub baseline: ArmSummary,
    /// Both answers of each replayed request compared.
    pub pairs: PairSummary,
}

/// `POST /admin/replay`: while a split runs, run up to `requests` of the most recent live
/// requests the runtime kept (`--replay-requests`) on both versions, at `rate` requests per
/// second on each, off the request path. One replay per split: asking again while (or after) it
/// runs answers its state and starts nothing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReplayRequest {
    /// Most requests to replay, newest first.
    pub requests: u64,
    /// Replayed requests per second on each version.
    pub rate: f64,
}

/// The largest [`ReplayRequest::rate`] the runtime takes (the watcher's `--replay-rate` has the
/// same bound).
pub const MAX_REPLAY_RATE: f64 = 10_000.0;

/// Answer to `replay`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplayAnswer {
    /// Whether this call started the replay (false: one had started already).
    pub started: bool,
    /// Requests the ring held when asked.
    pub available: u64,
    /// The replay's figures.
    pub replay: ReplaySummary,
}

/// Answer to `baseline`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BaselineAnswer {
    /// The split now (none after a stop).
    pub baseline: Option<BaselineSummary>,
    /// The split this call replaced or stopped, with its final figures.
    pub stopped: Option<BaselineSummary>,
}

/// Percentiles of a latency histogram, in seconds.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
}

/// One version's statistics since it was loaded or last made to serve.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct VersionStats {
    /// Requests answered (ok + errors).
    pub requests: u64,
    /// Failed requests of every kind.
    pub errors: u64,
    /// errors / requests.
    pub error_rate: f64,
    /// Failures the server is answerable for: model and internal errors (500), overload and
    /// unavailability (503), and deadlines the server set (504 under `--request-timeout`).
    /// Malformed requests (400), unknown versions (404) and deadlines the client chose are not.
    pub server_errors: u64,
    /// server_errors / requests: what a rollout judges.
    pub server_error_rate: f64,
    /// End-to-end latency since load or promotion.
    pub request: Percentiles,
    /// End-to-end latency over the last minute.
    pub request_window: Percentiles,
    /// Queue time.
    pub queue: Percentiles,
    /// `session.run` time per batch.
    pub compute: Percentiles,
    /// Batches run.
    pub batches: u64,
    /// Mean rows per batch.
    pub mean_batch: f64,
    /// Batches of size 1, 2, 3-4, 5-8, 9-16, 17-32, 33-64, 65-128, 129-256, >256.
    pub batch_sizes: Vec<u64>,
    /// "value" (20 bins over 0..=1 of a score) or "argmax" (class index mod 20).
    pub output_kind: String,
    /// Counts per bin of the first output.
    pub output_distribution: Vec<u64>,
    /// Rows per decision label, in the policy's label order.
    pub decisions: Vec<u64>,
}

/// One loaded version in [`StatsAnswer`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VersionEntry {
    /// Requests waiting now.
    pub queue_depth: u64,
    /// Whether requests are stacked into batches.
    pub batching: bool,
    /// Digest recorded at stage.
    #[serde(default)]
    pub digest: Option<String>,
    /// Statistics.
    pub stats: VersionStats,
}

/// Answer to `GET /admin/stats`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StatsAnswer {
    /// Model name.
    pub model: String,
    /// The version serving, if any.
    pub serving: Option<String>,
    /// The version serving before it, still loaded.
    pub previous: Option<String>,
    /// Ready to serve (a version serves, not draining).
    pub ready: bool,
    /// Changes of the serving version.
    pub swaps: u64,
    /// Rollbacks among them.
    pub rollbacks: u64,
    /// The shadow, if one runs.
    pub shadow: Option<ShadowSummary>,
    /// The paired baseline, if one runs.
    #[serde(default)]
    pub baseline: Option<BaselineSummary>,
    /// Every loaded version by label.
    pub versions: BTreeMap<String, VersionEntry>,
    /// Where the inference threads run, when started with `--cpu-affinity auto`.
    #[serde(default, rename = "cpuPinning")]
    pub cpu_pinning: Option<CpuPinning>,
}

/// How a runtime started with `--cpu-affinity auto` placed its inference threads, in
/// [`StatsAnswer`]; the watcher turns it into the pod's `kinfer.dev/CpuPinned` condition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CpuPinning {
    /// The CPUs the process may run on (its cpuset), as a Linux CPU list (`2-3`).
    pub allowed: String,
    /// CPUs the inference threads need: instances × intra-op threads.
    pub needed: u32,
    /// The cpuset is no larger than what the threads need: what the kubelet's static CPU
    /// manager gives a Guaranteed pod with whole CPUs. A larger one is the node's shared pool.
    pub exclusive: bool,
    /// Inference threads share a CPU (the cpuset is smaller than what they need).
    pub shared_threads: bool,
    /// One sentence for people: what the runtime did and, when it is not what pinning is
    /// for, what to change.
    pub message: String,
}

impl StatsAnswer {
    /// A loaded version's statistics.
    pub fn stats(&self, version: &str) -> Option<&VersionStats> {
        self.versions.get(version).map(|v| &v.stats)
    }
}

/// Why a call conflicted (409).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflict {
    /// `stage`: the label is loaded with the same bytes (or no digest was given): nothing to do.
    AlreadyLoaded,
    /// `stage`: the label serves (or is kept for rollback) with other bytes.
    OtherBytes,
    /// `unload`: the version serves.
    Serving,
    /// `shadow`: the version serves; shadow a staged one.
    ShadowServing,
    /// `baseline`: the version serves (the baseline must be another), or nothing serves yet.
    BaselineServing,
    /// `replay`: no split runs (start one with `baseline` first).
    NoBaseline,
    /// `replay`: the runtime keeps no requests (started without `--replay-requests`).
    ReplayOff,
}

/// The body of every error answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    /// What was wrong and what to do.
    pub error: String,
    /// For a 409, which conflict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<Conflict>,
    /// For [`Conflict::AlreadyLoaded`] and [`Conflict::OtherBytes`], the digest loaded now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(v: &T) {
        let s = serde_json::to_string(v).unwrap();
        assert_eq!(&serde_json::from_str::<T>(&s).unwrap(), v, "{s}");
    }

    #[test]
    fn every_message_round_trips() {
        round_trip(&StageRequest {
            version: "v2".into(),
            path: "/models/sha256-x/model.onnx".into(),
            digest: Some("sha256:ab".into()),
        });
        round_trip(&ServeAnswer {
            serving: "v1".into(),
            previous: Some("v2".into()),
            changed: false,
        });
        round_trip(&ErrorBody {
            error: "x".into(),
            conflict: Some(Conflict::OtherBytes),
            digest: Some("sha256:cd".into()),
        });
        let mut versions = BTreeMap::new();
        versions.insert(
            "v1".to_string(),
            VersionEntry {
                queue_depth: 0,
                batching: true,
                digest: None,
                stats: VersionStats {
                    requests: 10,
                    server_errors: 1,
                    ..Default::default()
                },
            },
        );
        round_trip(&StatsAnswer {
            model: "m".into(),
            serving: Some("v1".into()),
            previous: None,
            ready: true,
            swaps: 1,
            rollbacks: 0,
            shadow: None,
            baseline: Some(BaselineSummary {
                fraction: 0.5,
                pair_rate: 0.1,
                elapsed_ms: 1200,
                candidate: ArmSummary {
                    version: "v1".into(),
                    requests: 3,
                    latency: vec![[100, 103, 2], [200, 207, 1]],
                    ..Default::default()
                },
                baseline: ArmSummary {
                    version: "v0".into(),
                    ..Default::default()
                },
                pairs: PairSummary {
                    compared: 1,
                    agreed: 1,
                    max_abs_deviation: f64::MAX,
                    ..Default::default()
                },
                replay: Some(ReplaySummary {
                    queued: 2,
                    running: true,
                    ..Default::default()
                }),
            }),
            versions,
            cpu_pinning: Some(CpuPinning {
                allowed: "2-3".into(),
                needed: 2,
                exclusive: true,
                shared_threads: false,
                message: "2 inference threads pinned one per CPU on 2-3".into(),
            }),
        });
        round_trip(&BaselineRequest {
            version: "v0".into(),
            fraction: 0.3,
            pair_rate: 0.1,
        });
        round_trip(&ReplayRequest {
            requests: 500,
            rate: 100.0,
        });
        round_trip(&ReplayAnswer {
            started: false,
            available: 12,
            replay: ReplaySummary::default(),
        });
        // A summary from a runtime without replay still reads.
        let old = r#"{"fraction":0.5,"pairRate":0.1,"elapsedMs":1,"candidate":{"version":"a","requests":0,"serverErrors":0,"latency":[],"outputKind":"","outputDistribution":[]},"baseline":{"version":"b","requests":0,"serverErrors":0,"latency":[],"outputKind":"","outputDistribution":[]},"pairs":{"compared":0,"agreed":0,"meanAbsDeviation":0.0,"maxAbsDeviation":0.0,"errors":0}}"#;
        assert_eq!(
            serde_json::from_str::<BaselineSummary>(old).unwrap().replay,
            None
        );
    }

    #[test]
    fn a_missing_field_is_an_error_not_a_zero() {
        let e = serde_json::from_str::<ServeAnswer>(r#"{"serving":"v1","previous":null}"#);
        assert!(e.unwrap_err().to_string().contains("changed"));
        let e = serde_json::from_str::<VersionRequest>(r#"{"version":"v1","extra":1}"#);
        assert!(e.is_err(), "unknown fields are refused in requests");
    }
}
