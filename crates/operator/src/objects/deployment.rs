//! The serving Deployment: one runtime and one model-watcher container per pod, exactly as the
//! pod contract in docs/architecture.md says (labels, readiness gate, volumes, flags, env), with
//! a locked-down security context. The model version is never part of the pod template: the
//! watcher loads `status.servingVersion` (or its pod's `kinfer.dev/target-version`), so a
//! promotion never restarts a pod.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
            EnvVar, HTTPGetAction, PodReadinessGate, PodSpec, PodTemplateSpec, Probe, Volume,
            VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kinfer_api::MODEL_READY_CONDITION;
use kinfer_contract::{
    flags::{Batching, Replay, RuntimeServe},
    pod::env as pod_env,
};

use super::{
    Defaults, decision_log, gpu, labels, meta, observability,
    pod::{
        api_token_mount, api_token_volume, container_security_context, empty_dir, env, field_env,
        mount, pod_security_context,
    },
    policy_name, scheduling, selector_labels, watcher_name,
};
use crate::validate::Validated;

/// The admin socket shared by runtime and watcher.
pub const ADMIN_SOCKET: &str = "/run/kinfer/admin.sock";
/// Where models are staged (the `models` emptyDir).
pub const MODELS_DIR: &str = "/models";
/// Where the policy ConfigMap is mounted.
pub const POLICY_DIR: &str = "/etc/kinfer/policy";
/// File name of the policy in its ConfigMap.
pub const POLICY_FILE: &str = "policy.yaml";
/// OIP HTTP port.
pub const HTTP_PORT: i32 = 8080;
/// OIP gRPC port.
pub const GRPC_PORT: i32 = 8081;
/// Runtime metrics port.
pub const METRICS_PORT: i32 = 9090;
/// Template annotation holding a hash of the policy, so a policy change restarts the pods (the
/// runtime reads `--policy` once at start).
pub const POLICY_HASH_ANNOTATION: &str = "kinfer.dev/policy-hash";

