//! `InferenceService` (`infsvc`): which ModelVersion should serve, on how many pods, with which
//! runtime settings, resources and rollout safety rules — and, in status, what actually serves.
// clippy reads the repeated `type_ = ...` keys of kube's `printcolumn(...)` entries as duplicated
// attributes; they belong to different columns.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Condition};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;
pub use crate::execution::{ExecutionProvider, ProviderOptions};
pub use crate::observability::{Autoscaling, ScaleMetric, Tracing};
pub use crate::policy::{DecisionLog, DecisionLogSink, DecisionPolicy, Threshold};

/// A low-latency ONNX inference service. Changing `modelVersion` starts a canary-first, in-pod
/// rollout; a regression rolls back by itself.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kinfer.dev",
    version = "v1alpha1",
    kind = "InferenceService",
    plural = "inferenceservices",
    singular = "inferenceservice",
    shortname = "infsvc",
    category = "kinfer",
    namespaced,
    status = "InferenceServiceStatus",
    doc = "An ONNX model served over the Open Inference Protocol v2, rolled out canary-first.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Serving",
        type_ = "string",
        json_path = ".status.servingVersion"
    ),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.modelVersion"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.rollout.phase"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.ready"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.rollout) || !has(self.rollout.canary) || !has(self.replicas) || self.replicas == 0 || self.rollout.canary.replicas <= self.replicas").message("rollout.canary.replicas must be <= replicas (or replicas must be 0)"))]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || !has(self.rollout) || !has(self.rollout.canary) || self.rollout.canary.replicas <= self.autoscaling.minReplicas").message("rollout.canary.replicas must be <= autoscaling.minReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceSpec {
    /// Name of the ModelVersion (same namespace) that should serve. This is the one line a
    /// GitOps promotion edits.
    #[x_kube(validation = Rule::new("self.size() > 0").message("modelVersion must name a ModelVersion"))]
    pub model_version: String,
    /// Number of pods. Ignored while `autoscaling` is set.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self >= 0").message("replicas must be >= 0"))]
    pub replicas: i32,
    /// Scale between bounds with a HorizontalPodAutoscaler instead of a fixed replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
    /// The inference server in each pod.
    #[serde(default)]
    pub runtime: RuntimeSpec,
    /// CPU, memory, GPUs and CPU pinning for each pod.
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// How a new version is rolled out and when it is rolled back.
    #[serde(default)]
    pub rollout: RolloutSpec,
    /// Optional decision policy: thresholds on one output mapped to labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<DecisionPolicy>,
    /// Where to send alerts when a version is rolled back or refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Alerts>,
    /// OpenTelemetry spans of the pods: the runtime's span per request (continuing a client's
    /// W3C `traceparent`) and the model-watcher's trace per rollout. Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<Tracing>,
}

/// The inference server in each pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    /// Runtime image; the operator's default when empty: its GPU runtime image (ONNX Runtime
    /// with the CUDA provider and the CUDA libraries) when `resources.gpu` is set, else its CPU one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// ONNX Runtime execution provider.
    #[serde(default)]
    pub execution_provider: ExecutionProvider,
    /// Options of the CUDA and TensorRT providers (device, cuDNN search, fp16, engine cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_options: Option<ProviderOptions>,
    /// Threads for one operator (ORT intra-op). Defaults to the CPUs of the pod; with
    /// `resources.cpuPinning` it is always the number of pinned CPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 256").message("runtime.intraOpThreads must be between 1 and 256"))]
    pub intra_op_threads: Option<i32>,
    /// Threads across independent operators (ORT inter-op); 1 when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 256").message("runtime.interOpThreads must be between 1 and 256"))]
    pub inter_op_threads: Option<i32>,
    /// Number of session instances (workers) per loaded version; 1 when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 64").message("runtime.instances must be between 1 and 64"))]
    pub instances: Option<i32>,
    /// Dynamic batching. Without it every request runs alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<Batching>,
    /// Deadline for one request, queueing included (`100ms`, at most `1h`); clients may ask
    /// for less.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) <= duration('1h')").message("runtime.requestTimeout must be at most 1h"))]
    pub request_timeout: Option<Duration>,
}

