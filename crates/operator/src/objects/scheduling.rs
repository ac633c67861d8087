//! Scheduling: container resources, GPUs (limits, node selector on the product label,
//! toleration) and CPU pinning (Guaranteed QoS, whole CPUs for the runtime, the CRI-O /
//! performance-profile annotations).
//!
//! Pinned pods: the runtime gets `resources.cpu` whole CPUs and `resources.memory`, requests =
//! limits; the watcher gets [`PINNED_WATCHER_CPU`] and [`PINNED_WATCHER_MEMORY`], requests =
//! limits, because Guaranteed QoS needs requests = limits on *every* container. The static CPU
//! manager gives exclusive CPUs only to containers with integer requests, so the runtime gets its
//! own cores and the watcher (idle between rollouts) runs in the shared pool instead of taking a
//! whole core of its own. Unpinned pods: requests from the
//! spec, a memory limit equal to the request, no CPU limit (CFS throttling hurts tail latency),
//! and a small burstable watcher.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};

use super::pod::requirements;
use crate::validate::Validated;

/// Node label the GPU product is selected on (NVIDIA GPU feature discovery).
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
/// Watcher CPU in a pinned pod (requests = limits, from the shared pool: enough to hash and
/// fetch an artifact at a few hundred MB/s).
pub const PINNED_WATCHER_CPU: &str = "250m";
/// Watcher memory in a pinned pod (requests = limits).
pub const PINNED_WATCHER_MEMORY: &str = "128Mi";
/// Watcher requests in an unpinned pod.
pub const WATCHER_CPU_REQUEST: &str = "50m";
/// Watcher memory request and limit in an unpinned pod.
pub const WATCHER_MEMORY: &str = "128Mi";
/// The CRI-O annotations a performance profile's runtime class honours for a pinned pod.
pub const PINNING_ANNOTATIONS: [&str; 3] = [
    "cpu-load-balancing.crio.io",
    "cpu-quota.crio.io",
    "irq-load-balancing.crio.io",
];

/// The runtime's request-memory limits for a container memory limit, as
/// (`--max-inflight-bytes`, `--max-message-bytes`): a quarter of it for request bytes in flight
/// and at most the runtime's default 64 MiB per message, so a flood of large requests is shed
/// before it reaches the limit. `None` without a memory limit (the runtime's defaults apply).
pub fn memory_limits(v: &Validated) -> Option<(u128, u128)> {
    const DEFAULT_MESSAGE: u128 = 64 << 20;
    const FLOOR: u128 = 1 << 20;
    let bytes = v
        .spec
        .resources
        .memory
        .as_ref()
        .and_then(|m| crate::quantity::memory_bytes(&m.0))?;
    let budget = (bytes / 4).max(FLOOR);
    Some((budget, budget.min(DEFAULT_MESSAGE)))
}

/// Resources of the runtime container.
pub fn runtime_resources(v: &Validated) -> ResourceRequirements {
    let r = &v.spec.resources;
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if let Some(cpu) = &r.cpu {
        requests.insert("cpu".to_string(), cpu.0.clone());
        if v.pinned_cpus.is_some() {
            limits.insert("cpu".to_string(), cpu.0.clone());
        }
    }
    if let Some(mem) = &r.memory {
        requests.insert("memory".to_string(), mem.0.clone());
        limits.insert("memory".to_string(), mem.0.clone());
    }
    if let Some(g) = &r.gpu {
        // Extended resources: the limit is what counts; the request defaults to it.
        limits.insert(g.resource_name.clone(), g.count.to_string());
        requests.insert(g.resource_name.clone(), g.count.to_string());
    }
    requirements(requests, limits)
}

