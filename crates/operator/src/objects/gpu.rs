//! What a GPU service's runtime container gets beyond a CPU one: the GPU runtime image (ONNX
//! Runtime with the CUDA provider and the CUDA libraries), the providers' flags from
//! `runtime.providerOptions`, and TensorRT's engine-cache volume so a restarted container loads
//! its engines instead of building them again.

use k8s_openapi::{
    api::core::v1::{EmptyDirVolumeSource, PersistentVolumeClaimVolumeSource, Volume, VolumeMount},
    apimachinery::pkg::api::resource::Quantity,
};
use kinfer_api::execution::{EngineCache, ExecutionProvider};
use kinfer_contract::flags::ProviderFlags;

use super::Defaults;
use crate::validate::Validated;

/// Where TensorRT's engine and timing caches live in the runtime container.
pub const ENGINE_CACHE_DIR: &str = "/var/cache/kinfer/tensorrt";
/// The engine-cache volume's name.
pub const ENGINE_CACHE_VOLUME: &str = "tensorrt-cache";
/// Size limit of the engine cache's emptyDir when the spec gives none.
pub const DEFAULT_ENGINE_CACHE_SIZE: &str = "4Gi";

/// The runtime image: the spec's, else the operator's GPU image for a service with GPUs, else
/// its CPU image.
pub fn runtime_image(v: &Validated, d: &Defaults) -> String {
    match (&v.spec.runtime.image, &v.spec.resources.gpu) {
        (Some(image), _) => image.clone(),
        (None, Some(_)) => d.runtime_gpu_image.clone(),
        (None, None) => d.runtime_image.clone(),
    }
}

/// The runtime's provider flags.
pub fn provider_flags(v: &Validated) -> ProviderFlags {
    let o = v.spec.runtime.provider_options.as_ref();
    ProviderFlags {
        device_id: o.and_then(|o| o.device_id).map(i64::from),
        cudnn_conv_algo_search: o
            .and_then(|o| o.cudnn_conv_algo_search)
            .map(|s| s.as_str().into()),
        trt_fp16: o.is_some_and(|o| o.fp16),
        trt_engine_cache: engine_cache(v).map(|_| ENGINE_CACHE_DIR.into()),
    }
}

/// TensorRT's cache settings, unless the service is not on TensorRT or turned the cache off.
fn engine_cache(v: &Validated) -> Option<EngineCache> {
    let cache = v
        .spec
        .runtime
        .provider_options
        .as_ref()
        .and_then(|o| o.engine_cache.clone())
        .unwrap_or_default();
    (v.execution_provider == ExecutionProvider::Tensorrt && !cache.disabled).then_some(cache)
}

/// The engine cache's volume and the runtime's mount of it, for a TensorRT service.
pub fn engine_cache_volume(v: &Validated) -> Option<(Volume, VolumeMount)> {
    let cache = engine_cache(v)?;
    let volume = match cache.claim_name {
        Some(claim) => Volume {
            name: ENGINE_CACHE_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim,
                read_only: Some(false),
            }),
            ..Default::default()
        },
        None => Volume {
            name: ENGINE_CACHE_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: None,
                size_limit: Some(
                    cache
                        .size_limit
                        .unwrap_or_else(|| Quantity(DEFAULT_ENGINE_CACHE_SIZE.into())),
                ),
            }),
            ..Default::default()
        },
    };
    let mount = VolumeMount {
        name: ENGINE_CACHE_VOLUME.into(),
        mount_path: ENGINE_CACHE_DIR.into(),
        ..Default::default()
    };
    Some((volume, mount))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        objects::deployment::{deployment, runtime_args},
        validate::{tests::isvc, validate},
    };

    fn build(spec: &str) -> Validated {
        validate(&isvc("fraud", spec), None).expect("valid")
    }

    fn runtime(
        d: &k8s_openapi::api::apps::v1::Deployment,
    ) -> &k8s_openapi::api::core::v1::Container {
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        pod.containers.iter().find(|c| c.name == "runtime").unwrap()
    }

    #[test]
    fn a_gpu_service_gets_the_gpu_image_unless_it_names_one() {
        let d = Defaults::default();
        let gpu = build(r#"{"modelVersion":"v","resources":{"gpu":{"count":1}}}"#);
        assert_eq!(
            runtime(&deployment(&gpu, &d)).image.as_deref(),
            Some(d.runtime_gpu_image.as_str())
        );
        let cpu = build(r#"{"modelVersion":"v"}"#);
        assert_eq!(
            runtime(&deployment(&cpu, &d)).image.as_deref(),
            Some(d.runtime_image.as_str())
        );
        let own = build(
            r#"{"modelVersion":"v","resources":{"gpu":{"count":1}},"runtime":{"image":"r/own:1"}}"#,
        );
        assert_eq!(
            runtime(&deployment(&own, &d)).image.as_deref(),
            Some("r/own:1")
        );
    }

    #[test]
    fn provider_options_become_the_runtimes_flags() {
        let v = build(
            r#"{"modelVersion":"v","resources":{"gpu":{"count":2}},
                "runtime":{"providerOptions":{"deviceId":1,"cudnnConvAlgoSearch":"heuristic"}}}"#,
        );
        let args = runtime_args(&v).join(" ");
        assert!(
            args.contains(
                "--execution-provider cuda --cuda-device-id 1 --cudnn-conv-algo-search heuristic"
            ),
            "{args}"
        );
        assert!(!args.contains("--trt-"), "{args}");
        assert!(engine_cache_volume(&v).is_none());
    }

    #[test]
    fn tensorrt_keeps_its_engines_on_a_volume() {
        let d = Defaults::default();
        // Default: an emptyDir (outlives container restarts), mounted where the flag points.
        let v = build(
            r#"{"modelVersion":"v","resources":{"gpu":{"count":1}},"runtime":{"executionProvider":"tensorrt","providerOptions":{"fp16":true}}}"#,
        );
        let args = runtime_args(&v).join(" ");
        assert!(
            args.contains("--trt-fp16 --trt-engine-cache /var/cache/kinfer/tensorrt"),
            "{args}"
        );
        let dep = deployment(&v, &d);
        let pod = dep.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let vol = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|x| x.name == ENGINE_CACHE_VOLUME)
            .unwrap();
        assert_eq!(
            vol.empty_dir.as_ref().unwrap().size_limit,
            Some(Quantity("4Gi".into()))
        );
        let m = runtime(&dep).volume_mounts.as_ref().unwrap();
        assert!(
            m.iter()
                .any(|m| m.name == ENGINE_CACHE_VOLUME && m.mount_path == ENGINE_CACHE_DIR),
            "{m:?}"
        );
        // A claim: engines outlive the pod.
        let v = build(
            r#"{"modelVersion":"v","resources":{"gpu":{"count":1}},"runtime":{"executionProvider":"tensorrt","providerOptions":{"engineCache":{"claimName":"engines"}}}}"#,
        );
        let (vol, _) = engine_cache_volume(&v).unwrap();
        assert_eq!(vol.persistent_volume_claim.unwrap().claim_name, "engines");
        // Off: no volume, no flag.
        let v = build(
            r#"{"modelVersion":"v","resources":{"gpu":{"count":1}},"runtime":{"executionProvider":"tensorrt","providerOptions":{"engineCache":{"disabled":true}}}}"#,
        );
        assert!(engine_cache_volume(&v).is_none());
        assert!(!runtime_args(&v).join(" ").contains("--trt-engine-cache"));
    }
}
