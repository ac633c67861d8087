//! The verification Job of a ModelVersion, exactly as the pod contract describes it: an init
//! container `kinfer-watcher check …` fetches and verifies the artifact into `/work/current/`,
//! then `kinfer-runtime --check …` loads it and runs the golden set. No API access (no
//! ServiceAccount token); each container writes one JSON object to its termination message, which
//! the ModelVersion controller copies into the ModelVersion's status.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{
            Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement,
            PodFailurePolicyOnPodConditionsPattern, PodFailurePolicyRule,
        },
        core::v1::{
            ConfigMapVolumeSource, Container, EnvVar, EnvVarSource, PodSpec, PodTemplateSpec,
            SecretKeySelector, SecretVolumeSource, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kinfer_api::{ModelVersion, model_version::AppliedTrust, report::EXIT_REFUSED};
use kinfer_contract::flags::{GoldenCheck, RuntimeCheck, WatcherCheck};
use kube::{Resource, ResourceExt};

use super::{
    Defaults,
    pod::{container_security_context, empty_dir, env, mount, pod_security_context, requirements},
};

/// Where the artifact is fetched to.
pub const WORK_DIR: &str = "/work";
/// Where the trusted keys are mounted.
pub const KEYS_DIR: &str = "/etc/kinfer/keys";
/// Name of the init container (watcher check).
pub const VERIFY_CONTAINER: &str = "verify";
/// Name of the main container (runtime check).
pub const VALIDATE_CONTAINER: &str = "validate";
/// Label on the Job and its pods naming the ModelVersion.
pub use kinfer_contract::pod::MODEL_VERSION_LABEL;

/// Name of the Job of a ModelVersion (`<mv>-verify`, cut to fit a label value).
pub fn job_name(mv: &str) -> String {
    let mut base: String = mv.chars().take(63 - "-verify".len()).collect();
    while base.ends_with(['-', '.']) {
        base.pop();
    }
    format!("{base}-verify")
}

/// Builds the Job; `None` when the ModelVersion has no namespace or uid (not from the API).
/// With `trust` (a ModelTrustPolicy governs the namespace) the check gets exactly those keys on
/// its command line and mounts none of the namespace's ConfigMaps or Secrets.
pub fn verification_job(
    mv: &ModelVersion,
    d: &Defaults,
    trust: Option<&AppliedTrust>,
) -> Option<Job> {
    let name = mv.name_any();
    let ns = mv.namespace()?;
    let owner = mv.controller_owner_ref(&())?;
    let spec = &mv.spec;
    let labels = BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "kinfer-verify".to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            crate::FIELD_MANAGER.to_string(),
        ),
        (MODEL_VERSION_LABEL.to_string(), name.clone()),
        (
            kinfer_api::report::MODEL_LABEL.to_string(),
            spec.model.clone(),
        ),
    ]);

    let check_args = WatcherCheck {
        source: spec.source.uri.clone(),
        endpoint: spec.source.endpoint.clone(),
        dest: WORK_DIR.into(),
        public_key_dir: KEYS_DIR.into(),
        public_keys_pem: trust
            .map(|t| {
                t.public_keys
                    .iter()
                    .map(|k| (k.name.clone(), k.pem.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        signature: spec.signature.bundle.clone(),
        allow_unsigned: !spec.signature.required,
    }
    .to_args();
    let mut check_env = vec![env(
        "AWS_REGION",
        spec.source.region.as_deref().unwrap_or("us-east-1"),
    )];
    if let Some(secret) = &spec.source.credentials_secret {
        for (key, optional) in [
            ("AWS_ACCESS_KEY_ID", false),
            ("AWS_SECRET_ACCESS_KEY", false),
            ("AWS_SESSION_TOKEN", true),
        ] {
            check_env.push(EnvVar {
                name: key.into(),
                value: None,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.clone(),
                        key: key.into(),
                        optional: Some(optional),
                    }),
                    ..Default::default()
                }),
            });
        }
    }
    let keys_volume = match spec.signature.trusted_keys.as_ref() {
        _ if trust.is_some() => empty_dir("keys"),
        Some(k) if k.config_map.is_some() => Volume {
            name: "keys".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: k.config_map.clone().unwrap_or_default(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Some(k) if k.secret.is_some() => Volume {
            name: "keys".into(),
            secret: Some(SecretVolumeSource {
                secret_name: k.secret.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        _ => empty_dir("keys"),
    };

    let runtime_args = RuntimeCheck {
        model: format!("{WORK_DIR}/current/model.onnx"),
        golden: spec.validation.as_ref().map(|v| GoldenCheck {
            path: format!("{WORK_DIR}/current/{}", v.golden_set),
            atol: v.atol,
            rtol: v.rtol,
            min_agreement: v.min_agreement,
        }),
    }
    .to_args();
    let small = |cpu: &str, mem: &str| {
        requirements(
            BTreeMap::from([("cpu".into(), cpu.into()), ("memory".into(), mem.into())]),
            BTreeMap::from([("memory".into(), mem.into())]),
        )
    };
    let termination = |c: Container| Container {
        termination_message_path: Some("/dev/termination-log".into()),
        termination_message_policy: Some("File".into()),
        security_context: Some(container_security_context()),
        image_pull_policy: Some(d.image_pull_policy.clone()),
        ..c
    };
    let verify = termination(Container {
        name: VERIFY_CONTAINER.into(),
        image: Some(d.watcher_image.clone()),
        command: Some(vec!["kinfer-watcher".into()]),
        args: Some(check_args),
        env: Some(check_env),
        resources: Some(small("100m", "256Mi")),
        volume_mounts: Some(vec![
            mount("work", WORK_DIR),
            VolumeMount {
                name: "keys".into(),
                mount_path: KEYS_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            mount("tmp", "/tmp"),
        ]),
        ..Default::default()
    });
    let validate = termination(Container {
        name: VALIDATE_CONTAINER.into(),
        image: Some(d.runtime_image.clone()),
        command: Some(vec!["kinfer-runtime".into()]),
        args: Some(runtime_args),
        resources: Some(small("500m", "1Gi")),
        volume_mounts: Some(vec![mount("work", WORK_DIR), mount("tmp", "/tmp")]),
        ..Default::default()
    });
    Some(Job {
        metadata: ObjectMeta {
            name: Some(job_name(&name)),
            namespace: Some(ns),
            labels: Some(labels.clone()),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // Retries are for a flaky fetch; a refused artifact (exit 3 from either check) fails
            // the Job at once, and an evicted pod does not count as a try.
            backoff_limit: Some(2),
            pod_failure_policy: Some(PodFailurePolicy {
                rules: [VERIFY_CONTAINER, VALIDATE_CONTAINER]
                    .into_iter()
                    .map(|c| PodFailurePolicyRule {
                        action: "FailJob".into(),
                        on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                            container_name: Some(c.into()),
                            operator: "In".into(),
                            values: vec![EXIT_REFUSED],
                        }),
                        on_pod_conditions: None,
                    })
                    .chain(std::iter::once(PodFailurePolicyRule {
                        action: "Ignore".into(),
                        on_exit_codes: None,
                        on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                            type_: "DisruptionTarget".into(),
                            status: "True".into(),
                        }]),
                    }))
                    .collect(),
            }),
            active_deadline_seconds: Some(900),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security_context()),
                    init_containers: Some(vec![verify]),
                    containers: vec![validate],
                    volumes: Some(vec![empty_dir("work"), keys_volume, empty_dir("tmp")]),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ModelVersion as the API server returns it, from JSON spec text.
    pub fn mv(name: &str, spec_json: &str) -> ModelVersion {
        let mut m = ModelVersion::new(name, serde_json::from_str(spec_json).unwrap());
        m.metadata.namespace = Some("ml".into());
        m.metadata.uid = Some("mv-uid".into());
        m.metadata.generation = Some(1);
        m
    }

    #[test]
    fn a_trust_policy_puts_its_keys_on_the_command_line_and_mounts_nothing_editable() {
        let m = mv(
            "fraud-v8",
            r#"{"model":"fraud","version":"v8","source":{"uri":"s3://models/fraud/v8/"},
                "signature":{"trustedKeys":{"configMap":"keys"}}}"#,
        );
        let trust = AppliedTrust {
            policies: vec!["corp".into()],
            public_keys: vec![kinfer_api::trust_policy::PublicKey {
                name: "release".into(),
                pem: "-----BEGIN PUBLIC KEY-----\nAA==\n-----END PUBLIC KEY-----\n".into(),
            }],
        };
        let j = verification_job(&m, &Defaults::default(), Some(&trust)).unwrap();
        let p = j.spec.unwrap().template.spec.unwrap();
        let args = p.init_containers.unwrap()[0].args.clone().unwrap();
        let at = args.iter().position(|a| a == "--public-key-pem").unwrap();
        assert!(args[at + 1].starts_with("release=-----BEGIN PUBLIC KEY-----"));
        let keys = p
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "keys")
            .unwrap();
        assert!(keys.config_map.is_none() && keys.secret.is_none() && keys.empty_dir.is_some());
    }

    #[test]
    fn job_follows_the_contract() {
        let m = mv(
            "fraud-v8",
            r#"{"model":"fraud","version":"v8",
                "source":{"uri":"s3://models/fraud/v8/","endpoint":"http://10.250.0.1:8333","credentialsSecret":"s3"},
                "signature":{"trustedKeys":{"configMap":"keys"}},
                "validation":{"goldenSet":"golden.npz","atol":0.001,"rtol":0.01,"minAgreement":0.99}}"#,
        );
        let j = verification_job(&m, &Defaults::default(), None).unwrap();
        assert_eq!(j.metadata.name.as_deref(), Some("fraud-v8-verify"));
        assert_eq!(
            j.metadata.owner_references.as_ref().unwrap()[0].kind,
            "ModelVersion"
        );
        let p = j.spec.clone().unwrap().template.spec.unwrap();
        assert_eq!(p.automount_service_account_token, Some(false));
        let policy = j
            .spec
            .as_ref()
            .unwrap()
            .pod_failure_policy
            .as_ref()
            .unwrap();
        let refused: Vec<_> = policy
            .rules
            .iter()
            .filter(|r| r.action == "FailJob")
            .map(|r| {
                let e = r.on_exit_codes.as_ref().unwrap();
                (
                    e.container_name.as_deref().unwrap(),
                    e.operator.as_str(),
                    e.values.clone(),
                )
            })
            .collect();
        assert_eq!(
            refused,
            [
                (VERIFY_CONTAINER, "In", vec![EXIT_REFUSED]),
                (VALIDATE_CONTAINER, "In", vec![EXIT_REFUSED])
            ]
        );
        assert!(
            policy
                .rules
                .iter()
                .any(|r| r.action == "Ignore" && r.on_pod_conditions.is_some())
        );
        assert_eq!(p.restart_policy.as_deref(), Some("Never"));
        let init = &p.init_containers.as_ref().unwrap()[0];
        assert_eq!(
            init.image.as_deref(),
            Some("kinfer.local/kinfer-watcher:0.1.0")
        );
        assert_eq!(
            init.args.as_ref().unwrap().join(" "),
            "check --source s3://models/fraud/v8/ --endpoint http://10.250.0.1:8333 --dest /work --public-key-dir /etc/kinfer/keys --signature model.sig"
        );
        let envs: Vec<_> = init
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert!(envs.contains(&"AWS_ACCESS_KEY_ID") && envs.contains(&"AWS_SECRET_ACCESS_KEY"));
        let c = &p.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("kinfer.local/kinfer-runtime:0.1.0")
        );
        assert_eq!(
            c.args.as_ref().unwrap().join(" "),
            "--check --model /work/current/model.onnx --golden /work/current/golden.npz --atol 0.001 --rtol 0.01 --min-agreement 0.99"
        );
        for c in [init, c] {
            assert_eq!(
                c.termination_message_path.as_deref(),
                Some("/dev/termination-log")
            );
            let s = c.security_context.as_ref().unwrap();
            assert_eq!(s.read_only_root_filesystem, Some(true));
        }
        let keys = p
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "keys")
            .unwrap();
        assert_eq!(keys.config_map.as_ref().unwrap().name, "keys");
    }

    #[test]
    fn unsigned_and_no_golden_set() {
        let m = mv(
            "fraud-v9",
            r#"{"model":"fraud","version":"v9","source":{"uri":"s3://models/fraud/v9/"},
                "signature":{"required":false}}"#,
        );
        let p = verification_job(&m, &Defaults::default(), None)
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let args = p.init_containers.unwrap()[0]
            .args
            .clone()
            .unwrap()
            .join(" ");
        assert!(args.ends_with("--allow-unsigned"), "{args}");
        assert!(!args.contains("--endpoint"));
        assert_eq!(
            p.containers[0].args.as_ref().unwrap().join(" "),
            "--check --model /work/current/model.onnx"
        );
    }

    #[test]
    fn long_names_fit_a_label() {
        let n = job_name(&"m".repeat(80));
        assert!(n.len() <= 63 && n.ends_with("-verify"));
    }
}
