//! What scales an InferenceService with `spec.autoscaling`: a HorizontalPodAutoscaler
//! (autoscaling/v2) on CPU utilisation (metrics-server), or on queue depth and p99 a KEDA
//! ScaledObject whose Prometheus queries read the runtime's metrics as the chart's PodMonitor
//! labels them; without the operator's KEDA setting, an HPA on per-pod custom metrics (an
//! adapter such as prometheus-adapter serves them). KEDA makes and owns its own HPA
//! (`keda-hpa-<name>`); the operator's is removed when KEDA takes over.

use k8s_openapi::{
    api::autoscaling::v2::{
        CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler,
        HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
        MetricTarget, PodsMetricSource, ResourceMetricSource,
    },
    apimachinery::pkg::api::resource::Quantity,
};
use kinfer_api::inference_service::{Autoscaling, ScaleMetric};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::{Defaults, meta};
use crate::validate::Validated;

/// Custom metric (per pod) for `metric: queueDepth` without KEDA, served by a metrics adapter
/// from the runtime's `kinfer_queue_depth` gauge.
pub const QUEUE_DEPTH_METRIC: &str = "kinfer_queue_depth";
/// Custom metric (per pod, seconds) for `metric: p99` without KEDA, e.g. a prometheus-adapter
/// rule over `histogram_quantile(0.99, rate(kinfer_request_duration_seconds_bucket[1m]))`.
pub const P99_METRIC: &str = "kinfer_request_duration_seconds_p99";

/// Default targets: CPU utilisation percent, queued requests per pod, p99 milliseconds.
pub const DEFAULT_CPU_TARGET: i32 = 70;
/// See [`DEFAULT_CPU_TARGET`].
pub const DEFAULT_QUEUE_TARGET: i32 = 4;
/// See [`DEFAULT_CPU_TARGET`].
pub const DEFAULT_P99_TARGET_MS: i32 = 50;

/// How often KEDA asks Prometheus, in seconds (its default is 30).
pub const KEDA_POLLING_SECONDS: i64 = 10;
/// The rate window of the p99 query: long enough for a few scrapes, short enough that the
/// latency of a load that stopped leaves it within a minute.
pub const P99_RATE_WINDOW: &str = "1m";

/// KEDA's ScaledObject resource (`keda.sh/v1alpha1`).
pub fn scaled_object_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject"),
        "scaledobjects",
    )
}

/// What scales a service.
#[derive(Debug, Clone, PartialEq)]
pub enum Scaler {
    /// A fixed replica count.
    None,
    /// The operator's HorizontalPodAutoscaler.
    Hpa(Box<HorizontalPodAutoscaler>),
    /// A KEDA ScaledObject (KEDA's HPA does the scaling).
    Keda(Box<DynamicObject>),
}

/// The scaler `v` asks for, given the operator's settings.
pub fn scaler(v: &Validated, d: &Defaults) -> Scaler {
    let Some(a) = v.spec.autoscaling.as_ref() else {
        return Scaler::None;
    };
    match (a.metric, d.keda_prometheus.as_deref()) {
        (ScaleMetric::QueueDepth | ScaleMetric::P99, Some(prometheus)) => {
            Scaler::Keda(Box::new(scaled_object(v, a, prometheus)))
        }
        _ => Scaler::Hpa(Box::new(hpa(v, a))),
    }
}

