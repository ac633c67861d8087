//! ONNX Runtime at the edge: loading the shared library, building sessions, reading a model's
//! declared inputs and outputs, and running a session on tensors ([`OrtExecutor`], what one
//! batching worker owns).

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, Instant},
};

use ort::{
    ep::ExecutionProvider as _,
    session::{Session, SessionInputValue, SessionInputs, builder::GraphOptimizationLevel},
    value::{DynValue, Tensor as OrtTensor, TensorElementType, TensorRef, ValueType},
};
use smallvec::SmallVec;

use crate::{
    batching::Executor,
    tensor::{DataType, Tensor, TensorSpec, TensorView},
};

/// Why ONNX Runtime or a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No library path was given.
    #[error(
        "ONNX Runtime library not configured: pass --ort-lib PATH or set ORT_DYLIB_PATH to libonnxruntime.so (scripts/fetch-onnxruntime.sh prints a path)"
    )]
    NoLibrary,
    /// The library file is missing.
    #[error(
        "ONNX Runtime library {0} does not exist: check --ort-lib / ORT_DYLIB_PATH (scripts/fetch-onnxruntime.sh fetches it)"
    )]
    LibraryMissing(PathBuf),
    /// dlopen or the API version check failed.
    #[error("cannot load ONNX Runtime from {path}: {source} (kinfer needs ONNX Runtime 1.31)")]
    Library {
        /// The library path.
        path: PathBuf,
        /// What ort said (dlopen, or the API version check).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The model file could not be read or compiled, or its warm-up failed.
    #[error("cannot load model {path}: {source}")]
    Model {
        /// The model path.
        path: PathBuf,
        /// What ONNX Runtime said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A worker thread for a loaded version could not be started.
    #[error("cannot start a worker thread for model {path}: {source}")]
    Worker {
        /// The model path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The model uses a type kinfer cannot serve.
    #[error("model {path}: {reason}")]
    Unsupported {
        /// The model path.
        path: PathBuf,
        /// Which input or output, and its type.
        reason: String,
    },
    /// The requested execution provider is not in this ONNX Runtime build.
    #[error(
        "execution provider {0} is not in this ONNX Runtime build (the CPU-only libonnxruntime); use the GPU runtime image (kinfer-runtime-gpu) or pass --ep-fallback cpu"
    )]
    ProviderUnavailable(&'static str),
    /// The provider is in the build but cannot start here: a CUDA library, the driver or the
    /// device is missing. ORT's message names which.
    #[error(
        "execution provider {provider} cannot start: {source} (a GPU node needs the NVIDIA driver's libcuda.so.1 and a GPU given to the container; the image needs the CUDA, cuDNN and, for tensorrt, TensorRT libraries; --ep-fallback cpu serves on the CPU instead)"
    )]
    ProviderFailed {
        /// `cuda` or `tensorrt`.
        provider: &'static str,
        /// What ONNX Runtime said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Loads the ONNX Runtime shared library once per process.
pub fn init_ort(lib: Option<&Path>) -> Result<(), LoadError> {
    let path = lib.ok_or(LoadError::NoLibrary)?;
    if !path.is_file() {
        return Err(LoadError::LibraryMissing(path.to_owned()));
    }
    let builder = ort::init_from(path).map_err(|e| LoadError::Library {
        path: path.to_owned(),
        source: e.into(),
    })?;
    let environment = builder
        .with_name("kinfer")
        .build()
        .map_err(|e| LoadError::Library {
            path: path.to_owned(),
            source: e.into(),
        })?;
    let _ = ENVIRONMENT.set(environment);
    Ok(())
}

/// The process's ONNX Runtime environment, set once by [`init_ort`].
static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

/// Execution providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Provider {
    /// CPU.
    Cpu,
    /// NVIDIA CUDA.
    Cuda,
    /// NVIDIA TensorRT (CUDA for the nodes TensorRT does not take).
    Tensorrt,
}

impl Provider {
    /// The name in flags, metadata and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Tensorrt => "tensorrt",
        }
    }
}

/// cuDNN's convolution algorithm search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvAlgoSearch {
    /// Benchmark every algorithm on first use.
    Exhaustive,
    /// cuDNN's heuristics.
    Heuristic,
    /// The default algorithm.
    Default,
}

/// Options of the GPU providers (`--cuda-device-id`, `--cudnn-conv-algo-search`, `--trt-fp16`,
/// `--trt-engine-cache`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuOptions {
    /// CUDA device among the process's GPUs.
    pub device_id: u32,
    /// cuDNN's search; ORT's default (exhaustive) when `None`.
    pub conv_algo_search: Option<ConvAlgoSearch>,
    /// TensorRT fp16 engines.
    pub trt_fp16: bool,
    /// TensorRT engine cache directory.
    pub trt_engine_cache: Option<PathBuf>,
}

