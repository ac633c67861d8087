//! Validation of an InferenceService beyond what the CRD schema and its CEL rules can say: whole
//! CPUs for pinning, combinations that cannot be Guaranteed QoS, execution providers without
//! GPUs, names that cannot become Services. Pure: an invalid spec becomes an [`Invalid`] whose
//! `reason` and `message` go into the `Ready=False` condition and a Warning Event, and the
//! builders only ever see a [`Validated`] spec.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kinfer_api::{
    InferenceService, InferenceServiceSpec,
    inference_service::{ExecutionProvider, ScaleMetric},
};
use kube::{Resource, ResourceExt};

use kinfer_contract::flags::Tracing;

use crate::{objects::Defaults, quantity};

mod provider;

/// Longest InferenceService name: it becomes a Service name (a DNS-1035 label of at most 63
/// characters) and the prefix of `<name>-watcher`.
pub const MAX_NAME_LEN: usize = 55;

/// A spec the operator refuses, with what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// CamelCase reason for the condition and the Event.
    pub reason: &'static str,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl Invalid {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// A spec the builders can turn into objects.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// InferenceService name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Controller owner reference to the InferenceService.
    pub owner: OwnerReference,
    /// Logical model name (`kinfer.dev/model` label), when the ModelVersion is known.
    pub model: Option<String>,
    /// The spec.
    pub spec: InferenceServiceSpec,
    /// The execution provider the runtime is started with (`cuda` when GPUs are asked for and
    /// the spec left the provider at `cpu`).
    pub execution_provider: ExecutionProvider,
    /// Whole CPUs of the runtime container when `cpuPinning` is on.
    pub pinned_cpus: Option<i64>,
    /// Where the pods export spans, with `spec.tracing` (the endpoint resolved by
    /// [`Validated::with_defaults`]).
    pub tracing: Option<Tracing>,
}

impl Validated {
    /// Fills in what the operator's settings decide for this service, and refuses what they
    /// cannot serve: `spec.tracing` without an endpoint when the operator has no default one.
    pub fn with_defaults(mut self, d: &Defaults) -> Result<Self, Invalid> {
        self.tracing = match &self.spec.tracing {
            None => None,
            Some(t) => {
                let endpoint = t
                    .endpoint
                    .clone()
                    .or_else(|| d.pod_otlp_endpoint.clone())
                    .ok_or_else(|| {
                        Invalid::new(
                            "TracingNeedsEndpoint",
                            "spec.tracing names no endpoint and the operator has no default collector: set tracing.endpoint (http://HOST:4317) or the chart's tracing.podEndpoint",
                        )
                    })?;
                Some(Tracing {
                    endpoint,
                    sample_ratio: t.sample_ratio,
                })
            }
        };
        Ok(self)
    }
}

