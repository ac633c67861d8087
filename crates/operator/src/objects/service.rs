//! The Service (OIP HTTP, gRPC, runtime metrics) and the PodDisruptionBudget of an
//! InferenceService.

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};

use super::{
    deployment::{GRPC_PORT, HTTP_PORT, METRICS_PORT},
    meta, selector_labels,
};
use crate::validate::Validated;

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
}
