//! The Service (OIP HTTP, gRPC, runtime metrics), the PodDisruptionBudget and the
//! HorizontalPodAutoscaler (autoscaling/v2) of an InferenceService.

use k8s_openapi::{
    api::{
        autoscaling::v2::{
            CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec,
            MetricIdentifier, MetricSpec, MetricTarget, PodsMetricSource, ResourceMetricSource,
        },
        core::v1::{Service, ServicePort, ServiceSpec},
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        api::resource::Quantity, apis::meta::v1::LabelSelector, util::intstr::IntOrString,
    },
};
use kinfer_api::inference_service::ScaleMetric;

use super::{
    deployment::{GRPC_PORT, HTTP_PORT, METRICS_PORT},
    meta, selector_labels,
};
use crate::validate::Validated;

/// Custom metric (per pod) for `metric: queueDepth`, served by a metrics adapter from the
/// runtime's `kinfer_queue_depth` gauge.
pub const QUEUE_DEPTH_METRIC: &str = "kinfer_queue_depth";
/// Custom metric (per pod, seconds) for `metric: p99`, e.g. a prometheus-adapter rule over
/// `histogram_quantile(0.99, rate(kinfer_request_duration_seconds_bucket[1m]))`.
pub const P99_METRIC: &str = "kinfer_request_duration_seconds_p99";

/// Default targets: CPU utilisation percent, queued requests per pod, p99 milliseconds.
pub const DEFAULT_CPU_TARGET: i32 = 70;
/// See [`DEFAULT_CPU_TARGET`].
pub const DEFAULT_QUEUE_TARGET: i32 = 4;
/// See [`DEFAULT_CPU_TARGET`].
pub const DEFAULT_P99_TARGET_MS: i32 = 50;

/// The ClusterIP Service.
pub fn service(v: &Validated) -> Service {
    let port = |name: &str, p: i32, app: Option<&str>| ServicePort {
        name: Some(name.into()),
        port: p,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        app_protocol: app.map(Into::into),
        ..Default::default()
    };
    Service {
        metadata: meta(v, v.name.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&v.name)),
            ports: Some(vec![
                port("http", HTTP_PORT, Some("http")),
                port("grpc", GRPC_PORT, Some("kubernetes.io/h2c")),
                port("metrics", METRICS_PORT, Some("http")),
            ]),
            ..Default::default()
        }),
        status: None,
    }
}

/// At most one pod disrupted voluntarily at a time (drains, node upgrades).
pub fn pdb(v: &Validated) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: meta(v, v.name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&v.name)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}

/// The HPA, when `spec.autoscaling` is set. A rollout and scaling do not fight: new pods load
/// `status.servingVersion` and get marked by the next reconcile if a rollout is promoting.
pub fn hpa(v: &Validated) -> Option<HorizontalPodAutoscaler> {
    let a = v.spec.autoscaling.as_ref()?;
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
    Some(HorizontalPodAutoscaler {
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
            behavior: None,
        }),
        status: None,
    })
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

    #[test]
    fn service_has_three_named_ports_and_the_pod_selector() {
        let s = service(&validated(r#"{"modelVersion":"v"}"#));
        let spec = s.spec.unwrap();
        let ports: Vec<_> = spec
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port))
            .collect();
        assert_eq!(
            ports,
            [
                ("http".into(), 8080),
                ("grpc".into(), 8081),
                ("metrics".into(), 9090)
            ]
        );
        let sel = spec.selector.unwrap();
        assert_eq!(sel["kinfer.dev/inferenceservice"], "fraud");
        assert_eq!(sel.len(), 2, "the selector must not carry the model label");
    }

    #[test]
    fn pdb_allows_one_disruption() {
        let p = pdb(&validated(r#"{"modelVersion":"v","replicas":3}"#))
            .spec
            .unwrap();
        assert_eq!(p.max_unavailable, Some(IntOrString::Int(1)));
        assert!(p.min_available.is_none());
    }

    #[test]
    fn hpa_on_cpu_queue_depth_and_p99() {
        assert!(hpa(&validated(r#"{"modelVersion":"v"}"#)).is_none());
        let h = hpa(&validated(
            r#"{"modelVersion":"v","resources":{"cpu":"1"},"autoscaling":{"minReplicas":2,"maxReplicas":6}}"#,
        ))
        .unwrap()
        .spec
        .unwrap();
        assert_eq!((h.min_replicas, h.max_replicas), (Some(2), 6));
        assert_eq!(h.scale_target_ref.kind, "Deployment");
        let m = &h.metrics.as_ref().unwrap()[0];
        assert_eq!(
            m.resource.as_ref().unwrap().target.average_utilization,
            Some(70)
        );
        let h = hpa(&validated(
            r#"{"modelVersion":"v","autoscaling":{"minReplicas":1,"maxReplicas":4,"metric":"queueDepth","target":8}}"#,
        ))
        .unwrap();
        let m = &h.spec.unwrap().metrics.unwrap()[0];
        let p = m.pods.as_ref().unwrap();
        assert_eq!(p.metric.name, "kinfer_queue_depth");
        assert_eq!(p.target.average_value.as_ref().unwrap().0, "8");
        let h = hpa(&validated(
            r#"{"modelVersion":"v","autoscaling":{"minReplicas":1,"maxReplicas":4,"metric":"p99","target":20}}"#,
        ))
        .unwrap();
        let m = &h.spec.unwrap().metrics.unwrap()[0];
        let p = m.pods.as_ref().unwrap();
        assert_eq!(p.metric.name, P99_METRIC);
        assert_eq!(p.target.average_value.as_ref().unwrap().0, "20m");
    }
}
