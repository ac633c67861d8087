//! ONNX Runtime at the edge: loading the shared library, building sessions, reading a model's
//! declared inputs and outputs, and running a session on tensors ([`OrtExecutor`], what one
//! batching worker owns).

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use ort::{
    session::{Session, builder::GraphOptimizationLevel},
    value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType},
};

use crate::{
    batching::Executor,
    tensor::{DataType, Tensor, TensorSpec},
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
        "execution provider {0} is not available in this ONNX Runtime build; use a GPU build of libonnxruntime or pass --ep-fallback cpu"
    )]
    ProviderUnavailable(String),
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
    /// NVIDIA TensorRT.
    Tensorrt,
}

/// How a session is built.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Execution provider.
    pub provider: Provider,
    /// Fall back to CPU (with a warning) when the provider is missing.
    pub fallback_cpu: bool,
    /// ORT graph optimisation level 0-3.
    pub optimization_level: u8,
    /// Intra-op threads per session.
    pub intra_threads: usize,
    /// Inter-op threads per session.
    pub inter_threads: usize,
    /// CPUs to pin intra-op threads to (`--cpu-affinity auto`).
    pub affinity: Option<Vec<usize>>,
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

/// Builds one session of the model at `path`.
pub fn build_session(path: &Path, opts: &SessionOptions) -> Result<Session, LoadError> {
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| LoadError::Model {
        path: path.to_owned(),
        source: e,
    };
    let level = match opts.optimization_level {
        0 => GraphOptimizationLevel::Disable,
        1 => GraphOptimizationLevel::Level1,
        2 => GraphOptimizationLevel::Level2,
        _ => GraphOptimizationLevel::All,
    };
    let env = ENVIRONMENT
        .get()
        .ok_or_else(|| fail("ONNX Runtime is not initialised (init_ort was not called)".into()))?;
    let mut builder = Session::builder(env)
        .map_err(|e| fail(ort_message(e)))?
        .with_optimization_level(level)
        .map_err(|e| fail(ort_message(e)))?
        .with_intra_threads(opts.intra_threads.max(1))
        .map_err(|e| fail(ort_message(e)))?
        .with_inter_threads(opts.inter_threads.max(1))
        .map_err(|e| fail(ort_message(e)))?;
    if let Some(cpus) = &opts.affinity {
        // ORT pins intra-op threads 1..n (the caller's thread is the first); one entry per extra
        // thread, separated by ';'. CPU ids are 1-based in this setting.
        let extra: Vec<String> = cpus
            .iter()
            .skip(1)
            .take(opts.intra_threads.saturating_sub(1))
            .map(|c| (c + 1).to_string())
            .collect();
        if !extra.is_empty() {
            builder = builder
                .with_config_entry("session.intra_op_thread_affinities", extra.join(";"))
                .map_err(|e| fail(ort_message(e)))?;
        }
    }
    match opts.provider {
        Provider::Cpu => {}
        Provider::Cuda | Provider::Tensorrt => {
            use ort::ep::ExecutionProvider;
            let (name, available) = match opts.provider {
                Provider::Cuda => ("cuda", <ort::ep::CUDA as ExecutionProvider>::is_available()),
                _ => (
                    "tensorrt",
                    <ort::ep::TensorRT as ExecutionProvider>::is_available(),
                ),
            };
            if available.unwrap_or(false) {
                let ep = match opts.provider {
                    Provider::Cuda => ort::ep::CUDA::default().build().error_on_failure(),
                    _ => ort::ep::TensorRT::default().build().error_on_failure(),
                };
                builder = builder
                    .with_execution_providers([ep])
                    .map_err(|e| fail(ort_message(e)))?;
            } else if opts.fallback_cpu {
                tracing::warn!(
                    provider = name,
                    "execution provider unavailable; falling back to CPU (--ep-fallback cpu)"
                );
            } else {
                return Err(LoadError::ProviderUnavailable(name.into()));
            }
        }
    }
    builder
        .commit_from_file(path)
        .map_err(|e| fail(ort_message(e)))
}

/// ORT's message of a session-builder error (the error holds the builder, which cannot
/// cross threads, so only its text is kept; it is ORT's whole message).
fn ort_message(e: impl std::fmt::Display) -> Box<dyn std::error::Error + Send + Sync> {
    e.to_string().into()
}

fn to_value(t: &Tensor) -> Result<DynValue, String> {
    macro_rules! make {
        ($ty:ty) => {
            OrtTensor::<$ty>::from_array((
                t.shape.clone(),
                bytemuck::pod_collect_to_vec::<u8, $ty>(&t.data),
            ))
            .map(|v| v.into_dyn())
            .map_err(|e| e.to_string())
        };
    }
    match t.dtype {
        DataType::Bool => OrtTensor::<bool>::from_array((
            t.shape.clone(),
            t.data.iter().map(|&b| b != 0).collect::<Vec<_>>(),
        ))
        .map(|v| v.into_dyn())
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

fn from_value(name: &str, dtype: DataType, v: &DynValue) -> Result<Tensor, String> {
    macro_rules! take {
        ($ty:ty) => {{
            let (shape, data) = v.try_extract_tensor::<$ty>().map_err(|e| e.to_string())?;
            (
                shape.to_vec(),
                bytemuck::cast_slice::<$ty, u8>(data).to_vec(),
            )
        }};
    }
    let (shape, data): (Vec<i64>, Vec<u8>) = match dtype {
        DataType::Bool => {
            let (shape, data) = v.try_extract_tensor::<bool>().map_err(|e| e.to_string())?;
            (shape.to_vec(), data.iter().map(|&b| u8::from(b)).collect())
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
    };
    Ok(Tensor {
        name: name.to_owned(),
        dtype,
        shape,
        data,
    })
}

/// A session and the outputs to read from it: what one worker owns.
pub struct OrtExecutor {
    /// The session.
    pub session: Session,
    /// The model's outputs, in the order they are returned.
    pub outputs: Vec<TensorSpec>,
}

impl Executor for OrtExecutor {
    /// Runs one set of inputs (already in the model's input order) through the session.
    fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        let mut values = Vec::with_capacity(inputs.len());
        for t in inputs {
            values.push((t.name.as_str(), to_value(t)?));
        }
        let outputs = self.session.run(values).map_err(|e| e.to_string())?;
        self.outputs
            .iter()
            .map(|spec| {
                let v = outputs
                    .get(spec.name.as_str())
                    .ok_or_else(|| format!("output '{}' missing from the run", spec.name))?;
                from_value(&spec.name, spec.dtype, v)
            })
            .collect()
    }
}
