//! A loaded version: its sessions (one per worker thread, Triton's instance groups), warmed, its
//! queue and its statistics. Before a version batches, a probe checks that stacking two rows
//! gives each row the bytes it gets alone; a model that mixes rows (batch statistics, a reshape
//! that folds the batch) or refuses a batch of two runs every request alone instead.

use std::{path::Path, sync::Arc, time::Instant};

use super::{
    ModelInfo,
    session::{LoadError, OrtExecutor, SessionOptions, build_session, specs},
    stats::VersionStats,
};
use crate::{
    batching::{BatchOptions, Executor, RunOutput, batcher::Batcher, queue},
    error::InferError,
    tensor::{DataType, Tensor, TensorSpec, element_count},
};

/// How a version is loaded.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// How each session is built.
    pub session: SessionOptions,
    /// Queueing and batching.
    pub batching: BatchOptions,
    /// Sessions (worker threads) per version.
    pub instances: usize,
    /// Largest batch dimension one request may carry.
    pub max_request_rows: usize,
    /// Warm-up runs per session before the version is ready.
    pub warmup_runs: usize,
}

/// A loaded, warmed version. Dropping the last handle closes the queue; the workers finish what
/// is queued and exit.
pub struct LoadedVersion {
    /// Metadata.
    pub info: ModelInfo,
    /// Latency, counts and output distribution.
    pub stats: Arc<VersionStats>,
    /// Whether requests are stacked into batches.
    pub batching: bool,
    queue: queue::Queue,
    max_request_rows: usize,
}

impl std::fmt::Debug for LoadedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedVersion")
            .field("info", &self.info)
            .field("batching", &self.batching)
            .finish()
    }
}

/// Inputs of one row per input (dynamic dimensions 1) whose values depend on `row`, so two rows
/// differ; zeros for `row` None (the warm-up).
fn probe_inputs(specs: &[TensorSpec], row: Option<usize>) -> Vec<Tensor> {
    specs
        .iter()
        .map(|s| {
            let shape: Vec<i64> = s.shape.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
            let n = element_count(&shape).unwrap_or(0);
            let data = match row {
                None => vec![0; n * s.dtype.size().unwrap_or(0)],
                Some(r) => (0..n).flat_map(|k| probe_value(s.dtype, k, r)).collect(),
            };
            Tensor {
                name: s.name.clone(),
                dtype: s.dtype,
                shape,
                data,
            }
        })
        .collect()
}

/// Element `k` of probe row `r`: small values every model accepts (0/1 for integer inputs, which
/// are often indices), different between rows.
fn probe_value(dtype: DataType, k: usize, r: usize) -> Vec<u8> {
    let f = ((k * 7 + r * 3) % 11) as f32 / 10.0 - 0.5;
    let bit = ((k + r) % 2) as u8;
    match dtype {
        DataType::Fp32 => f.to_le_bytes().to_vec(),
        DataType::Fp64 => f64::from(f).to_le_bytes().to_vec(),
        DataType::Fp16 => half::f16::from_f32(f).to_le_bytes().to_vec(),
        DataType::Bytes => Vec::new(),
        other => {
            let mut v = vec![0; other.size().unwrap_or(1)];
            v[0] = bit;
            v
        }
    }
}

/// Stacking two different rows gives each row exactly the bytes it gets alone.
fn rows_independent(exec: &mut OrtExecutor, info: &ModelInfo) -> Result<(), String> {
    let (a, b) = (
        probe_inputs(&info.inputs, Some(0)),
        probe_inputs(&info.inputs, Some(1)),
    );
    let both: Vec<Tensor> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| {
            let mut t = x.clone();
            t.shape[0] = 2;
            t.data.extend_from_slice(&y.data);
            t
        })
        .collect();
    let (oa, ob) = (exec.run(&a)?, exec.run(&b)?);
    let ab = exec
        .run(&both)
        .map_err(|e| format!("a batch of two rows fails: {e}"))?;
    for ((x, y), z) in oa.iter().zip(&ob).zip(&ab) {
        let mut want = x.data.clone();
        want.extend_from_slice(&y.data);
        if z.shape.first() != Some(&2) || z.shape.get(1..) != x.shape.get(1..) || z.data != want {
            return Err(format!(
                "output '{}' of a batch of two rows differs from the rows run alone",
                z.name
            ));
        }
    }
    Ok(())
}

impl LoadedVersion {
    /// Loads `path` as `name`/`version`: builds `instances` sessions, warms each, probes whether
    /// it may batch, starts the workers.
    pub fn load(
        name: &str,
        version: &str,
        path: &Path,
        opts: &LoadOptions,
    ) -> Result<Arc<Self>, LoadError> {
        let instances = opts.instances.max(1);
        let mut sessions = Vec::with_capacity(instances);
        for _ in 0..instances {
            sessions.push(build_session(path, &opts.session)?);
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
        let mut execs: Vec<OrtExecutor> = sessions
            .into_iter()
            .map(|session| OrtExecutor {
                session,
                outputs: info.outputs.clone(),
            })
            .collect();
        let warm = probe_inputs(&info.inputs, None);
        for e in &mut execs {
            for _ in 0..opts.warmup_runs {
                e.run(&warm).map_err(|e| LoadError::Model {
                    path: path.to_owned(),
                    reason: format!("warm-up run failed: {e}"),
                })?;
            }
        }
        let mut batching = batchable && opts.batching.max_batch > 1;
        if batching && let Err(why) = rows_independent(&mut execs[0], &info) {
            tracing::warn!(%version, %why, "batching disabled for this version: every request runs alone");
            batching = false;
        }
        let label = format!("model '{name}' version '{version}'");
        let (queue, rx) = queue::bounded(opts.batching.queue_capacity, label.clone());
        let stats = Arc::new(VersionStats::new(&info.outputs));
        let batch_opts = BatchOptions {
            max_batch: if batching { opts.batching.max_batch } else { 1 },
            ..opts.batching
        };
        for (i, exec) in execs.into_iter().enumerate() {
            let st = stats.clone();
            let worker = Batcher::new(
                exec,
                rx.clone(),
                batch_opts,
                Box::new(move |rows, compute| st.record_batch(rows, compute)),
                label.clone(),
            );
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
            batching,
            queue,
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
        self.queue.depth()
    }

    /// Queues a validated request (inputs in the model's order) and waits for its answer.
    pub async fn infer(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<RunOutput, InferError> {
        self.queue.submit(inputs, rows, deadline).await
    }
}
