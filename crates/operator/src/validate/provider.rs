//! The execution provider a service runs on and its options: `cuda` when GPUs are asked for and
//! the spec left the provider at `cpu`, a GPU provider only with GPUs, and each provider option
//! only where its provider reads it (an option that would be ignored is refused, not dropped).

use kinfer_api::{InferenceServiceSpec, execution::ExecutionProvider};

use super::Invalid;
use crate::quantity;

const REASON: &str = "InvalidProviderOptions";

/// The provider the runtime is started with, once the options fit it.
pub fn check(spec: &InferenceServiceSpec) -> Result<ExecutionProvider, Invalid> {
    let gpu = spec.resources.gpu.as_ref();
    let provider = match (spec.runtime.execution_provider, gpu) {
        (ExecutionProvider::Cpu, Some(_)) => ExecutionProvider::Cuda,
        (p, Some(_)) => p,
        (ExecutionProvider::Cpu, None) => ExecutionProvider::Cpu,
        (p, None) => {
            return Err(Invalid::new(
                "ExecutionProviderNeedsGpu",
                format!(
                    "runtime.executionProvider is {} but resources.gpu is not set; add resources.gpu {{count: 1}} or use executionProvider: cpu",
                    p.as_str()
                ),
            ));
        }
    };
    let (Some(o), Some(g)) = (&spec.runtime.provider_options, gpu) else {
        return match spec.runtime.provider_options {
            Some(_) => Err(Invalid::new(
                REASON,
                "runtime.providerOptions applies to the cuda and tensorrt providers, and this service runs on the CPU; set resources.gpu or remove providerOptions",
            )),
            None => Ok(provider),
        };
    };
    if let Some(d) = o.device_id
        && d >= g.count
    {
        return Err(Invalid::new(
            REASON,
            format!(
                "runtime.providerOptions.deviceId {d} is not among the container's {} GPU(s) (resources.gpu.count); devices are counted from 0 inside the container",
                g.count
            ),
        ));
    }
    let trt = provider == ExecutionProvider::Tensorrt;
    if o.fp16 && !trt {
        return Err(Invalid::new(
            REASON,
            "runtime.providerOptions.fp16 needs executionProvider: tensorrt (the CUDA provider runs a model in the precision it was exported in; export an fp16 model instead)",
        ));
    }
    if let Some(cache) = &o.engine_cache {
        if !trt {
            return Err(Invalid::new(
                REASON,
                "runtime.providerOptions.engineCache needs executionProvider: tensorrt (only TensorRT builds engines)",
            ));
        }
        if let Some(claim) = &cache.claim_name
            && !is_dns_subdomain(claim)
        {
            return Err(Invalid::new(
                REASON,
                format!(
                    "runtime.providerOptions.engineCache.claimName {claim:?} is not a PersistentVolumeClaim name (lower-case letters, digits, '-' and '.', at most 253)"
                ),
            ));
        }
        if let Some(size) = &cache.size_limit
            && quantity::memory_bytes(&size.0).is_none()
        {
            return Err(Invalid::new(
                REASON,
                format!(
                    "runtime.providerOptions.engineCache.sizeLimit {:?} is not a size; write e.g. \"4Gi\"",
                    size.0
                ),
            ));
        }
    }
    Ok(provider)
}

fn is_dns_subdomain(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 253
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::super::{tests::isvc, validate};

    fn reason(spec: &str) -> Result<&'static str, String> {
        match validate(&isvc("fraud", spec), None) {
            Ok(v) => Err(format!("valid: {:?}", v.execution_provider)),
            Err(e) => {
                assert!(
                    e.message.contains("runtime.") || e.message.contains("resources.gpu"),
                    "{}",
                    e.message
                );
                Ok(e.reason)
            }
        }
    }

    const GPU: &str = r#""resources":{"gpu":{"count":2}}"#;

    #[test]
    fn options_fit_the_provider_and_the_gpus() {
        let ok = |runtime: &str| {
            validate(
                &isvc(
                    "fraud",
                    &format!(r#"{{"modelVersion":"v",{GPU},"runtime":{runtime}}}"#),
                ),
                None,
            )
            .map(|v| v.execution_provider.as_str())
        };
        assert_eq!(
            ok(r#"{"providerOptions":{"deviceId":1,"cudnnConvAlgoSearch":"heuristic"}}"#),
            Ok("cuda")
        );
        assert_eq!(
            ok(
                r#"{"executionProvider":"tensorrt","providerOptions":{"fp16":true,"engineCache":{"claimName":"trt-engines"}}}"#
            ),
            Ok("tensorrt")
        );
        let refused = |runtime: &str| {
            reason(&format!(
                r#"{{"modelVersion":"v",{GPU},"runtime":{runtime}}}"#
            ))
        };
        assert_eq!(
            refused(r#"{"providerOptions":{"deviceId":2}}"#),
            Ok("InvalidProviderOptions")
        );
        assert_eq!(
            refused(r#"{"providerOptions":{"fp16":true}}"#),
            Ok("InvalidProviderOptions")
        );
        assert_eq!(
            refused(r#"{"providerOptions":{"engineCache":{}}}"#),
            Ok("InvalidProviderOptions")
        );
        assert_eq!(
            refused(
                r#"{"executionProvider":"tensorrt","providerOptions":{"engineCache":{"claimName":"Bad_Name"}}}"#
            ),
            Ok("InvalidProviderOptions")
        );
        assert_eq!(
            refused(
                r#"{"executionProvider":"tensorrt","providerOptions":{"engineCache":{"sizeLimit":"lots"}}}"#
            ),
            Ok("InvalidProviderOptions")
        );
        // On the CPU the options would be ignored: refused.
        assert_eq!(
            reason(r#"{"modelVersion":"v","runtime":{"providerOptions":{"deviceId":0}}}"#),
            Ok("InvalidProviderOptions")
        );
    }
}