/// Checks an InferenceService; `model` is the logical model of its ModelVersion when known.
pub fn validate(isvc: &InferenceService, model: Option<String>) -> Result<Validated, Invalid> {
    let name = isvc.name_any();
    let namespace = isvc.namespace().unwrap_or_default();
    let spec = &isvc.spec;
    check_name(&name)?;
    let res = &spec.resources;
    if let Some(cpu) = &res.cpu
        && quantity::cpu_millis(&cpu.0).is_none()
    {
        return Err(Invalid::new(
            "InvalidCpu",
            format!(
                "resources.cpu {:?} is not a CPU quantity; write e.g. \"2\" or \"500m\"",
                cpu.0
            ),
        ));
    }
    if let Some(mem) = &res.memory
        && quantity::memory_bytes(&mem.0).is_none()
    {
        return Err(Invalid::new(
            "InvalidMemory",
            format!(
                "resources.memory {:?} is not a memory quantity; write e.g. \"1Gi\"",
                mem.0
            ),
        ));
    }
    let gpu = res.gpu.as_ref();
    if let Some(g) = gpu {
        if g.count < 1 {
            return Err(Invalid::new(
                "InvalidGpu",
                format!(
                    "resources.gpu.count is {}; ask for at least 1 GPU or remove the gpu block",
                    g.count
                ),
            ));
        }
        if !g.resource_name.contains('/') {
            return Err(Invalid::new(
                "InvalidGpu",
                format!(
                    "resources.gpu.resourceName {:?} is not an extended resource name; use the device plugin's name, e.g. \"nvidia.com/gpu\"",
                    g.resource_name
                ),
            ));
        }
    }
    let provider = provider::check(spec)?;
    let pinned_cpus = if res.cpu_pinning {
        let Some(cpu) = &res.cpu else {
            return Err(Invalid::new(
                "CpuPinningNeedsCpu",
                "resources.cpuPinning needs resources.cpu set to a whole number of CPUs (e.g. \"2\") so the pod can be Guaranteed QoS",
            ));
        };
        let Some(cpus) = quantity::whole_cpus(&cpu.0) else {
            return Err(Invalid::new(
                "CpuPinningNeedsWholeCpus",
                format!(
                    "resources.cpuPinning needs a whole number of CPUs but resources.cpu is {:?}; use e.g. \"{}\" (exclusive CPUs are only given to integer requests)",
                    cpu.0,
                    (quantity::cpu_millis(&cpu.0).unwrap_or(1000) as f64 / 1000.0)
                        .ceil()
                        .max(1.0)
                ),
            ));
        };
        if res.memory.is_none() {
            return Err(Invalid::new(
                "CpuPinningNeedsMemory",
                "resources.cpuPinning needs resources.memory (e.g. \"1Gi\"): Guaranteed QoS requires memory requests equal to limits on every container",
            ));
        }
        let instances = i64::from(spec.runtime.instances.unwrap_or(1).max(1));
        if let Some(t) = spec.runtime.intra_op_threads
            && i64::from(t) * instances > cpus
        {
            return Err(Invalid::new(
                "ThreadsExceedPinnedCpus",
                format!(
                    "runtime.intraOpThreads is {t} per instance × {instances} instance(s) but only {cpus} CPUs are pinned; remove intraOpThreads (it follows the pinned CPUs) or raise resources.cpu"
                ),
            ));
        }
        if instances > cpus {
            return Err(Invalid::new(
                "ThreadsExceedPinnedCpus",
                format!(
                    "runtime.instances is {instances} but only {cpus} CPUs are pinned: each instance's worker needs a CPU of its own; lower runtime.instances or raise resources.cpu"
                ),
            ));
        }
        Some(cpus)
    } else {
        None
    };
    if let Some(a) = &spec.autoscaling {
        if a.min_replicas < 1 || a.min_replicas > a.max_replicas {
            return Err(Invalid::new(
                "InvalidAutoscaling",
                format!(
                    "autoscaling needs 1 <= minReplicas <= maxReplicas, got {}..{}",
                    a.min_replicas, a.max_replicas
                ),
            ));
        }
        if a.metric == ScaleMetric::Cpu && res.cpu.is_none() {
            return Err(Invalid::new(
                "AutoscalingNeedsCpuRequest",
                "autoscaling on cpu utilisation needs resources.cpu (a CPU request to measure against); set resources.cpu or scale on queueDepth/p99",
            ));
        }
        if spec.rollout.canary.replicas > a.min_replicas {
            return Err(Invalid::new(
                "CanaryExceedsReplicas",
                format!(
                    "rollout.canary.replicas ({}) must be <= autoscaling.minReplicas ({})",
                    spec.rollout.canary.replicas, a.min_replicas
                ),
            ));
        }
    } else if spec.replicas > 0 && spec.rollout.canary.replicas > spec.replicas {
        return Err(Invalid::new(
            "CanaryExceedsReplicas",
            format!(
                "rollout.canary.replicas ({}) must be <= replicas ({})",
                spec.rollout.canary.replicas, spec.replicas
            ),
        ));
    }
    if let Some(q) = &spec.resources.model_storage
        && crate::quantity::memory_bytes(&q.0).is_none_or(|b| b < 3 << 20)
    {
        return Err(Invalid::new(
            "InvalidModelStorage",
            format!(
                "resources.modelStorage {:?} is not a size of at least 3Mi (for example 2Gi)",
                q.0
            ),
        ));
    }
    if let Some(r) = &spec.rollout.analysis.replay {
        let kept = crate::quantity::memory_bytes(&r.max_memory.0);
        let Some(kept) = kept.filter(|&b| b >= 1024) else {
            return Err(Invalid::new(
                "InvalidReplay",
                format!(
                    "rollout.analysis.replay.maxMemory {:?} is not a size of at least 1Ki (for example 16Mi)",
                    r.max_memory.0
                ),
            ));
        };
        let limit = spec
            .resources
            .memory
            .as_ref()
            .and_then(|m| crate::quantity::memory_bytes(&m.0));
        if let Some(limit) = limit
            && kept > limit / 4
        {
            return Err(Invalid::new(
                "InvalidReplay",
                format!(
                    "rollout.analysis.replay.maxMemory {} is more than a quarter of resources.memory {}: the kept requests would crowd out the models; lower it or raise the memory",
                    r.max_memory.0,
                    spec.resources.memory.as_ref().map_or("", |m| m.0.as_str())
                ),
            ));
        }
    }
    if let Some(alerts) = &spec.alerts {
        for w in &alerts.webhooks {
            if w.url.starts_with("http://") && !w.allow_insecure_http {
                return Err(Invalid::new(
                    "InvalidWebhook",
                    format!(
                        "alerts webhook {} is plain http: use https:// or set allowInsecureHttp: true",
                        crate::alerts::redact(&w.url)
                    ),
                ));
            }
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                return Err(Invalid::new(
                    "InvalidWebhook",
                    format!(
                        "alerts webhook url {} must start with https:// (or http://)",
                        crate::alerts::redact(&w.url)
                    ),
                ));
            }
        }
    }
    let owner = isvc
        .controller_owner_ref(&())
        .ok_or_else(|| Invalid::new("NoUid", "the InferenceService has no uid yet"))?;
    Ok(Validated {
        name,
        namespace,
        owner,
        model,
        spec: spec.clone(),
        execution_provider: provider,
        pinned_cpus,
        tracing: None,
    })
}