/// Builds the Deployment.
pub fn deployment(v: &Validated, d: &Defaults) -> Deployment {
    let spec = &v.spec;
    let mut annotations = scheduling::pod_annotations(v);
    let policy = policy_config_map(v);
    if let Some(cm) = &policy {
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get(POLICY_FILE))
            .cloned()
            .unwrap_or_default();
        annotations.insert(
            POLICY_HASH_ANNOTATION.into(),
            format!("{:016x}", fnv1a(&text)),
        );
    }
    let mut volumes = vec![
        models_volume(v),
        empty_dir("run"),
        empty_dir("tmp"),
        api_token_volume(),
    ];
    if policy.is_some() {
        volumes.push(Volume {
            name: "policy".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: policy_name(&v.name),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if let Some((cache, _)) = gpu::engine_cache_volume(v) {
        volumes.push(cache);
    }
    if let Some((log, _)) = decision_log::volume(v) {
        volumes.push(log);
    }
    let (node_selector, tolerations) = scheduling::gpu_placement(v);
    let pod = PodSpec {
        service_account_name: Some(watcher_name(&v.name)),
        // The runtime, which parses untrusted requests, gets no API credentials: the token is
        // mounted in the watcher container alone.
        automount_service_account_token: Some(false),
        readiness_gates: Some(vec![PodReadinessGate {
            condition_type: MODEL_READY_CONDITION.into(),
        }]),
        security_context: Some(pod_security_context()),
        containers: vec![runtime_container(v, d), watcher_container(v, d)],
        volumes: Some(volumes),
        node_selector,
        tolerations,
        termination_grace_period_seconds: Some(30),
        ..Default::default()
    };
    Deployment {
        metadata: meta(v, v.name.clone()),
        spec: Some(DeploymentSpec {
            // With autoscaling the HPA owns the replica count; leaving the field out of the
            // applied object keeps the two from fighting.
            replicas: spec.autoscaling.is_none().then_some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&v.name)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            revision_history_limit: Some(3),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&v.name, v.model.as_deref())),
                    annotations: (!annotations.is_empty()).then_some(annotations),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The runtime's command line (`kinfer_contract::flags`, parsed by the runtime's own tests).
pub fn runtime_flags(v: &Validated) -> RuntimeServe {
    let spec = &v.spec;
    let (max_inflight_bytes, max_message_bytes) = scheduling::memory_limits(v).unzip();
    RuntimeServe {
        model_name: v.name.clone(),
        admin_socket: ADMIN_SOCKET.into(),
        log_format: "json".into(),
        execution_provider: v.execution_provider.as_str().into(),
        ep_fallback_cpu: false,
        provider: gpu::provider_flags(v),
        // Pinned: the explicit per-instance count, else the pinned CPUs shared out between the
        // instances (the runtime pins each worker and its threads one per CPU).
        intra_op_threads: spec.runtime.intra_op_threads.map(i64::from).or(v
            .pinned_cpus
            .map(|c| (c / i64::from(spec.runtime.instances.unwrap_or(1).max(1))).max(1))),
        pinned_cpus: v.pinned_cpus,
        inter_op_threads: spec.runtime.inter_op_threads.map(i64::from),
        instances: spec.runtime.instances.map(i64::from),
        batching: spec.runtime.batching.as_ref().map(|b| Batching {
            max_batch_size: i64::from(b.max_batch_size),
            max_queue_delay: b.max_queue_delay.to_string(),
            queue_capacity: i64::from(b.queue_capacity),
        }),
        request_timeout: spec.runtime.request_timeout.as_ref().map(|t| t.to_string()),
        max_inflight_bytes,
        max_message_bytes,
        policy: spec
            .policy
            .is_some()
            .then(|| format!("{POLICY_DIR}/{POLICY_FILE}")),
        decision_log: decision_log::flags(v),
        tracing: v.tracing.clone(),
        replay: spec.rollout.analysis.replay.as_ref().and_then(|r| {
            Some(Replay {
                requests: u64::try_from(r.max_requests).ok()?,
                bytes: crate::quantity::memory_bytes(&r.max_memory.0)?,
                sample_rate: r.sample_rate,
            })
        }),
    }
}

/// The runtime's environment: glibc's fixed trim threshold (so a swapped-out version's memory
/// is given back), and what tracing adds.
fn runtime_env(v: &Validated) -> Vec<EnvVar> {
    let mut out = vec![env(
        pod_env::MALLOC_TRIM_THRESHOLD,
        &kinfer_contract::pod::TRIM_THRESHOLD_BYTES.to_string(),
    )];
    out.extend(observability::runtime_env(v).into_iter().flatten());
    out
}

/// The runtime's command-line arguments (after the binary).
pub fn runtime_args(v: &Validated) -> Vec<String> {
    runtime_flags(v).to_args()
}

fn runtime_container(v: &Validated, d: &Defaults) -> Container {
    let mut mounts = vec![
        mount("models", MODELS_DIR),
        mount("run", "/run/kinfer"),
        mount("tmp", "/tmp"),
    ];
    if let Some((_, cache)) = gpu::engine_cache_volume(v) {
        mounts.push(cache);
    }
    if let Some((_, log)) = decision_log::volume(v) {
        mounts.push(log);
    }
    if v.spec.policy.is_some() {
        mounts.push(VolumeMount {
            name: "policy".into(),
            mount_path: POLICY_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    Container {
        name: "runtime".into(),
        image: Some(gpu::runtime_image(v, d)),
        image_pull_policy: Some(d.image_pull_policy.clone()),
        command: Some(vec!["kinfer-runtime".into()]),
        args: Some(runtime_args(v)),
        ports: Some(vec![
            port("http", HTTP_PORT),
            port("grpc", GRPC_PORT),
            port("metrics", METRICS_PORT),
        ]),
        env: Some(runtime_env(v)),
        liveness_probe: Some(http_probe("/v2/health/live", 10, 3)),
        readiness_probe: Some(http_probe("/v2/health/ready", 5, 2)),
        resources: Some(scheduling::runtime_resources(v)),
        security_context: Some(container_security_context()),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}

fn watcher_container(v: &Validated, d: &Defaults) -> Container {
    Container {
        name: "watcher".into(),
        image: Some(d.watcher_image.clone()),
        image_pull_policy: Some(d.image_pull_policy.clone()),
        command: Some(vec!["kinfer-watcher".into()]),
        args: Some(vec!["run".into()]),
        env: Some(
            vec![
                field_env(pod_env::POD_NAME, "metadata.name"),
                field_env(pod_env::POD_NAMESPACE, "metadata.namespace"),
                env(pod_env::INFERENCE_SERVICE, &v.name),
                env(pod_env::MODELS_DIR, MODELS_DIR),
                env(pod_env::ADMIN_SOCKET, ADMIN_SOCKET),
                env(pod_env::LOG_FORMAT, "json"),
                env(
                    pod_env::MAX_ARTIFACT_BYTES,
                    &(model_storage_bytes(v) / 3).to_string(),
                ),
            ]
            .into_iter()
            .chain(observability::watcher_env(v))
            .collect(),
        ),
        ports: Some(observability::watcher_ports()),
        resources: Some(scheduling::watcher_resources(v)),
        security_context: Some(container_security_context()),
        volume_mounts: Some(vec![
            mount("models", MODELS_DIR),
            mount("run", "/run/kinfer"),
            mount("tmp", "/tmp"),
            api_token_mount(),
        ]),
        ..Default::default()
    }
}

/// Size limit of the models volume when the spec sets none.
pub const DEFAULT_MODEL_STORAGE: &str = "2Gi";

/// `resources.modelStorage`, or the default, as written.
fn model_storage(v: &Validated) -> String {
    v.spec
        .resources
        .model_storage
        .as_ref()
        .map(|q| q.0.clone())
        .unwrap_or_else(|| DEFAULT_MODEL_STORAGE.into())
}

/// The models volume's size limit in bytes (validation made sure it parses).
pub fn model_storage_bytes(v: &Validated) -> u128 {
    crate::quantity::memory_bytes(&model_storage(v)).unwrap_or(2 << 30)
}

/// The `models` emptyDir, bounded: the kubelet evicts a pod whose volume outgrows it, and the
/// watcher refuses an artifact larger than a third of it before downloading.
fn models_volume(v: &Validated) -> Volume {
    Volume {
        name: "models".into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: None,
            size_limit: Some(Quantity(model_storage(v))),
        }),
        ..Default::default()
    }
}

/// The policy ConfigMap (`<name>-policy`, key `policy.yaml`), when the spec has a policy.
pub fn policy_config_map(v: &Validated) -> Option<ConfigMap> {
    // The decision log is the runtime's flags, not part of its policy file.
    let p = kinfer_api::inference_service::DecisionPolicy {
        decision_log: None,
        ..v.spec.policy.clone()?
    };
    // JSON is valid YAML, and the runtime reads the policy with a YAML parser.
    let text = serde_json::to_string_pretty(&p).expect("a policy always serialises");
    Some(ConfigMap {
        metadata: meta(v, policy_name(&v.name)),
        data: Some(BTreeMap::from([(POLICY_FILE.into(), text)])),
        ..Default::default()
    })
}

fn port(name: &str, p: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: p,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            scheme: Some("HTTP".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        success_threshold: Some(1),
        initial_delay_seconds: Some(0),
        ..Default::default()
    }
}

/// 64-bit FNV-1a, a stable hash for the policy annotation.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::tests::validated;

    fn pod(v: &Validated) -> PodSpec {
        deployment(v, &Defaults::default())
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
    }

    fn container<'a>(p: &'a PodSpec, name: &str) -> &'a Container {
        p.containers.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn follows_the_pod_contract() {
        let v = validated(r#"{"modelVersion":"fraud-v7","replicas":3}"#);
        let d = deployment(&v, &Defaults::default());
        let spec = d.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        let tl = spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .as_ref()
            .unwrap();
        for (k, val) in [
            ("app.kubernetes.io/name", "kinfer"),
            ("app.kubernetes.io/instance", "fraud"),
            ("app.kubernetes.io/managed-by", "kinfer-operator"),
            ("kinfer.dev/inferenceservice", "fraud"),
            ("kinfer.dev/model", "fraud"),
        ] {
            assert_eq!(tl[k], val, "{k}");
        }
        let p = pod(&v);
        assert_eq!(
            p.readiness_gates.as_ref().unwrap()[0].condition_type,
            "kinfer.dev/ModelReady"
        );
        let vols: Vec<_> = p
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(vols, ["models", "run", "tmp", "kube-api-access"]);
        assert_eq!(p.automount_service_account_token, Some(false));
        assert_eq!(p.service_account_name.as_deref(), Some("fraud-watcher"));
        let rt = container(&p, "runtime");
        let args = rt.args.as_ref().unwrap().join(" ");
        assert_eq!(
            args,
            "--model-name fraud --admin-socket /run/kinfer/admin.sock --log-format json --execution-provider cpu"
        );
        let ports: Vec<_> = rt
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [
                ("http".into(), 8080),
                ("grpc".into(), 8081),
                ("metrics".into(), 9090)
            ]
        );
        let live = rt
            .liveness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(live.path.as_deref(), Some("/v2/health/live"));
        let ready = rt
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(ready.path.as_deref(), Some("/v2/health/ready"));
        let w = container(&p, "watcher");
        assert_eq!(w.args.as_ref().unwrap(), &["run"]);
        let env: BTreeMap<_, _> = w
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e.name.as_str(),
                    e.value.clone().unwrap_or_else(|| {
                        e.value_from
                            .as_ref()
                            .unwrap()
                            .field_ref
                            .as_ref()
                            .unwrap()
                            .field_path
                            .clone()
                    }),
                )
            })
            .collect();
        assert_eq!(env["KINFER_POD_NAME"], "metadata.name");
        assert_eq!(env["KINFER_POD_NAMESPACE"], "metadata.namespace");
        assert_eq!(env["KINFER_INFERENCE_SERVICE"], "fraud");
        assert_eq!(env["KINFER_MODELS_DIR"], "/models");
        assert_eq!(env["KINFER_ADMIN_SOCKET"], "/run/kinfer/admin.sock");
        // The default 2Gi models volume: one artifact may use a third of it.
        assert_eq!(
            env["KINFER_MAX_ARTIFACT_BYTES"],
            (2u64 << 30).div_euclid(3).to_string()
        );
        let models = p
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "models")
            .unwrap();
        assert_eq!(
            models
                .empty_dir
                .as_ref()
                .unwrap()
                .size_limit
                .as_ref()
                .unwrap()
                .0,
            "2Gi"
        );
        let paths = |c: &Container| -> Vec<String> {
            c.volume_mounts
                .iter()
                .flatten()
                .map(|m| m.mount_path.clone())
                .collect()
        };
        // API credentials in the watcher only; the runtime has none.
        assert_eq!(paths(rt), ["/models", "/run/kinfer", "/tmp"]);
        assert_eq!(
            paths(w),
            [
                "/models",
                "/run/kinfer",
                "/tmp",
                "/var/run/secrets/kubernetes.io/serviceaccount"
            ]
        );
    }

    #[test]
    fn the_version_is_never_in_the_pod_template() {
        let a = validated(r#"{"modelVersion":"fraud-v7"}"#);
        let b = validated(r#"{"modelVersion":"fraud-v8"}"#);
        let ta = deployment(&a, &Defaults::default()).spec.unwrap().template;
        let tb = deployment(&b, &Defaults::default()).spec.unwrap().template;
        assert_eq!(ta, tb);
        assert!(!serde_json::to_string(&ta).unwrap().contains("fraud-v7"));
    }

    #[test]
    fn security_context_is_locked_down() {
        let p = pod(&validated(r#"{"modelVersion":"v"}"#));
        let ps = p.security_context.as_ref().unwrap();
        assert_eq!(ps.run_as_non_root, Some(true));
        assert_eq!(ps.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        for c in &p.containers {
            let s = c.security_context.as_ref().unwrap();
            assert_eq!(s.run_as_non_root, Some(true), "{}", c.name);
            assert_eq!(s.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(s.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(
                s.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_string()][..])
            );
            assert_eq!(s.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
            assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        }
    }

    #[test]
    fn runtime_flags_follow_the_spec() {
        let v = validated(
            r#"{"modelVersion":"v","runtime":{"image":"my/rt:1","interOpThreads":2,"instances":3,
               "intraOpThreads":4,"requestTimeout":"100ms",
               "batching":{"maxBatchSize":16,"maxQueueDelay":"2ms","queueCapacity":64}}}"#,
        );
        let args = runtime_args(&v).join(" ");
        assert!(args.contains("--intra-op-threads 4"), "{args}");
        assert!(
            args.contains("--inter-op-threads 2 --instances 3"),
            "{args}"
        );
        assert!(
            args.contains("--max-batch-size 16 --max-queue-delay 2ms --queue-capacity 64"),
            "{args}"
        );
        assert!(args.contains("--request-timeout 100ms"), "{args}");
        assert!(!args.contains("--cpu-affinity"));
        let p = pod(&v);
        assert_eq!(container(&p, "runtime").image.as_deref(), Some("my/rt:1"));
        assert_eq!(
            container(&p, "watcher").image.as_deref(),
            Some("kinfer.local/kinfer-watcher:0.1.0")
        );
    }

    #[test]
    fn replay_keeps_requests_only_when_asked() {
        let plain = runtime_args(&validated(r#"{"modelVersion":"v"}"#)).join(" ");
        assert!(!plain.contains("--replay"), "{plain}");
        let v = validated(
            r#"{"modelVersion":"v","rollout":{"analysis":{"replay":{"maxMemory":"8Mi","sampleRate":0.25}}}}"#,
        );
        let args = runtime_args(&v).join(" ");
        assert!(
            args.ends_with(
                "--replay-requests 2000 --replay-bytes 8388608 --replay-sample-rate 0.25"
            ),
            "{args}"
        );
    }

    #[test]
    fn policy_is_a_mounted_config_map() {
        let v = validated(
            r#"{"modelVersion":"v","policy":{"output":"score","thresholds":[{"min":0.9,"label":"block"}],"default":"allow"}}"#,
        );
        let cm = policy_config_map(&v).unwrap();
        assert_eq!(cm.metadata.name.as_deref(), Some("fraud-policy"));
        let text = &cm.data.as_ref().unwrap()["policy.yaml"];
        let back: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(back["output"], "score");
        assert_eq!(back["thresholds"][0]["label"], "block");
        let args = runtime_args(&v).join(" ");
        assert!(
            args.ends_with("--policy /etc/kinfer/policy/policy.yaml"),
            "{args}"
        );
        let d = deployment(&v, &Defaults::default());
        let t = d.spec.unwrap().template;
        assert!(
            t.metadata
                .unwrap()
                .annotations
                .unwrap()
                .contains_key(POLICY_HASH_ANNOTATION)
        );
        let p = t.spec.unwrap();
        let m = container(&p, "runtime")
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "policy")
            .unwrap()
            .clone();
        assert_eq!(
            (m.mount_path.as_str(), m.read_only),
            (POLICY_DIR, Some(true))
        );
    }

    #[test]
    fn autoscaling_leaves_replicas_to_the_hpa() {
        let v = validated(
            r#"{"modelVersion":"v","autoscaling":{"minReplicas":2,"maxReplicas":5,"metric":"queueDepth"}}"#,
        );
        assert_eq!(
            deployment(&v, &Defaults::default()).spec.unwrap().replicas,
            None
        );
    }
}