impl GpuOptions {
    /// Refuses options the provider would ignore, naming the flag.
    pub fn check(&self, provider: Provider) -> Result<(), String> {
        let gpu = provider != Provider::Cpu;
        let trt = provider == Provider::Tensorrt;
        let set = [
            ("--cuda-device-id", self.device_id != 0, gpu),
            (
                "--cudnn-conv-algo-search",
                self.conv_algo_search.is_some(),
                gpu,
            ),
            ("--trt-fp16", self.trt_fp16, trt),
            ("--trt-engine-cache", self.trt_engine_cache.is_some(), trt),
        ];
        match set.iter().find(|(_, given, allowed)| *given && !*allowed) {
            Some((flag, ..)) => Err(format!(
                "{flag} does not apply to --execution-provider {}{}",
                provider.as_str(),
                if gpu { " (TensorRT only)" } else { "" }
            )),
            None => Ok(()),
        }
    }
}

/// The ORT provider options (name, value) of `provider`, in the order they are set: the
/// TensorRT provider's own, then the CUDA provider's (TensorRT runs with CUDA behind it).
pub fn provider_config(
    provider: Provider,
    o: &GpuOptions,
) -> Vec<(Provider, &'static str, String)> {
    let mut out = Vec::new();
    let device = o.device_id.to_string();
    if provider == Provider::Tensorrt {
        out.push((Provider::Tensorrt, "device_id", device.clone()));
        if o.trt_fp16 {
            out.push((Provider::Tensorrt, "trt_fp16_enable", "1".into()));
        }
        if let Some(dir) = &o.trt_engine_cache {
            out.push((Provider::Tensorrt, "trt_engine_cache_enable", "1".into()));
            out.push((
                Provider::Tensorrt,
                "trt_engine_cache_path",
                dir.display().to_string(),
            ));
            // The timing cache makes a rebuild for a new shape fast too.
            out.push((Provider::Tensorrt, "trt_timing_cache_enable", "1".into()));
            out.push((
                Provider::Tensorrt,
                "trt_timing_cache_path",
                dir.display().to_string(),
            ));
        }
    }
    if provider != Provider::Cpu {
        out.push((Provider::Cuda, "device_id", device));
        if let Some(search) = o.conv_algo_search {
            let v = match search {
                ConvAlgoSearch::Exhaustive => "EXHAUSTIVE",
                ConvAlgoSearch::Heuristic => "HEURISTIC",
                ConvAlgoSearch::Default => "DEFAULT",
            };
            out.push((Provider::Cuda, "cudnn_conv_algo_search", v.into()));
        }
    }
    out
}

/// How a session is built.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Execution provider.
    pub provider: Provider,
    /// Fall back to CPU (with a warning) when the provider is missing or cannot start.
    pub fallback_cpu: bool,
    /// Options of the GPU providers.
    pub gpu: GpuOptions,
    /// ORT graph optimisation level 0-3.
    pub optimization_level: u8,
    /// Intra-op threads per session.
    pub intra_threads: usize,
    /// Inter-op threads per session.
    pub inter_threads: usize,
    /// CPUs of ORT's extra intra-op threads 1..n, one each (from [`crate::pinning::plan`];
    /// thread 0 is the worker that calls `session.run`, pinned by the worker itself).
    pub affinity: Option<Vec<usize>>,
}

impl SessionOptions {
    /// A CPU session at full graph optimisation on `intra_threads` threads, unpinned: what
    /// kinfer builds without GPU or pinning flags.
    pub fn cpu(intra_threads: usize) -> Self {
        Self {
            provider: Provider::Cpu,
            fallback_cpu: false,
            gpu: GpuOptions::default(),
            optimization_level: 3,
            intra_threads,
            inter_threads: 1,
            affinity: None,
        }
    }
}

fn to_dtype(t: TensorElementType) -> Option<DataType> {
    Some(match t {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::Uint8,
        TensorElementType::Uint16 => DataType::Uint16,
        TensorElementType::Uint32 => DataType::Uint32,
        TensorElementType::Uint64 => DataType::Uint64,
        TensorElementType::Int8 => DataType::Int8,
        TensorElementType::Int16 => DataType::Int16,
        TensorElementType::Int32 => DataType::Int32,
        TensorElementType::Int64 => DataType::Int64,
        TensorElementType::Float16 => DataType::Fp16,
        TensorElementType::Float32 => DataType::Fp32,
        TensorElementType::Float64 => DataType::Fp64,
        _ => return None,
    })
}