fn check_name(name: &str) -> Result<(), Invalid> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if name.len() > MAX_NAME_LEN
        || !ok_chars
        || !name.starts_with(|c: char| c.is_ascii_lowercase())
        || name.ends_with('-')
    {
        return Err(Invalid::new(
            "InvalidName",
            format!(
                "name {name:?} cannot name a Service: use at most {MAX_NAME_LEN} lower-case letters, digits and '-', starting with a letter"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kinfer_api::inference_service::{Autoscaling, GpuSpec};

    /// An InferenceService as the API server returns it (uid set), from YAML spec text.
    pub fn isvc(name: &str, spec_yaml: &str) -> InferenceService {
        let spec: InferenceServiceSpec = serde_yaml_from(spec_yaml);
        let mut i = InferenceService::new(name, spec);
        i.metadata.namespace = Some("ml".into());
        i.metadata.uid = Some("uid-1".into());
        i.metadata.generation = Some(1);
        i
    }

    fn serde_yaml_from(s: &str) -> InferenceServiceSpec {
        // The operator does not depend on serde_yaml; JSON is YAML's subset that tests need.
        serde_json::from_str(s).expect("valid spec JSON")
    }

    fn q(s: &str) -> Option<Quantity> {
        Some(Quantity(s.into()))
    }

    #[test]
    fn plain_spec_is_valid() {
        let v = validate(&isvc("fraud", r#"{"modelVersion":"fraud-v7"}"#), None).unwrap();
        assert_eq!(v.execution_provider, ExecutionProvider::Cpu);
        assert_eq!(v.pinned_cpus, None);
        assert_eq!(v.owner.kind, "InferenceService");
        assert_eq!(v.owner.controller, Some(true));
    }

    #[test]
    fn replay_memory_is_a_size_within_a_quarter_of_the_limit() {
        let mut i = isvc(
            "fraud",
            r#"{"modelVersion":"v","rollout":{"analysis":{"replay":{"maxMemory":"lots"}}}}"#,
        );
        let e = validate(&i, None).unwrap_err();
        assert_eq!(e.reason, "InvalidReplay");
        assert!(e.message.contains("\"lots\""), "{}", e.message);
        i.spec.rollout.analysis.replay.as_mut().unwrap().max_memory = Quantity("64Mi".into());
        assert!(
            validate(&i, None).is_ok(),
            "no memory limit to weigh it against"
        );
        i.spec.resources.memory = q("128Mi");
        let e = validate(&i, None).unwrap_err();
        assert!(
            e.message.contains("quarter of resources.memory 128Mi"),
            "{}",
            e.message
        );
        i.spec.resources.memory = q("256Mi");
        assert!(validate(&i, None).is_ok());
    }

    #[test]
    fn pinning_needs_whole_cpus_and_memory() {
        let mut i = isvc("fraud", r#"{"modelVersion":"v"}"#);
        i.spec.resources.cpu_pinning = true;
        assert_eq!(validate(&i, None).unwrap_err().reason, "CpuPinningNeedsCpu");
        i.spec.resources.cpu = q("1500m");
        let e = validate(&i, None).unwrap_err();
        assert_eq!(e.reason, "CpuPinningNeedsWholeCpus");
        assert!(e.message.contains("\"2\""), "{}", e.message);
        i.spec.resources.cpu = q("2");
        assert_eq!(
            validate(&i, None).unwrap_err().reason,
            "CpuPinningNeedsMemory"
        );
        i.spec.resources.memory = q("1Gi");
        assert_eq!(validate(&i, None).unwrap().pinned_cpus, Some(2));
        i.spec.runtime.intra_op_threads = Some(4);
        assert_eq!(
            validate(&i, None).unwrap_err().reason,
            "ThreadsExceedPinnedCpus"
        );
        // Two instances of one thread fit two CPUs; of two threads, or three instances, not.
        i.spec.runtime.intra_op_threads = Some(1);
        i.spec.runtime.instances = Some(2);
        assert_eq!(validate(&i, None).unwrap().pinned_cpus, Some(2));
        i.spec.runtime.intra_op_threads = Some(2);
        assert!(
            validate(&i, None)
                .unwrap_err()
                .message
                .contains("× 2 instance(s)")
        );
        i.spec.runtime.intra_op_threads = None;
        i.spec.runtime.instances = Some(3);
        let e = validate(&i, None).unwrap_err();
        assert_eq!(e.reason, "ThreadsExceedPinnedCpus");
        assert!(
            e.message.contains("runtime.instances is 3"),
            "{}",
            e.message
        );
    }

    #[test]
    fn gpu_and_pinning_is_guaranteed_when_cpu_and_memory_are_whole() {
        let mut i = isvc("fraud", r#"{"modelVersion":"v"}"#);
        i.spec.resources.gpu = Some(GpuSpec {
            count: 1,
            resource_name: "nvidia.com/gpu".into(),
            product: None,
        });
        i.spec.resources.cpu_pinning = true;
        i.spec.resources.cpu = q("0.5");
        assert_eq!(
            validate(&i, None).unwrap_err().reason,
            "CpuPinningNeedsWholeCpus"
        );
        i.spec.resources.cpu = q("4");
        i.spec.resources.memory = q("8Gi");
        let v = validate(&i, None).unwrap();
        assert_eq!(v.execution_provider, ExecutionProvider::Cuda);
        assert_eq!(v.pinned_cpus, Some(4));
        i.spec.resources.gpu.as_mut().unwrap().resource_name = "gpu".into();
        assert_eq!(validate(&i, None).unwrap_err().reason, "InvalidGpu");
    }

    #[test]
    fn gpu_provider_without_gpu_is_refused() {
        let i = isvc(
            "fraud",
            r#"{"modelVersion":"v","runtime":{"executionProvider":"tensorrt"}}"#,
        );
        let e = validate(&i, None).unwrap_err();
        assert_eq!(e.reason, "ExecutionProviderNeedsGpu");
        assert!(e.message.contains("resources.gpu"));
    }

    #[test]
    fn plain_http_webhooks_need_the_opt_in_and_errors_never_show_the_path() {
        let hook = |extra: &str| {
            isvc(
                "fraud",
                &format!(
                    r#"{{"modelVersion":"v","alerts":{{"webhooks":[{{"url":"http://hooks.example/services/T0/B0/secret"{extra}}}]}}}}"#
                ),
            )
        };
        let e = validate(&hook(""), None).unwrap_err();
        assert_eq!(e.reason, "InvalidWebhook");
        assert!(e.message.contains("allowInsecureHttp"), "{}", e.message);
        assert!(!e.message.contains("secret"), "{}", e.message);
        assert!(validate(&hook(r#","allowInsecureHttp":true"#), None).is_ok());
    }

    #[test]
    fn model_storage_must_be_a_size() {
        for bad in ["lots", "1Ki", "-2Gi"] {
            let i = isvc(
                "fraud",
                &format!(r#"{{"modelVersion":"v","resources":{{"modelStorage":"{bad}"}}}}"#),
            );
            let e = validate(&i, None).unwrap_err();
            assert_eq!(e.reason, "InvalidModelStorage", "{bad}");
        }
        let ok = isvc(
            "fraud",
            r#"{"modelVersion":"v","resources":{"modelStorage":"10Gi"}}"#,
        );
        assert!(validate(&ok, None).is_ok());
    }

    #[test]
    fn autoscaling_rules() {
        let mut i = isvc("fraud", r#"{"modelVersion":"v"}"#);
        i.spec.autoscaling = Some(Autoscaling {
            min_replicas: 2,
            max_replicas: 5,
            metric: ScaleMetric::Cpu,
            target: None,
            scale_down_stabilization: None,
        });
        assert_eq!(
            validate(&i, None).unwrap_err().reason,
            "AutoscalingNeedsCpuRequest"
        );
        i.spec.autoscaling.as_mut().unwrap().metric = ScaleMetric::QueueDepth;
        assert!(validate(&i, None).is_ok());
        i.spec.rollout.canary.replicas = 3;
        assert_eq!(
            validate(&i, None).unwrap_err().reason,
            "CanaryExceedsReplicas"
        );
    }

    #[test]
    fn names_that_cannot_be_services_are_refused() {
        let long = "a".repeat(60);
        assert_eq!(
            validate(&isvc(&long, r#"{"modelVersion":"v"}"#), None)
                .unwrap_err()
                .reason,
            "InvalidName"
        );
        assert_eq!(
            validate(&isvc("9lives", r#"{"modelVersion":"v"}"#), None)
                .unwrap_err()
                .reason,
            "InvalidName"
        );
    }
}