/// Dynamic batching: a worker stacks the queued requests whose dimensions after the first match
/// (the shape signature) into one run. By default it takes what queued while it was busy and adds
/// no delay; `maxQueueDelay` waits that long for a batch to fill (latency for throughput).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Batching {
    /// Largest batch (sum of the requests' batch dimensions) for one `session.run`, 1 to 4096.
    #[serde(default = "default_max_batch")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 4096").message("batching.maxBatchSize must be between 1 and 4096"))]
    pub max_batch_size: i32,
    /// Longest time the first request of a batch waits for others (`0s`: none; at most `1s`).
    #[serde(default = "default_queue_delay")]
    #[x_kube(validation = Rule::new("duration(self) <= duration('1s')").message("batching.maxQueueDelay must be at most 1s"))]
    pub max_queue_delay: Duration,
    /// Requests that may wait, 1 to 65536; one more is refused at once with 503 /
    /// RESOURCE_EXHAUSTED.
    #[serde(default = "default_queue_capacity")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65536").message("batching.queueCapacity must be between 1 and 65536"))]
    pub queue_capacity: i32,
}

/// Resources of each pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// CPU for the runtime container (request = limit when `cpuPinning`), e.g. `2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory for the runtime container, e.g. `1Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// GPUs for the runtime container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuSpec>,
    /// Pin the runtime to whole CPUs: Guaranteed QoS (requests = limits on every container; the
    /// runtime's CPU a whole number, so the static CPU manager gives it exclusive CPUs; the
    /// watcher 250m from the shared pool), CPU load balancing and CFS quota disabled for the pod (CRI-O /
    /// performance-profile annotations), and the runtime started with `--cpu-affinity auto` so
    /// ONNX Runtime's threads follow the pod's cpuset. Needs the kubelet's static CPU manager
    /// policy to take effect; requires `cpu` to be a whole number and `memory` to be set.
    #[serde(default)]
    pub cpu_pinning: bool,
    /// Size limit of the pod's `models` volume (an emptyDir on the node's disk), which holds the
    /// serving, the previous and the candidate version's artifacts: one artifact may use at most
    /// a third of it, and a larger one is refused before it is downloaded (`ArtifactTooLarge`).
    /// Default `2Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_storage: Option<Quantity>,
}

/// GPUs for the runtime container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GpuSpec {
    /// Number of GPUs.
    #[x_kube(validation = Rule::new("self > 0").message("gpu.count must be > 0 when a gpu block is given"))]
    pub count: i32,
    /// Extended resource name of the device plugin.
    #[serde(default = "default_gpu_resource")]
    pub resource_name: String,
    /// GPU product to select (value of the `nvidia.com/gpu.product` node label), e.g.
    /// `NVIDIA-H100-80GB-HBM3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
}

/// Rollout and rollback rules.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// The pods that take a new version first.
    #[serde(default)]
    pub canary: CanarySpec,
    /// The analysis window after each pod's swap.
    #[serde(default)]
    pub analysis: AnalysisSpec,
    /// Mirror live traffic to the new version before it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSpec>,
    /// Swap back by itself on a regression. When false, a regression is reported and the rollout
    /// stops, but the new version keeps serving on the canaries.
    #[serde(default = "default_true")]
    pub auto_rollback: bool,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            canary: CanarySpec::default(),
            analysis: AnalysisSpec::default(),
            shadow: None,
            auto_rollback: true,
        }
    }
}

/// Canary pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanarySpec {
    /// How many pods take the new version first.
    #[serde(default = "default_canary_replicas")]
    #[x_kube(validation = Rule::new("self >= 0").message("rollout.canary.replicas must be >= 0"))]
    pub replicas: i32,
}

impl Default for CanarySpec {
    fn default() -> Self {
        Self {
            replicas: default_canary_replicas(),
        }
    }
}

