//! What makes a serving pod observable beyond the runtime's metrics: the watcher's own
//! `/metrics` port, and with `spec.tracing` the span export of both containers (the runtime's
//! flags, the watcher's environment, and the pod's name and namespace as the spans' resource).

use k8s_openapi::api::core::v1::{ContainerPort, EnvVar};
use kinfer_contract::pod::env as pod_env;

use super::pod::{env, field_env};
use crate::validate::Validated;

/// The watcher's metrics port (named [`WATCHER_METRICS_PORT_NAME`]).
pub const WATCHER_METRICS_PORT: i32 = 9091;
/// The name of the watcher's metrics port (the chart's PodMonitor scrapes it).
pub const WATCHER_METRICS_PORT_NAME: &str = "watcher-metrics";

/// The watcher container's metrics port.
pub fn watcher_ports() -> Vec<ContainerPort> {
    vec![ContainerPort {
        name: Some(WATCHER_METRICS_PORT_NAME.into()),
        container_port: WATCHER_METRICS_PORT,
        protocol: Some("TCP".into()),
        ..Default::default()
    }]
}

/// The watcher's environment for its metrics and, when traced, its span export.
pub fn watcher_env(v: &Validated) -> Vec<EnvVar> {
    let mut out = vec![env(
        pod_env::METRICS_PORT,
        &WATCHER_METRICS_PORT.to_string(),
    )];
    if let Some(t) = &v.tracing {
        out.push(env(pod_env::OTLP_ENDPOINT, &t.endpoint));
        out.push(env(
            pod_env::TRACE_SAMPLE_RATIO,
            &t.sample_ratio.to_string(),
        ));
    }
    out
}

/// The runtime's environment: when traced, the pod's name and namespace (the downward API),
/// which its spans carry as `k8s.pod.name` and `k8s.namespace.name`.
pub fn runtime_env(v: &Validated) -> Option<Vec<EnvVar>> {
    v.tracing.as_ref().map(|_| {
        vec![
            field_env(pod_env::POD_NAME, "metadata.name"),
            field_env(pod_env::POD_NAMESPACE, "metadata.namespace"),
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{Defaults, deployment::deployment, tests::validated};

    fn traced(spec: &str, d: &Defaults) -> Validated {
        validated(spec).with_defaults(d).expect("valid")
    }

    fn env_of(c: &k8s_openapi::api::core::v1::Container) -> Vec<(String, String)> {
        c.env
            .iter()
            .flatten()
            .map(|e| {
                let v = e.value.clone().or_else(|| {
                    e.value_from
                        .as_ref()
                        .and_then(|f| f.field_ref.as_ref())
                        .map(|f| f.field_path.clone())
                });
                (e.name.clone(), v.unwrap_or_default())
            })
            .collect()
    }

    #[test]
    fn a_traced_service_exports_from_both_containers_to_its_collector() {
        let d = Defaults {
            pod_otlp_endpoint: Some("http://collector:4317".into()),
            ..Defaults::default()
        };
        let dep = deployment(
            &traced(r#"{"modelVersion":"v","tracing":{"sampleRatio":0.1}}"#, &d),
            &d,
        );
        let pod = dep.spec.unwrap().template.spec.unwrap();
        let runtime = &pod.containers[0];
        let args = runtime.args.clone().unwrap().join(" ");
        assert!(
            args.ends_with("--otlp-endpoint http://collector:4317 --trace-sample-ratio 0.1"),
            "{args}"
        );
        let env = env_of(runtime);
        assert!(env.contains(&("KINFER_POD_NAME".into(), "metadata.name".into())));
        let watcher = &pod.containers[1];
        let env = env_of(watcher);
        for want in [
            ("KINFER_OTLP_ENDPOINT", "http://collector:4317"),
            ("KINFER_TRACE_SAMPLE_RATIO", "0.1"),
            ("KINFER_WATCHER_METRICS_PORT", "9091"),
        ] {
            assert!(
                env.contains(&(want.0.into(), want.1.into())),
                "{want:?} not in {env:?}"
            );
        }
        let port = &watcher.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("watcher-metrics"), 9091)
        );
        // The service's own endpoint wins over the operator's default.
        let own = traced(
            r#"{"modelVersion":"v","tracing":{"endpoint":"http://mine:4317"}}"#,
            &d,
        );
        assert_eq!(own.tracing.unwrap().endpoint, "http://mine:4317");
    }

    #[test]
    fn an_untraced_service_exports_nothing_and_tracing_needs_an_endpoint() {
        let d = Defaults::default();
        let dep = deployment(&traced(r#"{"modelVersion":"v"}"#, &d), &d);
        let pod = dep.spec.unwrap().template.spec.unwrap();
        let args = pod.containers[0].args.clone().unwrap().join(" ");
        assert!(!args.contains("otlp"), "{args}");
        // The runtime's environment is only the allocator setting every pod has.
        assert_eq!(
            env_of(&pod.containers[0]),
            [(
                pod_env::MALLOC_TRIM_THRESHOLD.to_owned(),
                kinfer_contract::pod::TRIM_THRESHOLD_BYTES.to_string()
            )]
        );
        assert!(
            !env_of(&pod.containers[1])
                .iter()
                .any(|(k, _)| k.contains("OTLP"))
        );
        let e = validated(r#"{"modelVersion":"v","tracing":{}}"#)
            .with_defaults(&d)
            .unwrap_err();
        assert_eq!(e.reason, "TracingNeedsEndpoint");
    }
}