/// The declared inputs or outputs of a session, as kinfer serves them.
pub fn specs(
    path: &Path,
    what: &str,
    outlets: &[ort::value::Outlet],
) -> Result<Vec<TensorSpec>, LoadError> {
    outlets
        .iter()
        .map(|o| match o.dtype() {
            ValueType::Tensor { ty, shape, .. } => Ok(TensorSpec {
                name: o.name().to_owned(),
                dtype: to_dtype(*ty).ok_or_else(|| LoadError::Unsupported {
                    path: path.to_owned(),
                    reason: format!(
                        "{what} '{}' has element type {ty:?}, which kinfer does not serve",
                        o.name()
                    ),
                })?,
                shape: shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect(),
            }),
            other => Err(LoadError::Unsupported {
                path: path.to_owned(),
                reason: format!("{what} '{}' is a {other:?}, not a tensor", o.name()),
            }),
        })
        .collect()
}

/// Builds one session of the model at `path`, and says which provider it runs on: the one asked
/// for, or the CPU when that one is missing or cannot start and `fallback_cpu` is set.
pub fn build_session(path: &Path, opts: &SessionOptions) -> Result<(Session, Provider), LoadError> {
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| LoadError::Model {
        path: path.to_owned(),
        source: e,
    };
    let cpu = || {
        cpu_builder(opts)
            .and_then(|mut b| b.commit_from_file(path).map_err(ort_message))
            .map_err(fail)
    };
    let name = opts.provider.as_str();
    let available = match opts.provider {
        Provider::Cpu => return Ok((cpu()?, Provider::Cpu)),
        Provider::Cuda => ort::ep::CUDA::is_available(),
        Provider::Tensorrt => ort::ep::TensorRT::is_available(),
    };
    if !available.unwrap_or(false) {
        if !opts.fallback_cpu {
            return Err(LoadError::ProviderUnavailable(name));
        }
        tracing::warn!(
            provider = name,
            "execution provider not in this ONNX Runtime build; serving on the CPU (--ep-fallback cpu)"
        );
        return Ok((cpu()?, Provider::Cpu));
    }
    let gpu = cpu_builder(opts)
        .and_then(|b| {
            b.with_execution_providers(gpu_providers(opts.provider, &opts.gpu))
                .map_err(ort_message)
        })
        .and_then(|mut b| b.commit_from_file(path).map_err(ort_message));
    match gpu {
        Ok(session) => Ok((session, opts.provider)),
        Err(error) => {
            // A model the CPU cannot load either is the model's fault, not the provider's.
            let on_cpu = cpu()?;
            if opts.fallback_cpu {
                tracing::warn!(
                    provider = name,
                    %error,
                    "execution provider cannot start; serving on the CPU (--ep-fallback cpu)"
                );
                Ok((on_cpu, Provider::Cpu))
            } else {
                Err(LoadError::ProviderFailed {
                    provider: name,
                    source: error,
                })
            }
        }
    }
}

/// The session builder without a provider: optimisation level, threads, affinity.
fn cpu_builder(
    opts: &SessionOptions,
) -> Result<ort::session::builder::SessionBuilder, Box<dyn std::error::Error + Send + Sync>> {
    let level = match opts.optimization_level {
        0 => GraphOptimizationLevel::Disable,
        1 => GraphOptimizationLevel::Level1,
        2 => GraphOptimizationLevel::Level2,
        _ => GraphOptimizationLevel::All,
    };
    let env = ENVIRONMENT
        .get()
        .ok_or("ONNX Runtime is not initialised (init_ort was not called)")?;
    let mut builder = Session::builder(env)
        .map_err(ort_message)?
        .with_optimization_level(level)
        .map_err(ort_message)?
        .with_intra_threads(opts.intra_threads.max(1))
        .map_err(ort_message)?
        .with_inter_threads(opts.inter_threads.max(1))
        .map_err(ort_message)?;
    if let Some(cpus) = &opts.affinity {
        // ORT pins intra-op threads 1..n (the caller's thread is the first); one entry per extra
        // thread, separated by ';'. CPU ids are 1-based in this setting.
        let extra: Vec<String> = cpus
            .iter()
            .take(opts.intra_threads.saturating_sub(1))
            .map(|c| (c + 1).to_string())
            .collect();
        if !extra.is_empty() {
            builder = builder
                .with_config_entry("session.intra_op_thread_affinities", extra.join(";"))
                .map_err(ort_message)?;
        }
    }
    Ok(builder)
}

