//! What every pod the operator creates is made of (serving pods and the verification Job): the
//! locked-down security contexts, volumes, mounts, environment variables and resource
//! requirements, and the projected API token of the one container that talks to the API
//! server. [`super::deployment`], [`super::job`] and [`super::scheduling`] build on it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, DownwardAPIProjection, DownwardAPIVolumeFile,
    EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath, ObjectFieldSelector, PodSecurityContext,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};

/// UID/GID the containers run as (distroless `nonroot`).
pub const RUN_AS: i64 = 65532;

/// The pod security context of every pod the operator creates (serving pods and the verification
/// Job): non-root as [`RUN_AS`], files owned by that group, the runtime's default seccomp profile.
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

/// Non-root, read-only root filesystem, no privilege escalation, every capability dropped,
/// the runtime's default seccomp profile: for every container the operator creates.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

/// The container runtime's default seccomp profile.
pub fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

/// An emptyDir volume.
pub fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    }
}

/// A read-write mount of volume `name` at `path`.
pub fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..Default::default()
    }
}

/// An environment variable with a literal value.
pub fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// An environment variable from the pod's own fields (downward API).
pub fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: path.into(),
            }),
            ..Default::default()
        }),
    }
}

/// Requests and limits from `resource → quantity` maps (absent when empty).
pub fn requirements(
    requests: BTreeMap<String, String>,
    limits: BTreeMap<String, String>,
) -> ResourceRequirements {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let conv = |m: BTreeMap<String, String>| {
        (!m.is_empty()).then(|| m.into_iter().map(|(k, v)| (k, Quantity(v))).collect())
    };
    ResourceRequirements {
        requests: conv(requests),
        limits: conv(limits),
        ..Default::default()
    }
}

/// Name of the volume that holds the service account token of the one container that talks to
/// the API server (the pod itself mounts none: `automountServiceAccountToken: false`).
pub const API_TOKEN_VOLUME: &str = "kube-api-access";
/// Where client libraries look for the in-cluster token, CA and namespace.
pub const API_TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Lifetime of the projected token; the kubelet rotates it at 80 %.
pub const API_TOKEN_SECONDS: i64 = 3607;

/// The projected volume the kubelet would mount in every container when automounting —
/// a bound, expiring token, the cluster CA, the namespace — to be mounted only where the API
/// server is used.
pub fn api_token_volume() -> Volume {
    Volume {
        name: API_TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o444),
            sources: Some(vec![
                VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        path: "token".into(),
                        expiration_seconds: Some(API_TOKEN_SECONDS),
                        audience: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..Default::default()
                },
                VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![DownwardAPIVolumeFile {
                            path: "namespace".into(),
                            field_ref: Some(ObjectFieldSelector {
                                api_version: Some("v1".into()),
                                field_path: "metadata.namespace".into(),
                            }),
                            ..Default::default()
                        }]),
                    }),
                    ..Default::default()
                },
            ]),
        }),
        ..Default::default()
    }
}

/// The read-only mount of [`api_token_volume`] at [`API_TOKEN_DIR`].
pub fn api_token_mount() -> VolumeMount {
    VolumeMount {
        name: API_TOKEN_VOLUME.into(),
        mount_path: API_TOKEN_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    }
}
