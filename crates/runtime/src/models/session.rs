//! ONNX Runtime at the edge: loading the shared library, building sessions, reading a model's
//! real inputs and outputs, and the instance workers that own the sessions.
//!
//! `ort`'s `Session::run` takes `&mut self`, so a session is never shared: each loaded version
//! has `instances` worker threads, each owning one session (Triton's instance groups). Requests
//! reach them through one bounded queue per version; a worker that finds a request forms a batch
//! from what else is queued (up to `max_batch` rows, waiting at most `max_delay` for the first
//! batch to fill), drops requests whose deadline has passed without running them, runs one
//! `session.run`, and splits the outputs back per request.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use ort::{
    session::{Session, builder::GraphOptimizationLevel},
    value::{DynValue, Tensor as OrtTensor, TensorElementType, ValueType},
};
use tokio::sync::oneshot;

use crate::{
    models::stats::VersionStats,
    protocol::{
        error::InferError,
        tensor::{DataType, Tensor, TensorSpec},
    },
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
    #[error("cannot load ONNX Runtime from {path}: {reason} (kinfer needs ONNX Runtime 1.31)")]
    Library {
        /// The library path.
        path: PathBuf,
        /// What ort said.
        reason: String,
    },
    /// The model file could not be read or compiled.
    #[error("cannot load model {path}: {reason}")]
    Model {
        /// The model path.
        path: PathBuf,
        /// What ONNX Runtime said.
        reason: String,
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
        reason: e.to_string(),
    })?;
    let environment = builder
        .with_name("kinfer")
        .build()
        .map_err(|e| LoadError::Library {
            path: path.to_owned(),
            reason: e.to_string(),
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

/// How sessions of a version are built and run.
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
    /// Session instances (worker threads) per version.
    pub instances: usize,
    /// CPUs to pin intra-op threads to (`--cpu-affinity auto`).
    pub affinity: Option<Vec<usize>>,
    /// Largest batch in rows that the batcher forms; 1 disables batching.
    pub max_batch: usize,
    /// Largest batch dimension one request may carry.
    pub max_request_rows: usize,
    /// Longest wait for a batch to fill.
    pub max_delay: Duration,
    /// Queue capacity per version.
    pub queue_capacity: usize,
    /// Warm-up runs before the version is ready.
    pub warmup_runs: usize,
}

/// What a loaded version is: names, tensors, whether it batches on dimension 0.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Model name.
    pub name: String,
    /// Version label.
    pub version: String,
    /// Inputs.
    pub inputs: Vec<TensorSpec>,
    /// Outputs.
    pub outputs: Vec<TensorSpec>,
    /// Every input and output has a dynamic first dimension, so requests can be stacked.
    pub batchable: bool,
    /// The file it came from.
    pub path: PathBuf,
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

fn specs(
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

fn build_session(path: &Path, opts: &SessionOptions) -> Result<Session, LoadError> {
    let fail = |e: String| LoadError::Model {
        path: path.to_owned(),
        reason: e,
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
        .map_err(|e| fail(e.to_string()))?
        .with_optimization_level(level)
        .map_err(|e| fail(e.to_string()))?
        .with_intra_threads(opts.intra_threads.max(1))
        .map_err(|e| fail(e.to_string()))?
        .with_inter_threads(opts.inter_threads.max(1))
        .map_err(|e| fail(e.to_string()))?;
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
                .map_err(|e| fail(e.to_string()))?;
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
                    .map_err(|e| fail(e.to_string()))?;
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
        .map_err(|e| fail(e.to_string()))
}

/// Builds one session exactly as a loaded version's workers do (for the raw `session.run`
/// baseline of `kinfer-bench`).
pub fn build_session_for_bench(path: &Path, opts: &SessionOptions) -> Result<Session, LoadError> {
    build_session(path, opts)
}

/// A queued request.
pub struct Job {
    /// Validated inputs, in the order of the model's inputs.
    pub inputs: Vec<Tensor>,
    /// Rows in dimension 0 (1 for a model that does not batch).
    pub rows: usize,
    /// When the request must be answered by.
    pub deadline: Option<Instant>,
    /// When it entered the queue.
    pub enqueued: Instant,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<RunOutput, InferError>>,
}

/// A request's answer.
#[derive(Debug)]
pub struct RunOutput {
    /// All outputs of the model for this request's rows.
    pub outputs: Vec<Tensor>,
    /// Time in the queue.
    pub queue: Duration,
    /// Time in `session.run` (shared by the batch).
    pub compute: Duration,
    /// Rows of the batch it ran in.
    pub batch_rows: usize,
}

/// A loaded, warmed version: its metadata, its queue and its workers. Dropping the last handle
/// closes the queue; the workers finish what is queued and exit.
pub struct LoadedVersion {
    /// Metadata.
    pub info: ModelInfo,
    /// Latency, counts and output distribution.
    pub stats: Arc<VersionStats>,
    queue: Sender<Job>,
    queue_capacity: usize,
    max_request_rows: usize,
}

impl std::fmt::Debug for LoadedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedVersion")
            .field("info", &self.info)
            .finish()
    }
}

impl LoadedVersion {
    /// Loads `path` as `name`/`version`: builds `instances` sessions, warms each, starts workers.
    pub fn load(
        name: &str,
        version: &str,
        path: &Path,
        opts: &SessionOptions,
    ) -> Result<Arc<Self>, LoadError> {
        let mut sessions = Vec::with_capacity(opts.instances.max(1));
        for _ in 0..opts.instances.max(1) {
            sessions.push(build_session(path, opts)?);
        }
        let inputs = specs(path, "input", sessions[0].inputs())?;
        let outputs = specs(path, "output", sessions[0].outputs())?;
        let batchable = inputs
            .iter()
            .chain(&outputs)
            .all(|s| s.shape.first() == Some(&-1));
        let info = ModelInfo {
            name: name.to_owned(),
            version: version.to_owned(),
            inputs,
            outputs,
            batchable,
            path: path.to_owned(),
        };
        for s in &mut sessions {
            for _ in 0..opts.warmup_runs {
                warm(s, &info).map_err(|e| LoadError::Model {
                    path: path.to_owned(),
                    reason: format!("warm-up run failed: {e}"),
                })?;
            }
        }
        let (tx, rx) = crossbeam_channel::bounded(opts.queue_capacity.max(1));
        let stats = Arc::new(VersionStats::new(&info));
        let max_batch = if batchable { opts.max_batch.max(1) } else { 1 };
        for (i, session) in sessions.into_iter().enumerate() {
            let worker = Worker {
                session,
                rx: rx.clone(),
                info: info.clone(),
                max_batch,
                max_delay: opts.max_delay,
                stats: stats.clone(),
            };
            std::thread::Builder::new()
                .name(format!("ort-{version}-{i}"))
                .spawn(move || worker.run())
                .map_err(|e| LoadError::Model {
                    path: path.to_owned(),
                    reason: format!("cannot start a worker thread: {e}"),
                })?;
        }
        Ok(Arc::new(Self {
            info,
            stats,
            queue: tx,
            queue_capacity: opts.queue_capacity.max(1),
            max_request_rows: opts.max_request_rows.max(1),
        }))
    }

    /// Largest batch dimension per request this version accepts; `None` when the model has no
    /// dynamic batch dimension.
    pub fn max_batch(&self) -> Option<usize> {
        self.info.batchable.then_some(self.max_request_rows)
    }

    /// Requests waiting now.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// Queues a validated request and waits for its answer.
    pub async fn infer(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<RunOutput, InferError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs,
            rows,
            deadline,
            enqueued: Instant::now(),
            reply,
        };
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(InferError::Overloaded(format!(
                    "model '{}' version '{}' has {} requests queued (the limit); retry shortly",
                    self.info.name, self.info.version, self.queue_capacity
                )));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(InferError::Unavailable(format!(
                    "model '{}' version '{}' is unloading",
                    self.info.name, self.info.version
                )));
            }
        }
        rx.await.map_err(|_| {
            InferError::Internal(format!(
                "worker for version '{}' stopped before answering",
                self.info.version
            ))
        })?
    }
}