/// The providers to register, in ORT's order of preference, each failing the build when it
/// cannot register (the caller decides about the fallback).
fn gpu_providers(provider: Provider, o: &GpuOptions) -> Vec<ort::ep::ExecutionProviderDispatch> {
    use ort::ep::ArbitrarilyConfigurableExecutionProvider;
    let config = provider_config(provider, o);
    let mut trt = ort::ep::TensorRT::default();
    let mut cuda = ort::ep::CUDA::default();
    for (p, key, value) in config {
        match p {
            Provider::Tensorrt => trt = trt.with_arbitrary_config(key, value),
            _ => cuda = cuda.with_arbitrary_config(key, value),
        }
    }
    let mut eps = Vec::new();
    if provider == Provider::Tensorrt {
        eps.push(trt.build().error_on_failure());
    }
    eps.push(cuda.build().error_on_failure());
    eps
}

/// ORT's message of a session-builder error (the error holds the builder, which cannot
/// cross threads, so only its text is kept; it is ORT's whole message).
fn ort_message(e: impl std::fmt::Display) -> Box<dyn std::error::Error + Send + Sync> {
    e.to_string().into()
}

/// A request tensor as an ONNX Runtime value: borrowed in place (no copy) when its bytes are
/// aligned for its element type, which the request buffers always are; copied otherwise, and for
/// BOOL (bytes are not `bool`s to Rust).
fn to_value(t: &Tensor) -> Result<SessionInputValue<'_>, String> {
    macro_rules! make {
        ($ty:ty) => {
            match bytemuck::try_cast_slice::<u8, $ty>(&t.data) {
                Ok(elements) => TensorRef::<$ty>::from_array_view((t.shape.as_slice(), elements))
                    .map(SessionInputValue::from)
                    .map_err(|e| e.to_string()),
                Err(_) => OrtTensor::<$ty>::from_array((
                    t.shape.clone(),
                    bytemuck::pod_collect_to_vec::<u8, $ty>(&t.data),
                ))
                .map(SessionInputValue::from)
                .map_err(|e| e.to_string()),
            }
        };
    }
    match t.dtype {
        DataType::Bool => OrtTensor::<bool>::from_array((
            t.shape.clone(),
            t.data.iter().map(|&b| b != 0).collect::<Vec<_>>(),
        ))
        .map(SessionInputValue::from)
        .map_err(|e| e.to_string()),
        DataType::Uint8 => make!(u8),
        DataType::Uint16 => make!(u16),
        DataType::Uint32 => make!(u32),
        DataType::Uint64 => make!(u64),
        DataType::Int8 => make!(i8),
        DataType::Int16 => make!(i16),
        DataType::Int32 => make!(i32),
        DataType::Int64 => make!(i64),
        DataType::Fp16 => make!(half::f16),
        DataType::Fp32 => make!(f32),
        DataType::Fp64 => make!(f64),
        DataType::Bytes => Err(format!(
            "input '{}': BYTES inputs are not supported by ONNX models here",
            t.name
        )),
    }
}

/// An output of a run as bytes, read in place from ONNX Runtime's buffer. BOOL is copied into
/// `spill` (Rust may not read ORT's bytes as `u8` without `unsafe`).
fn output_bytes<'v>(
    dtype: DataType,
    v: &'v DynValue,
    spill: &'v mut Vec<u8>,
) -> Result<(&'v [i64], &'v [u8]), String> {
    macro_rules! take {
        ($ty:ty) => {{
            let (shape, data) = v.try_extract_tensor::<$ty>().map_err(|e| e.to_string())?;
            (&**shape, bytemuck::cast_slice::<$ty, u8>(data))
        }};
    }
    Ok(match dtype {
        DataType::Bool => {
            let (shape, data) = v.try_extract_tensor::<bool>().map_err(|e| e.to_string())?;
            spill.extend(data.iter().map(|&b| u8::from(b)));
            (&**shape, spill.as_slice())
        }
        DataType::Uint8 => take!(u8),
        DataType::Uint16 => take!(u16),
        DataType::Uint32 => take!(u32),
        DataType::Uint64 => take!(u64),
        DataType::Int8 => take!(i8),
        DataType::Int16 => take!(i16),
        DataType::Int32 => take!(i32),
        DataType::Int64 => take!(i64),
        DataType::Fp16 => take!(half::f16),
        DataType::Fp32 => take!(f32),
        DataType::Fp64 => take!(f64),
        DataType::Bytes => return Err("BYTES outputs are not supported".into()),
    })
}

/// Most outputs a model has for its views to stay on the stack.
const STACK_OUTPUTS: usize = 4;

