//! A loaded version: its sessions (one per worker thread, Triton's instance groups), warmed, its
//! queue and its statistics. Before a version batches, a probe checks that stacking three rows
//! gives each row exactly the bytes it gets alone, with its dynamic dimensions after the first
//! at 1 and at 7 (a length where vectorised kernels take their remainder paths). A model that
//! mixes rows (batch statistics, a reshape that folds the batch), refuses a batch, or whose
//! kernels round a row differently inside a batch runs every request alone instead, so an answer
//! never depends on which other requests shared its run.

use std::{path::Path, sync::Arc, time::Instant};

use smallvec::SmallVec;

use super::{
    ModelInfo,
    inline::{INLINE_MAX_RUN, InlinePool, Ran},
    session::{LoadError, OrtExecutor, Provider, SessionOptions, build_session, specs},
    stats::VersionStats,
};
use crate::{
    batching::{BatchOptions, Executor, RunOutput, batcher::Batcher, queue},
    error::InferError,
    pinning::{self, Placement, Plan},
    tensor::{DataType, Tensor, TensorSpec, TensorView, element_count, to_f64},
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
    /// Whether rounding-level differences inside a batch are accepted.
    pub batch_rounding: BatchRounding,
    /// Where each instance's threads run (`--cpu-affinity auto`); `None`: unpinned.
    pub pinning: Option<Plan>,
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
    /// Content digest of the artifact it was loaded from (`sha256:…`), when the caller gave one.
    pub digest: Option<String>,
    execution: Execution,
    max_request_rows: usize,
}

/// Where a version's runs happen.
#[allow(clippy::large_enum_variant)] // one per loaded version, built once and never moved
enum Execution {
    /// On the request's thread, sessions from a pool ([`InlinePool`]): unbatched, unpinned,
    /// short runs.
    Inline(InlinePool),
    /// On worker threads behind a queue: batching, pinning, or runs too long for a network
    /// thread.
    Workers(queue::Queue),
}

impl std::fmt::Debug for LoadedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedVersion")
            .field("info", &self.info)
            .field("batching", &self.batching)
            .finish()
    }
}