/// What "no regression" means after a swap.
///
/// By default the previous version (kept loaded) answers a random `baseline.fraction` of the
/// canary pod's live requests during the analysis, so both versions are measured on the same
/// load at the same moments; each comparison is a confidence interval, and the verdict is a
/// regression only when the interval lies beyond the limit, a pass only when it lies within,
/// and otherwise the window extends up to `maxWindow`, after which the rollout holds
/// (`AnalysisInconclusive`). With `baseline.fraction: 0` the new version is compared with the
/// previous version's figures from just before the swap instead.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// The shortest analysis: no pass before it is over (a regression is acted on at once).
    /// `0s` skips the analysis: the version is kept as soon as it serves (with `minRequests: 0`).
    #[serde(default = "default_window")]
    pub window: Duration,
    /// The longest analysis: with no evidence either way by then, the verdict is
    /// `Inconclusive` and the rollout holds. Read as `window` when shorter.
    #[serde(default = "default_max_window")]
    pub max_window: Duration,
    /// Requests each side needs before any verdict (the tests' intervals decide how many more).
    #[serde(default = "default_min_requests")]
    #[x_kube(validation = Rule::new("self >= 0").message("analysis.minRequests must be >= 0"))]
    pub min_requests: i64,
    /// Confidence of every verdict: the chance that a version as good as the limits is not
    /// rolled back (split over the tests and the looks of one analysis).
    #[serde(default = "default_confidence")]
    #[x_kube(validation = Rule::new("self >= 0.5 && self < 1.0").message("analysis.confidence must be in [0.5, 1)"))]
    pub confidence: f64,
    /// Largest allowed ratio of the new version's typical latency to the baseline's (the
    /// Hodges–Lehmann estimate of the ratio over all requests of the window).
    #[serde(default = "default_max_latency_ratio")]
    #[x_kube(validation = Rule::new("self >= 1.0").message("analysis.maxLatencyRatio must be >= 1"))]
    pub max_latency_ratio: f64,
    /// Largest allowed ratio of the new version's p99 to the baseline's. Judged once each side
    /// has 1,000 requests (the p99 of fewer rests on fewer than ten samples); without a paired
    /// baseline the p90 stands in below that.
    #[serde(default = "default_max_p99_ratio")]
    #[x_kube(validation = Rule::new("self >= 1.0").message("analysis.maxP99Ratio must be >= 1"))]
    pub max_p99_ratio: f64,
    /// Absolute p99 budget (`20ms`), checked as well as the ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_p99: Option<Duration>,
    /// Largest allowed fraction of failed requests more than the baseline's (the previous
    /// version's own rate without a paired baseline).
    #[serde(default = "default_max_error_rate")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("analysis.maxErrorRate must be between 0 and 1"))]
    pub max_error_rate: f64,
    /// Output drift against the previous version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftSpec>,
    /// The paired baseline.
    #[serde(default)]
    pub baseline: BaselineSpec,
    /// Replay of recent requests when live traffic is too thin for a verdict; off when absent
    /// (the runtime then keeps no copy of any request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<ReplaySpec>,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            window: default_window(),
            max_window: default_max_window(),
            min_requests: default_min_requests(),
            confidence: default_confidence(),
            max_latency_ratio: default_max_latency_ratio(),
            max_p99_ratio: default_max_p99_ratio(),
            max_p99: None,
            max_error_rate: default_max_error_rate(),
            drift: None,
            baseline: BaselineSpec::default(),
            replay: None,
        }
    }
}

/// The previous version answering part of the live traffic during an analysis.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BaselineSpec {
    /// Fraction of the canary pod's live requests the previous version answers, picked at
    /// random per request; 0 compares with the figures from before the swap instead.
    #[serde(default = "default_baseline_fraction")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 0.5").message("analysis.baseline.fraction must be between 0 and 0.5"))]
    pub fraction: f64,
    /// Fraction of live requests also run on the other version, off the request path, to
    /// compare the two answers on identical inputs (what `drift.maxDisagreement` judges).
    #[serde(default = "default_pair_rate")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("analysis.baseline.pairRate must be between 0 and 1"))]
    pub pair_rate: f64,
}