/// A session and the outputs to read from it: what one worker (or one inline run) owns.
pub struct OrtExecutor {
    /// The session.
    pub session: Session,
    /// The model's outputs, in the order they are returned.
    pub outputs: Vec<TensorSpec>,
}

impl OrtExecutor {
    /// Runs one set of inputs (already in the model's input order) through the session and
    /// hands `f` the outputs, in the model's order, read in place from ONNX Runtime's buffers:
    /// they are released when `f` returns. Nothing is copied on the way in or out. Also returns
    /// how long `session.run` took (not `f`).
    pub fn run_with<R>(
        &mut self,
        inputs: &[Tensor],
        f: impl FnOnce(&[TensorView<'_>]) -> R,
    ) -> Result<(R, Duration), String> {
        let mut values: SmallVec<[SessionInputValue<'_>; STACK_OUTPUTS]> = SmallVec::new();
        for t in inputs {
            values.push(to_value(t)?);
        }
        let positional: SessionInputs<'_, '_> = SessionInputs::ValueSlice(&values);
        let started = Instant::now();
        let outputs = self.session.run(positional).map_err(|e| e.to_string())?;
        let took = started.elapsed();
        let mut spills: SmallVec<[Vec<u8>; STACK_OUTPUTS]> = SmallVec::new();
        spills.resize_with(self.outputs.len(), Vec::new);
        let mut views: SmallVec<[TensorView<'_>; STACK_OUTPUTS]> = SmallVec::new();
        for (spec, spill) in self.outputs.iter().zip(spills.iter_mut()) {
            let v = outputs
                .get(spec.name.as_str())
                .ok_or_else(|| format!("output '{}' missing from the run", spec.name))?;
            let (shape, data) = output_bytes(spec.dtype, v, spill)?;
            views.push(TensorView {
                name: &spec.name,
                dtype: spec.dtype,
                shape,
                data,
            });
        }
        Ok((f(&views), took))
    }
}

impl Executor for OrtExecutor {
    /// Runs one set of inputs (already in the model's input order) through the session; the
    /// outputs are copied out (a batch is split into each request's rows after the run).
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        self.run_with(inputs, |outputs| {
            outputs.iter().map(TensorView::to_tensor).collect()
        })
        .map(|(outputs, _)| outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(p: Provider, o: &GpuOptions) -> Vec<String> {
        provider_config(p, o)
            .into_iter()
            .map(|(on, k, v)| format!("{}:{k}={v}", on.as_str()))
            .collect()
    }

    #[test]
    fn the_options_reach_the_providers_they_belong_to() {
        let o = GpuOptions {
            device_id: 1,
            conv_algo_search: Some(ConvAlgoSearch::Heuristic),
            trt_fp16: true,
            trt_engine_cache: Some("/cache/trt".into()),
        };
        assert_eq!(
            keys(Provider::Tensorrt, &o),
            [
                "tensorrt:device_id=1",
                "tensorrt:trt_fp16_enable=1",
                "tensorrt:trt_engine_cache_enable=1",
                "tensorrt:trt_engine_cache_path=/cache/trt",
                "tensorrt:trt_timing_cache_enable=1",
                "tensorrt:trt_timing_cache_path=/cache/trt",
                "cuda:device_id=1",
                "cuda:cudnn_conv_algo_search=HEURISTIC",
            ]
        );
        let cuda = GpuOptions {
            conv_algo_search: Some(ConvAlgoSearch::Default),
            ..Default::default()
        };
        assert_eq!(
            keys(Provider::Cuda, &cuda),
            ["cuda:device_id=0", "cuda:cudnn_conv_algo_search=DEFAULT"]
        );
        assert!(keys(Provider::Cpu, &GpuOptions::default()).is_empty());
    }

    #[test]
    fn options_a_provider_would_ignore_are_refused_by_flag() {
        let fp16 = GpuOptions {
            trt_fp16: true,
            ..Default::default()
        };
        assert_eq!(
            fp16.check(Provider::Cuda).unwrap_err(),
            "--trt-fp16 does not apply to --execution-provider cuda (TensorRT only)"
        );
        assert!(fp16.check(Provider::Tensorrt).is_ok());
        let device = GpuOptions {
            device_id: 2,
            ..Default::default()
        };
        assert_eq!(
            device.check(Provider::Cpu).unwrap_err(),
            "--cuda-device-id does not apply to --execution-provider cpu"
        );
        assert!(device.check(Provider::Cuda).is_ok());
        assert!(GpuOptions::default().check(Provider::Cpu).is_ok());
    }
}