fn warm(session: &mut Session, info: &ModelInfo) -> Result<(), String> {
    let inputs: Vec<Tensor> = info
        .inputs
        .iter()
        .map(|s| {
            let shape: Vec<i64> = s.shape.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
            let n = crate::protocol::tensor::element_count(&shape).unwrap_or(0);
            Tensor {
                name: s.name.clone(),
                dtype: s.dtype,
                data: vec![0; n * s.dtype.size().unwrap_or(0)],
                shape,
            }
        })
        .collect();
    run_session(session, info, &inputs).map(|_| ())
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

/// Runs one set of inputs (already in model input order) through a session.
fn run_session(
    session: &mut Session,
    info: &ModelInfo,
    inputs: &[Tensor],
) -> Result<Vec<Tensor>, String> {
    let mut values = Vec::with_capacity(inputs.len());
    for t in inputs {
        values.push((t.name.as_str(), to_value(t)?));
    }
    let outputs = session.run(values).map_err(|e| e.to_string())?;
    info.outputs
        .iter()
        .map(|spec| {
            let v = outputs
                .get(spec.name.as_str())
                .ok_or_else(|| format!("output '{}' missing from the run", spec.name))?;
            from_value(&spec.name, spec.dtype, v)
        })
        .collect()
}

struct Worker {
    session: Session,
    rx: Receiver<Job>,
    info: ModelInfo,
    max_batch: usize,
    max_delay: Duration,
    stats: Arc<VersionStats>,
}

impl Worker {
    fn run(mut self) {
        let mut batch: Vec<Job> = Vec::with_capacity(self.max_batch);
        let mut carry: Option<Job> = None;
        loop {
            let first = match carry.take() {
                Some(j) => j,
                None => match self.rx.recv() {
                    Ok(j) => j,
                    Err(_) => return, // queue closed: the version was unloaded
                },
            };
            let mut rows = first.rows;
            batch.push(first);
            if self.max_batch > 1 {
                let until = Instant::now() + self.max_delay;
                while rows < self.max_batch {
                    match self.rx.recv_deadline(until) {
                        Ok(j) if rows + j.rows > self.max_batch => {
                            carry = Some(j);
                            break;
                        }
                        Ok(j) => {
                            rows += j.rows;
                            batch.push(j);
                        }
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
            self.run_batch(&mut batch);
        }
    }

    fn run_batch(&mut self, batch: &mut Vec<Job>) {
        let now = Instant::now();
        // Expired requests never reach the model.
        batch.retain_mut(|j| {
            if j.deadline.is_some_and(|d| d <= now) {
                let (tx, _) = oneshot::channel();
                let reply = std::mem::replace(&mut j.reply, tx);
                let _ = reply.send(Err(InferError::Deadline(format!(
                    "deadline passed after {:?} in the queue; the request was not run",
                    now - j.enqueued
                ))));
                false
            } else {
                true
            }
        });
        if batch.is_empty() {
            return;
        }
        let rows: usize = batch.iter().map(|j| j.rows).sum();
        let span = tracing::debug_span!("batch", version = %self.info.version, requests = batch.len(), rows);
        let _entered = span.enter();
        let started = Instant::now();
        let result = if batch.len() == 1 {
            run_session(&mut self.session, &self.info, &batch[0].inputs)
        } else {
            let stacked = stack(&self.info, batch, rows);
            run_session(&mut self.session, &self.info, &stacked)
        };
        let compute = started.elapsed();
        self.stats.record_batch(rows, compute);
        match result {
            Ok(outputs) if batch.len() == 1 => {
                let j = batch.pop().expect("one job");
                let _ = j.reply.send(Ok(RunOutput {
                    outputs,
                    queue: started - j.enqueued,
                    compute,
                    batch_rows: rows,
                }));
            }
            Ok(outputs) => {
                let mut offset = 0;
                for j in batch.drain(..) {
                    let part = outputs
                        .iter()
                        .map(|o| slice_rows(o, offset, j.rows, rows))
                        .collect();
                    offset += j.rows;
                    let _ = j.reply.send(Ok(RunOutput {
                        outputs: part,
                        queue: started - j.enqueued,
                        compute,
                        batch_rows: rows,
                    }));
                }
            }
            Err(e) => {
                for j in batch.drain(..) {
                    let _ = j.reply.send(Err(InferError::Internal(format!(
                        "model '{}' version '{}' failed: {e}",
                        self.info.name, self.info.version
                    ))));
                }
            }
        }
    }
}

/// Concatenates the jobs' inputs along dimension 0.
fn stack(info: &ModelInfo, batch: &[Job], rows: usize) -> Vec<Tensor> {
    info.inputs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let mut shape = batch[0].inputs[i].shape.clone();
            shape[0] = rows as i64;
            let mut data = Vec::with_capacity(batch.iter().map(|j| j.inputs[i].data.len()).sum());
            for j in batch {
                data.extend_from_slice(&j.inputs[i].data);
            }
            Tensor {
                name: spec.name.clone(),
                dtype: spec.dtype,
                shape,
                data,
            }
        })
        .collect()
}

/// Rows `[offset, offset + n)` of an output whose dimension 0 has `total` rows.
fn slice_rows(t: &Tensor, offset: usize, n: usize, total: usize) -> Tensor {
    let row_bytes = t.data.len() / total.max(1);
    let mut shape = t.shape.clone();
    if let Some(d) = shape.first_mut() {
        *d = n as i64;
    }
    Tensor {
        name: t.name.clone(),
        dtype: t.dtype,
        shape,
        data: t.data[offset * row_bytes..(offset + n) * row_bytes].to_vec(),
    }
}