impl Default for BaselineSpec {
    fn default() -> Self {
        Self {
            fraction: default_baseline_fraction(),
            pair_rate: default_pair_rate(),
        }
    }
}

/// The runtime keeps a sampled copy of recent live requests' inputs in memory (never on disk,
/// never answered by any API) and, when an analysis has not reached a verdict on live traffic
/// by the end of `window`, runs them on both versions of the paired baseline. Leave it off for
/// services whose inputs must not be retained.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplaySpec {
    /// Fraction of live requests whose inputs are kept.
    #[serde(default = "default_replay_sample_rate")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("analysis.replay.sampleRate must be in (0, 1]"))]
    pub sample_rate: f64,
    /// Most requests kept (the oldest is dropped first) and replayed.
    #[serde(default = "default_replay_requests")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100000").message("analysis.replay.maxRequests must be between 1 and 100000"))]
    pub max_requests: i64,
    /// Most memory the kept inputs take (`16Mi`); within a quarter of `resources.memory`.
    #[serde(default = "default_replay_memory")]
    pub max_memory: Quantity,
    /// Replayed requests per second on each version (they share the pod's CPUs with live
    /// traffic; both versions get the same load).
    #[serde(default = "default_replay_rate")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 10000.0").message("analysis.replay.rate must be in (0, 10000]"))]
    pub rate: f64,
}

impl Default for ReplaySpec {
    fn default() -> Self {
        Self {
            sample_rate: default_replay_sample_rate(),
            max_requests: default_replay_requests(),
            max_memory: default_replay_memory(),
            rate: default_replay_rate(),
        }
    }
}

/// Output drift rule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DriftSpec {
    /// Drift statistic.
    #[serde(default)]
    pub metric: DriftMetric,
    /// Largest allowed score. For PSI: < 0.1 no shift, 0.1–0.25 moderate, > 0.25 major. The
    /// part expected from sampling alone, (bins − 1)·(1/n₁ + 1/n₂), is taken off first.
    #[serde(default = "default_max_drift")]
    #[x_kube(validation = Rule::new("self >= 0.0").message("drift.maxScore must be >= 0"))]
    pub max_score: f64,
    /// With a paired baseline: the largest allowed fraction of requests, run on both versions
    /// with the same inputs, whose decisions (arg-max, or score >= 0.5) differ.
    #[serde(default = "default_max_disagreement")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("drift.maxDisagreement must be between 0 and 1"))]
    pub max_disagreement: f64,
}

/// Drift statistics.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DriftMetric {
    /// Population Stability Index of the output distribution.
    #[default]
    Psi,
}

/// Shadow traffic before promotion.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ShadowSpec {
    /// Fraction of live requests mirrored to the new version, from 0 to 1.
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("shadow.sampleRate must be in (0, 1]"))]
    pub sample_rate: f64,
    /// How long to mirror.
    pub duration: Duration,
    /// Fraction of mirrored requests whose decision must equal the serving version's.
    #[serde(default = "default_min_agreement")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("shadow.minAgreement must be between 0 and 1"))]
    pub min_agreement: f64,
}

/// Alert destinations.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Alerts {
    /// Webhooks called on rollback and refusal.
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
}

/// One alert webhook.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.url.startsWith('https://') || (has(self.allowInsecureHttp) && self.allowInsecureHttp)").message("webhook url must be https:// (set allowInsecureHttp: true to send alerts over plain http)"))]
pub struct Webhook {
    /// URL to POST to.
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("webhook url must start with http:// or https://"))]
    pub url: String,
    /// Payload shape.
    #[serde(default)]
    pub format: WebhookFormat,
    /// Secret key holding a bearer token sent as `Authorization: Bearer <token>`. The Secret must
    /// be in the service's namespace and carry the label `kinfer.dev/webhook-token: "true"`;
    /// otherwise the alert is sent without a token, and the condition `AlertsConfigured=False`
    /// and a Warning Event say why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<SecretKeyRef>,
    /// Allow a plain `http://` URL (the alert, and any token, travel unencrypted).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure_http: bool,
}