/// A PromQL label value: the names here are DNS labels already; escaping keeps it so.
fn promql_str(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The Prometheus query and KEDA metric type of a service's signal. The labels are those the
/// chart's PodMonitor gives the runtime's series (`namespace`, and the pod label
/// `kinfer.dev/inferenceservice` as `kinfer_dev_inferenceservice`).
pub fn keda_query(v: &Validated, metric: ScaleMetric) -> (String, &'static str) {
    let sel = format!(
        "namespace=\"{}\",kinfer_dev_inferenceservice=\"{}\"",
        promql_str(&v.namespace),
        promql_str(&v.name)
    );
    match metric {
        // Queued requests over all pods; KEDA divides by the pod count (AverageValue).
        ScaleMetric::QueueDepth | ScaleMetric::Cpu => (
            format!("sum(kinfer_queue_depth{{{sel}}}) or vector(0)"),
            "AverageValue",
        ),
        // The service's p99 in seconds; pods are added in proportion to how far it is over the
        // target (Value). With no traffic the quantile is NaN: `> 0 or vector(0)` makes it 0.
        ScaleMetric::P99 => (
            format!(
                "histogram_quantile(0.99, sum by (le) (rate(kinfer_request_duration_seconds_bucket{{{sel}}}[{P99_RATE_WINDOW}]))) > 0 or vector(0)"
            ),
            "Value",
        ),
    }
}

fn scaled_object(v: &Validated, a: &Autoscaling, prometheus: &str) -> DynamicObject {
    let (query, metric_type) = keda_query(v, a.metric);
    let threshold = match a.metric {
        ScaleMetric::P99 => {
            format!(
                "{}",
                f64::from(a.target.unwrap_or(DEFAULT_P99_TARGET_MS)) / 1000.0
            )
        }
        _ => a.target.unwrap_or(DEFAULT_QUEUE_TARGET).to_string(),
    };
    let mut advanced = json!({});
    if let Some(window) = stabilization_seconds(a) {
        advanced = json!({"horizontalPodAutoscalerConfig": {"behavior": {
            "scaleDown": {"stabilizationWindowSeconds": window}
        }}});
    }
    let m = meta(v, v.name.clone());
    let mut so = DynamicObject::new(&v.name, &scaled_object_resource())
        .within(&v.namespace)
        .data(json!({"spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": v.name},
            "minReplicaCount": a.min_replicas,
            "maxReplicaCount": a.max_replicas,
            "pollingInterval": KEDA_POLLING_SECONDS,
            "advanced": advanced,
            "triggers": [{
                "type": "prometheus",
                "metricType": metric_type,
                "metadata": {
                    "serverAddress": prometheus,
                    "query": query,
                    "threshold": threshold,
                    "ignoreNullValues": "true",
                },
            }],
        }}));
    // The labels and the controller owner reference of every owned object.
    so.metadata.labels = m.labels;
    so.metadata.owner_references = m.owner_references;
    so
}

fn stabilization_seconds(a: &Autoscaling) -> Option<i32> {
    a.scale_down_stabilization
        .as_ref()
        .map(|d| i32::try_from(d.get().as_secs()).unwrap_or(i32::MAX))
}

/// The operator's HPA.
fn hpa(v: &Validated, a: &Autoscaling) -> HorizontalPodAutoscaler {
    let metric = match a.metric {
        ScaleMetric::Cpu => MetricSpec {
            type_: "Resource".into(),
            resource: Some(ResourceMetricSource {
                name: "cpu".into(),
                target: MetricTarget {
                    type_: "Utilization".into(),
                    average_utilization: Some(a.target.unwrap_or(DEFAULT_CPU_TARGET)),
                    ..Default::default()
                },
            }),
            ..Default::default()
        },
        ScaleMetric::QueueDepth => pods_metric(
            QUEUE_DEPTH_METRIC,
            a.target.unwrap_or(DEFAULT_QUEUE_TARGET).to_string(),
        ),
        // Milliseconds as a quantity in seconds: 50 → "50m" = 0.050.
        ScaleMetric::P99 => pods_metric(
            P99_METRIC,
            format!("{}m", a.target.unwrap_or(DEFAULT_P99_TARGET_MS)),
        ),
    };
    HorizontalPodAutoscaler {
        metadata: meta(v, v.name.clone()),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name: v.name.clone(),
            },
            min_replicas: Some(a.min_replicas),
            max_replicas: a.max_replicas,
            metrics: Some(vec![metric]),
            behavior: stabilization_seconds(a).map(|w| HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(w),
                    ..Default::default()
                }),
                scale_up: None,
            }),
        }),
        status: None,
    }
}