/// Resources of the watcher container.
pub fn watcher_resources(v: &Validated) -> ResourceRequirements {
    let m = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    if v.pinned_cpus.is_some() {
        let both = m(&[
            ("cpu", PINNED_WATCHER_CPU),
            ("memory", PINNED_WATCHER_MEMORY),
        ]);
        requirements(both.clone(), both)
    } else {
        requirements(
            m(&[("cpu", WATCHER_CPU_REQUEST), ("memory", WATCHER_MEMORY)]),
            m(&[("memory", WATCHER_MEMORY)]),
        )
    }
}

/// Pod-template annotations: the CPU pinning ones when pinned.
pub fn pod_annotations(v: &Validated) -> BTreeMap<String, String> {
    if v.pinned_cpus.is_some() {
        PINNING_ANNOTATIONS
            .iter()
            .map(|k| (k.to_string(), "disable".to_string()))
            .collect()
    } else {
        BTreeMap::new()
    }
}

/// Node selector and tolerations for GPUs.
pub fn gpu_placement(v: &Validated) -> (Option<BTreeMap<String, String>>, Option<Vec<Toleration>>) {
    let Some(g) = &v.spec.resources.gpu else {
        return (None, None);
    };
    let selector = g
        .product
        .as_ref()
        .map(|p| BTreeMap::from([(GPU_PRODUCT_LABEL.to_string(), p.clone())]));
    let toleration = Toleration {
        key: Some(g.resource_name.clone()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    };
    (selector, Some(vec![toleration]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{
        Defaults, deployment::deployment, deployment::runtime_args, tests::validated,
    };
    use k8s_openapi::api::core::v1::PodSpec;

    #[test]
    fn memory_limits_size_the_request_budget() {
        let flags = |spec: &str| runtime_args(&validated(spec)).join(" ");
        let gi = flags(r#"{"modelVersion":"v","resources":{"memory":"1Gi"}}"#);
        assert!(
            gi.contains("--max-inflight-bytes 268435456 --max-message-bytes 67108864"),
            "{gi}"
        );
        let small = flags(r#"{"modelVersion":"v","resources":{"memory":"128Mi"}}"#);
        assert!(
            small.contains("--max-inflight-bytes 33554432 --max-message-bytes 33554432"),
            "{small}"
        );
        assert!(!flags(r#"{"modelVersion":"v"}"#).contains("--max-inflight-bytes"));
    }

    fn pod(spec: &str) -> (PodSpec, BTreeMap<String, String>) {
        let v = validated(spec);
        let t = deployment(&v, &Defaults::default()).spec.unwrap().template;
        (
            t.spec.unwrap(),
            t.metadata.unwrap().annotations.unwrap_or_default(),
        )
    }

    fn q(
        r: &Option<BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
        k: &str,
    ) -> Option<String> {
        r.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone())
    }

    #[test]
    fn cpu_pod_is_burstable_without_cpu_limit() {
        let (p, ann) = pod(r#"{"modelVersion":"v","resources":{"cpu":"2","memory":"1Gi"}}"#);
        let r = p.containers[0].resources.as_ref().unwrap();
        assert_eq!(q(&r.requests, "cpu").as_deref(), Some("2"));
        assert_eq!(q(&r.limits, "cpu"), None);
        assert_eq!(q(&r.limits, "memory").as_deref(), Some("1Gi"));
        assert!(ann.is_empty());
        assert!(p.node_selector.is_none() && p.tolerations.is_none());
    }

    #[test]
    fn gpu_pod_gets_limits_selector_toleration_and_provider() {
        let v = validated(
            r#"{"modelVersion":"v","resources":{"gpu":{"count":2,"product":"NVIDIA-H100-80GB-HBM3"}}}"#,
        );
        let (p, _) = pod(
            r#"{"modelVersion":"v","resources":{"gpu":{"count":2,"product":"NVIDIA-H100-80GB-HBM3"}}}"#,
        );
        let r = p.containers[0].resources.as_ref().unwrap();
        assert_eq!(q(&r.limits, "nvidia.com/gpu").as_deref(), Some("2"));
        assert_eq!(
            p.node_selector.as_ref().unwrap()["nvidia.com/gpu.product"],
            "NVIDIA-H100-80GB-HBM3"
        );
        let t = &p.tolerations.as_ref().unwrap()[0];
        assert_eq!(
            (t.key.as_deref(), t.operator.as_deref(), t.effect.as_deref()),
            (Some("nvidia.com/gpu"), Some("Exists"), Some("NoSchedule"))
        );
        let args = runtime_args(&v).join(" ");
        assert!(args.contains("--execution-provider cuda"), "{args}");
        assert!(!args.contains("--ep-fallback"), "{args}");
        // The watcher asks for no GPU.
        let w = p.containers[1].resources.as_ref().unwrap();
        assert_eq!(q(&w.limits, "nvidia.com/gpu"), None);
    }

    #[test]
    fn gpu_without_product_has_no_selector_and_tensorrt_is_kept() {
        let v = validated(
            r#"{"modelVersion":"v","runtime":{"executionProvider":"tensorrt"},
                "resources":{"gpu":{"count":1,"resourceName":"amd.com/gpu"}}}"#,
        );
        let (sel, tol) = gpu_placement(&v);
        assert!(sel.is_none());
        assert_eq!(tol.unwrap()[0].key.as_deref(), Some("amd.com/gpu"));
        assert!(
            runtime_args(&v)
                .join(" ")
                .contains("--execution-provider tensorrt")
        );
    }

    #[test]
    fn pinned_pod_is_guaranteed_on_every_container() {
        let spec =
            r#"{"modelVersion":"v","resources":{"cpu":"4","memory":"2Gi","cpuPinning":true}}"#;
        let (p, ann) = pod(spec);
        for c in &p.containers {
            let r = c.resources.as_ref().unwrap();
            for k in ["cpu", "memory"] {
                let req = q(&r.requests, k);
                assert!(req.is_some(), "{} {k}", c.name);
                assert_eq!(
                    req,
                    q(&r.limits, k),
                    "{} {k}: requests must equal limits",
                    c.name
                );
            }
        }
        // Exclusive cores for the runtime only; the watcher shares the pool.
        let cpu = |i: usize| q(&p.containers[i].resources.as_ref().unwrap().requests, "cpu");
        assert!(crate::quantity::whole_cpus(&cpu(0).unwrap()).is_some());
        assert_eq!(p.containers[1].name, "watcher");
        assert_eq!(cpu(1).as_deref(), Some(PINNED_WATCHER_CPU));
        assert_eq!(
            q(&p.containers[0].resources.as_ref().unwrap().limits, "cpu").as_deref(),
            Some("4")
        );
        for k in PINNING_ANNOTATIONS {
            assert_eq!(ann[k], "disable");
        }
        let args = runtime_args(&validated(spec)).join(" ");
        assert!(args.contains("--intra-op-threads 4"), "{args}");
        assert!(
            args.contains("--cpu-affinity auto --exclusive-cpus 4"),
            "{args}"
        );
        // Two instances share the four pinned CPUs out: two threads each.
        let two = r#"{"modelVersion":"v","runtime":{"instances":2},
            "resources":{"cpu":"4","memory":"2Gi","cpuPinning":true}}"#;
        let args = runtime_args(&validated(two)).join(" ");
        assert!(args.contains("--intra-op-threads 2"), "{args}");
        assert!(args.contains("--instances 2"), "{args}");
    }

    #[test]
    fn pinned_gpu_pod_is_guaranteed_too() {
        let (p, _) = pod(
            r#"{"modelVersion":"v","resources":{"cpu":"2","memory":"4Gi","cpuPinning":true,"gpu":{"count":1}}}"#,
        );
        let r = p.containers[0].resources.as_ref().unwrap();
        assert_eq!(
            q(&r.requests, "nvidia.com/gpu"),
            q(&r.limits, "nvidia.com/gpu")
        );
        assert_eq!(q(&r.requests, "cpu"), q(&r.limits, "cpu"));
    }
}