/// Alert payload shapes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// Alertmanager-compatible JSON (a list of alerts with labels and annotations).
    #[default]
    Alertmanager,
    /// Slack-compatible JSON with a `text` field.
    Slack,
}

/// A key of a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    pub name: String,
    /// Key within the Secret.
    pub key: String,
}

/// What serves, and how the last rollout went.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InferenceServiceStatus {
    /// The ModelVersion every ready pod serves; new pods load this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_version: Option<String>,
    /// The version served before `servingVersion`, kept warm for rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<String>,
    /// The version being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
    /// A version rolled back automatically; not retried until the spec or the ModelVersion
    /// changes or the `kinfer.dev/retry` annotation is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_version: Option<String>,
    /// The uid of the ModelVersion object that was rejected: one deleted and created again
    /// under the same name is another object, and is tried again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_version_uid: Option<String>,
    /// The rollout in progress or the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Pods.
    #[serde(default)]
    pub replicas: i32,
    /// Pods ready with a verified model serving.
    #[serde(default)]
    pub ready_replicas: i32,
    /// `ready/replicas`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Label selector of the pods (for the scale subresource and HPAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// In-cluster URLs: `http://<svc>.<ns>.svc:8080` and the gRPC one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, String>,
    /// `Ready`, `Progressing`, `RolledBack`, kstatus's `Reconciling` and `Stalled`, and
    /// `AlertsConfigured` while a webhook names a token Secret.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Rollout progress.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Where the rollout stands.
    pub phase: RolloutPhase,
    /// Pods chosen as canaries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub canary_pods: Vec<String>,
    /// The figures behind the last verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisFigures>,
    /// What is happening or why it stopped, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Rollout phases.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RolloutPhase {
    /// Nothing to do.
    #[default]
    Idle,
    /// Waiting for the ModelVersion's verification.
    Verifying,
    /// Canary pods are taking the new version.
    Canary,
    /// The remaining pods are taking it.
    Promoting,
    /// Pods are swapping back.
    RollingBack,
    /// The rollout was undone; see the message and `rejectedVersion`.
    RolledBack,
}

pub use kinfer_contract::report::AnalysisFigures;

fn default_true() -> bool {
    true
}
fn default_replicas() -> i32 {
    1
}
fn default_canary_replicas() -> i32 {
    1
}
fn default_max_batch() -> i32 {
    32
}
fn default_queue_delay() -> Duration {
    "0s".parse().expect("valid literal")
}
fn default_queue_capacity() -> i32 {
    1024
}
fn default_window() -> Duration {
    "30s".parse().expect("valid literal")
}
fn default_max_window() -> Duration {
    "2m".parse().expect("valid literal")
}
fn default_confidence() -> f64 {
    0.95
}
fn default_max_latency_ratio() -> f64 {
    1.15
}
fn default_baseline_fraction() -> f64 {
    0.5
}
fn default_pair_rate() -> f64 {
    0.1
}
fn default_max_disagreement() -> f64 {
    0.05
}
fn default_replay_sample_rate() -> f64 {
    0.1
}
fn default_replay_requests() -> i64 {
    2000
}
fn default_replay_memory() -> Quantity {
    Quantity("16Mi".into())
}
fn default_replay_rate() -> f64 {
    100.0
}
fn default_min_requests() -> i64 {
    100
}
fn default_max_p99_ratio() -> f64 {
    1.5
}
fn default_max_error_rate() -> f64 {
    0.01
}
fn default_max_drift() -> f64 {
    0.2
}
fn default_min_agreement() -> f64 {
    0.99
}
fn default_gpu_resource() -> String {
    "nvidia.com/gpu".into()
}
