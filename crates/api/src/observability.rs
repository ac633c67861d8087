//! How an InferenceService is scaled and observed: `spec.autoscaling` (a HorizontalPodAutoscaler
//! on CPU, or a KEDA ScaledObject on queue depth or p99 latency read from Prometheus) and
//! `spec.tracing` (OpenTelemetry spans of its pods).

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// Replica bounds and the signal to scale on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must be <= maxReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Fewest pods.
    #[x_kube(validation = Rule::new("self >= 1").message("autoscaling.minReplicas must be >= 1"))]
    pub min_replicas: i32,
    /// Most pods.
    pub max_replicas: i32,
    /// What to scale on.
    #[serde(default)]
    pub metric: ScaleMetric,
    /// Target value: CPU utilisation percent (`cpu`), queued requests per pod (`queueDepth`), or
    /// milliseconds of p99 latency (`p99`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("autoscaling.target must be >= 1"))]
    pub target: Option<i32>,
    /// How long the signal must stay low before pods are removed (the HPA's scale-down
    /// stabilization window; its default, 5m, when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_stabilization: Option<Duration>,
}

/// The autoscaling signal.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ScaleMetric {
    /// Average CPU utilisation of the pods (a HorizontalPodAutoscaler; needs metrics-server).
    #[default]
    Cpu,
    /// Requests queued per pod, `kinfer_queue_depth`. With the operator's KEDA setting
    /// (`--keda-prometheus-address`) a KEDA ScaledObject reads it from Prometheus; without it, an
    /// HPA asks the custom metrics API (an adapter such as prometheus-adapter) for it per pod.
    QueueDepth,
    /// The service's p99 request latency. With KEDA: the p99 over all its pods from Prometheus,
    /// pods added in proportion to how far it is over the target; without: a per-pod custom
    /// metric as for `queueDepth`.
    P99,
}

/// OpenTelemetry spans of the service's pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Tracing {
    /// The collector's OTLP/gRPC endpoint, `http://HOST:PORT` (usually port 4317); the
    /// operator's default (`--pod-otlp-endpoint`, the chart's `tracing.podEndpoint`) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') && self.size() > 7 && self.size() <= 253").message("tracing.endpoint must be http://HOST:PORT (TLS is not supported: send to a collector agent in the cluster)"))]
    pub endpoint: Option<String>,
    /// The share of new traces recorded, 0 to 1. A request whose client sent a W3C
    /// `traceparent` follows the client's sampling decision instead.
    #[serde(default = "default_sample_ratio")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("tracing.sampleRatio must be between 0 and 1"))]
    pub sample_ratio: f64,
}

fn default_sample_ratio() -> f64 {
    kinfer_contract::flags::tracing::DEFAULT_SAMPLE_RATIO
}