fn pods_metric(name: &str, average: String) -> MetricSpec {
    MetricSpec {
        type_: "Pods".into(),
        pods: Some(PodsMetricSource {
            metric: MetricIdentifier {
                name: name.into(),
                selector: None,
            },
            target: MetricTarget {
                type_: "AverageValue".into(),
                average_value: Some(Quantity(average)),
                ..Default::default()
            },
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::tests::validated;

    fn hpa_of(spec: &str) -> HorizontalPodAutoscalerSpec {
        match scaler(&validated(spec), &Defaults::default()) {
            Scaler::Hpa(h) => h.spec.unwrap(),
            other => panic!("not an HPA: {other:?}"),
        }
    }

    #[test]
    fn hpa_on_cpu_queue_depth_and_p99_without_keda() {
        assert_eq!(
            scaler(&validated(r#"{"modelVersion":"v"}"#), &Defaults::default()),
            Scaler::None
        );
        let h = hpa_of(
            r#"{"modelVersion":"v","resources":{"cpu":"1"},"autoscaling":{"minReplicas":2,"maxReplicas":6}}"#,
        );
        assert_eq!((h.min_replicas, h.max_replicas), (Some(2), 6));
        assert_eq!(h.scale_target_ref.kind, "Deployment");
        assert!(h.behavior.is_none(), "the HPA's own default window");
        let m = &h.metrics.as_ref().unwrap()[0];
        assert_eq!(
            m.resource.as_ref().unwrap().target.average_utilization,
            Some(70)
        );
        let h = hpa_of(
            r#"{"modelVersion":"v","autoscaling":{"minReplicas":1,"maxReplicas":4,"metric":"queueDepth","target":8,"scaleDownStabilization":"30s"}}"#,
        );
        let p = h.metrics.as_ref().unwrap()[0].pods.clone().unwrap();
        assert_eq!(p.metric.name, "kinfer_queue_depth");
        assert_eq!(p.target.average_value.as_ref().unwrap().0, "8");
        let down = h.behavior.unwrap().scale_down.unwrap();
        assert_eq!(down.stabilization_window_seconds, Some(30));
        let h = hpa_of(
            r#"{"modelVersion":"v","autoscaling":{"minReplicas":1,"maxReplicas":4,"metric":"p99","target":20}}"#,
        );
        let p = h.metrics.as_ref().unwrap()[0].pods.clone().unwrap();
        assert_eq!(p.metric.name, P99_METRIC);
        assert_eq!(p.target.average_value.as_ref().unwrap().0, "20m");
    }

    #[test]
    fn with_keda_p99_and_queue_depth_become_scaled_objects_and_cpu_stays_an_hpa() {
        let d = Defaults {
            keda_prometheus: Some("http://prometheus.monitoring:9090".into()),
            ..Defaults::default()
        };
        let v = validated(
            r#"{"modelVersion":"v","autoscaling":{"minReplicas":1,"maxReplicas":3,"metric":"p99","target":40,"scaleDownStabilization":"30s"}}"#,
        );
        let Scaler::Keda(so) = scaler(&v, &d) else {
            panic!("not a ScaledObject")
        };
        assert_eq!(so.types.as_ref().unwrap().api_version, "keda.sh/v1alpha1");
        assert_eq!(so.types.as_ref().unwrap().kind, "ScaledObject");
        assert_eq!(so.metadata.name.as_deref(), Some("fraud"));
        assert_eq!(so.metadata.namespace.as_deref(), Some("ml"));
        let owner = &so.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.controller, Some(true));
        let spec = &so.data["spec"];
        assert_eq!(spec["scaleTargetRef"]["name"], "fraud");
        assert_eq!(
            (
                spec["minReplicaCount"].clone(),
                spec["maxReplicaCount"].clone()
            ),
            (json!(1), json!(3))
        );
        assert_eq!(
            spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
            30
        );
        let t = &spec["triggers"][0];
        assert_eq!(t["type"], "prometheus");
        assert_eq!(t["metricType"], "Value");
        assert_eq!(t["metadata"]["threshold"], "0.04");
        assert_eq!(
            t["metadata"]["serverAddress"],
            "http://prometheus.monitoring:9090"
        );
        assert_eq!(
            t["metadata"]["query"],
            "histogram_quantile(0.99, sum by (le) (rate(kinfer_request_duration_seconds_bucket{namespace=\"ml\",kinfer_dev_inferenceservice=\"fraud\"}[1m]))) > 0 or vector(0)"
        );
        let v = validated(
            r#"{"modelVersion":"v","autoscaling":{"minReplicas":1,"maxReplicas":3,"metric":"queueDepth"}}"#,
        );
        let Scaler::Keda(so) = scaler(&v, &d) else {
            panic!("not a ScaledObject")
        };
        let t = &so.data["spec"]["triggers"][0];
        assert_eq!(t["metricType"], "AverageValue");
        assert_eq!(t["metadata"]["threshold"], "4");
        assert_eq!(so.data["spec"]["advanced"], json!({}));
        let v = validated(
            r#"{"modelVersion":"v","resources":{"cpu":"1"},"autoscaling":{"minReplicas":1,"maxReplicas":3}}"#,
        );
        assert!(matches!(scaler(&v, &d), Scaler::Hpa(_)));
    }
}