/// Inputs of one row per input, dynamic dimensions after the first at `len`, whose values depend
/// on `row` so rows differ; zeros for `row` None (the warm-up).
fn probe_inputs(specs: &[TensorSpec], row: Option<usize>, len: i64) -> Vec<Tensor> {
    specs
        .iter()
        .map(|s| {
            let shape: Vec<i64> = s
                .shape
                .iter()
                .enumerate()
                .map(|(i, &d)| match (i, d < 0) {
                    (_, false) => d,
                    (0, true) => 1,
                    (_, true) => len,
                })
                .collect();
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

/// A deterministic pseudo-random draw for (`k`, `r`) (splitmix64).
fn mix(k: usize, r: usize, salt: u64) -> u64 {
    let mut z = (k as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((r as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(salt);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Element `k` of probe row `r`: normally distributed floats (full mantissas, so rounding
/// differences show) and 0/1 for integers and booleans (often indices), different between rows.
fn probe_value(dtype: DataType, k: usize, r: usize) -> Vec<u8> {
    let u1 = ((mix(k, r, 1) >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let u2 = (mix(k, r, 2) >> 11) as f64 / (1u64 << 53) as f64;
    let f = ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32;
    let bit = (mix(k, r, 3) & 1) as u8;
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

/// Dynamic lengths the probe tries after the batch dimension.
const PROBE_LENGTHS: [i64; 2] = [1, 7];
/// Rows the probe stacks.
const PROBE_ROWS: usize = 4;
/// Largest relative difference between a batched and an unbatched row that is still rounding;
/// beyond it the rows depend on each other.
const ROUNDING: f64 = 1e-4;

/// Whether a version may stack requests (`--batch-rounding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BatchRounding {
    /// Batch only when every batched row is bit for bit the row run alone.
    #[default]
    Exact,
    /// Also batch when batched rows differ from the rows run alone by rounding only (kernels
    /// that reduce in another order inside a batch); rows that depend on each other never batch.
    Tolerate,
}

/// What the probe found.
#[derive(Debug, Clone, PartialEq)]
enum Probe {
    /// Batched rows are the rows run alone, bit for bit.
    Exact,
    /// Batched rows differ from the rows alone by at most this relative amount.
    Rounding(f64),
    /// The model refuses a batch or its rows depend on each other.
    Refused(String),
}

/// Largest relative difference between two float outputs; `None` when they differ in a way that
/// is not rounding (another length, NaN against a number, integers that differ).
fn rounding_between(a: &Tensor, b: &Tensor) -> Option<f64> {
    if a.data.len() != b.data.len() {
        return None;
    }
    if !a.dtype.is_float() {
        return (a.data == b.data).then_some(0.0);
    }
    let mut worst = 0f64;
    for (x, y) in to_f64(a).into_iter().zip(to_f64(b)) {
        if x.is_nan() != y.is_nan() {
            return None;
        }
        if x != y {
            worst = worst.max((x - y).abs() / x.abs().max(y.abs()).max(1.0));
        }
    }
    Some(worst)
}

/// Stacks different rows and compares each with the row run alone. A length other than 1 that
/// the model cannot run at all gives no verdict.
fn probe_rows(exec: &mut OrtExecutor, info: &ModelInfo) -> Probe {
    let has_dynamic = info
        .inputs
        .iter()
        .any(|s| s.shape.iter().skip(1).any(|&d| d < 0));
    let mut worst = 0f64;
    for len in PROBE_LENGTHS {
        if len != 1 && !has_dynamic {
            break;
        }
        let rows: Vec<Vec<Tensor>> = (0..PROBE_ROWS)
            .map(|r| probe_inputs(&info.inputs, Some(r), len))
            .collect();
        let alone: Result<Vec<Vec<Tensor>>, String> = rows.iter().map(|r| exec.run(r)).collect();
        let alone = match alone {
            Ok(a) => a,
            Err(_) if len != 1 => continue,
            Err(e) => return Probe::Refused(format!("a row alone fails: {e}")),
        };
        let stacked: Vec<Tensor> = (0..info.inputs.len())
            .map(|i| {
                let mut t = rows[0][i].clone();
                t.shape[0] = PROBE_ROWS as i64;
                for r in &rows[1..] {
                    t.data.extend_from_slice(&r[i].data);
                }
                t
            })
            .collect();
        let batched = match exec.run(&stacked) {
            Ok(b) => b,
            Err(e) => return Probe::Refused(format!("a batch of {PROBE_ROWS} rows fails: {e}")),
        };
        for (k, z) in batched.iter().enumerate() {
            let mut want = alone[0][k].clone();
            want.data = alone.iter().flat_map(|a| a[k].data.clone()).collect();
            let same_shape = z.shape.first() == Some(&(PROBE_ROWS as i64))
                && z.shape.get(1..) == want.shape.get(1..);
            match rounding_between(z, &want) {
                Some(d) if same_shape && d <= ROUNDING => worst = worst.max(d),
                _ => {
                    return Probe::Refused(format!(
                        "output '{}' of a batch of {PROBE_ROWS} rows (length {len}) is not the rows run alone: the rows depend on each other",
                        z.name
                    ));
                }
            }
        }
    }
    if worst == 0.0 {
        Probe::Exact
    } else {
        Probe::Rounding(worst)
    }
}

impl LoadedVersion {
    /// Loads `path` as `name`/`version`: builds `instances` sessions, warms each, probes whether
    /// it may batch, starts the workers.
    pub fn load(
        name: &str,
        version: &str,
        path: &Path,
        digest: Option<String>,
        opts: &LoadOptions,
    ) -> Result<Arc<Self>, LoadError> {
        let instances = opts.instances.max(1);
        let mut sessions = Vec::with_capacity(instances);
        let mut provider = opts.session.provider;
        let placements: Vec<Option<Placement>> = (0..instances)
            .map(|i| opts.pinning.as_ref().and_then(|p| p.placement(i)).cloned())
            .collect();
        for placement in &placements {
            let session_opts = SessionOptions {
                affinity: placement.as_ref().map(|p| p.intra.clone()),
                ..opts.session.clone()
            };
            let (session, on) = build_session(path, &session_opts)?;
            // Every instance serves on the same provider: one that fell back makes all of them
            // count as on the CPU (it is the slowest that sets the latency).
            if on == Provider::Cpu {
                provider = Provider::Cpu;
            }
            sessions.push(session);
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
            provider,
        };
        let mut execs: Vec<OrtExecutor> = sessions
            .into_iter()
            .map(|session| OrtExecutor {
                session,
                outputs: info.outputs.clone(),
            })
            .collect();
        let warm = probe_inputs(&info.inputs, None, 1);
        let mut warmups = Vec::with_capacity(execs.len() * opts.warmup_runs);
        for e in &mut execs {
            for _ in 0..opts.warmup_runs {
                let t = Instant::now();
                e.run(&warm).map_err(|e| LoadError::Model {
                    path: path.to_owned(),
                    source: format!("warm-up run failed: {e}").into(),
                })?;
                warmups.push(t.elapsed());
            }
        }
        warmups.sort_unstable();
        let typical_run = warmups.get(warmups.len() / 2).copied();
        let mut batching = batchable && opts.batching.max_batch > 1;
        if batching {
            match (probe_rows(&mut execs[0], &info), opts.batch_rounding) {
                (Probe::Exact, _) => {}
                (Probe::Rounding(d), BatchRounding::Tolerate) => {
                    tracing::info!(%version, max_relative_difference = d, "batched rows differ from unbatched ones by rounding only; batching (--batch-rounding tolerate)");
                }
                (Probe::Rounding(d), BatchRounding::Exact) => {
                    tracing::warn!(%version, max_relative_difference = d, "batching disabled for this version: its kernels round a row differently inside a batch, and --batch-rounding is exact; every request runs alone (--batch-rounding tolerate batches it)");
                    batching = false;
                }
                (Probe::Refused(why), _) => {
                    tracing::warn!(%version, %why, "batching disabled for this version: every request runs alone");
                    batching = false;
                }
            }
        }
        let label = format!("model '{name}' version '{version}'");
        let stats = Arc::new(VersionStats::new(&info.outputs));
        let inline = !batching
            && placements.iter().all(Option::is_none)
            && typical_run.is_some_and(|t| t <= INLINE_MAX_RUN);
        let warmup_us = typical_run.map_or(0, |t| u64::try_from(t.as_micros()).unwrap_or(u64::MAX));
        if inline {
            tracing::info!(%version, warmup_run_us = warmup_us, sessions = execs.len(), "runs on the request's thread (unbatched, unpinned, a short run)");
            return Ok(Arc::new(Self {
                info,
                stats,
                batching,
                digest,
                execution: Execution::Inline(InlinePool::new(
                    execs,
                    opts.batching.queue_capacity,
                    label,
                )),
                max_request_rows: opts.max_request_rows.max(1),
            }));
        }
        tracing::info!(%version, warmup_run_us = warmup_us, batching, workers = execs.len(), "runs on {} worker thread(s)", execs.len());
        let (queue, rx) = queue::bounded(opts.batching.queue_capacity, label.clone());
        let batch_opts = BatchOptions {
            max_batch: if batching { opts.batching.max_batch } else { 1 },
            ..opts.batching
        };
        for (i, (exec, placement)) in execs.into_iter().zip(placements).enumerate() {
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
                .spawn(move || {
                    if let Some(p) = placement
                        && let Err(e) = pinning::pin_current(p.worker)
                    {
                        tracing::warn!(cpu = p.worker, error = %e, "cannot pin the worker thread; it runs unpinned");
                    }
                    worker.run()
                })
                .map_err(|source| LoadError::Worker {
                    path: path.to_owned(),
                    source,
                })?;
        }
        Ok(Arc::new(Self {
            info,
            stats,
            batching,
            digest,
            execution: Execution::Workers(queue),
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
        match &self.execution {
            Execution::Inline(p) => p.depth(),
            Execution::Workers(q) => q.depth(),
        }
    }

    /// Whether runs happen on the request's thread (no worker threads).
    pub fn runs_inline(&self) -> bool {
        matches!(self.execution, Execution::Inline(_))
    }

    /// Runs a validated request (inputs in the model's order) and hands `f` its outputs, in
    /// place when it runs inline (then `f` runs before the session is released). The workers'
    /// path takes the inputs (`inputs` is left empty).
    pub async fn run<R>(
        &self,
        inputs: &mut Vec<Tensor>,
        rows: usize,
        deadline: Option<Instant>,
        f: impl FnOnce(&[TensorView<'_>]) -> R,
    ) -> Result<Ran<R>, InferError> {
        match &self.execution {
            Execution::Inline(pool) => {
                let ran = pool.run(inputs, rows, deadline, f).await?;
                self.stats.record_batch(rows, ran.compute);
                Ok(ran)
            }
            Execution::Workers(q) => {
                let out = q.submit(std::mem::take(inputs), rows, deadline).await?;
                let views: SmallVec<[TensorView<'_>; 4]> =
                    out.outputs.iter().map(Tensor::view).collect();
                Ok(Ran {
                    value: f(&views),
                    queue: out.queue,
                    compute: out.compute,
                    batch_rows: out.batch_rows,
                })
            }
        }
    }

    /// Runs a validated request (inputs in the model's order) and waits for its outputs, owned
    /// (golden sets, shadows, replays: what outlives the run).
    pub async fn infer(
        &self,
        mut inputs: Vec<Tensor>,
        rows: usize,
        deadline: Option<Instant>,
    ) -> Result<RunOutput, InferError> {
        let ran = self
            .run(&mut inputs, rows, deadline, |outputs| {
                outputs.iter().map(TensorView::to_tensor).collect()
            })
            .await?;
        Ok(RunOutput {
            outputs: ran.value,
            queue: ran.queue,
            compute: ran.compute,
            batch_rows: ran.batch_rows,
        })
    }
}
