//! A worker: takes a request, gathers the queued requests with the same shape signature (up to
//! `max_batch` rows, waiting at most `max_delay`), drops those whose deadline passed without
//! running them, runs one batch, checks the outputs have one row per input row, and splits them
//! back. Requests with another signature are set aside, oldest first, for the next batches. If a
//! batch fails, or its outputs cannot be split by rows, every request in it runs alone and gets
//! its own answer. A panic in a run answers its requests with an error and the worker goes on.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::as_conversions
)]

use std::{
    collections::VecDeque,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use crossbeam_channel::Receiver;

use super::{BatchOptions, Executor, RunOutput, queue::Job};
use crate::{
    error::{InferError, PANICS},
    tensor::Tensor,
};

/// Called after every run with its rows and compute time (the version's statistics).
pub type BatchObserver = Box<dyn Fn(usize, Duration) + Send>;

/// One worker of a version.
pub struct Batcher<E> {
    exec: E,
    rx: Receiver<Job>,
    opts: BatchOptions,
    /// Requests taken from the queue that did not fit the batch being formed, oldest first.
    pending: VecDeque<Job>,
    on_batch: BatchObserver,
    /// Names the version in error messages.
    label: String,
}

impl<E: Executor> Batcher<E> {
    /// A worker draining `rx` with `exec`.
    pub fn new(
        exec: E,
        rx: Receiver<Job>,
        opts: BatchOptions,
        on_batch: BatchObserver,
        label: String,
    ) -> Self {
        Self {
            exec,
            rx,
            opts,
            pending: VecDeque::new(),
            on_batch,
            label,
        }
    }

    /// Serves until the queue is closed (the version was unloaded) and drained.
    pub fn run(mut self) {
        let mut batch = Vec::with_capacity(self.opts.max_batch.clamp(1, 1024));
        while self.step(&mut batch) {}
    }

    /// Forms and runs one batch; `false` once the queue is closed and nothing is left.
    pub fn step(&mut self, batch: &mut Vec<Job>) -> bool {
        if !self.form(batch) {
            return false;
        }
        self.run_batch(batch);
        batch.clear();
        true
    }

    /// Fills `batch` with a first request and those that can join it.
    fn form(&mut self, batch: &mut Vec<Job>) -> bool {
        let first = match self.pending.pop_front() {
            Some(j) => j,
            None => match self.rx.recv() {
                Ok(j) => j,
                Err(_) => return false,
            },
        };
        let max = self.opts.max_batch.max(1);
        let mut rows = first.rows;
        batch.push(first);
        if max <= 1 {
            return true;
        }
        let fits = |batch: &[Job], rows: usize, j: &Job| {
            rows.saturating_add(j.rows) <= max && batch.first().is_some_and(|f| f.joins(j))
        };
        // Requests set aside earlier are older than anything still queued: they go first.
        let mut i = 0;
        while i < self.pending.len() && rows < max {
            match self.pending.get(i) {
                Some(j) if fits(batch, rows, j) => {
                    if let Some(j) = self.pending.remove(i) {
                        rows = rows.saturating_add(j.rows);
                        batch.push(j);
                    }
                }
                _ => i = i.saturating_add(1),
            }
        }
        let until = (!self.opts.max_delay.is_zero())
            .then(|| Instant::now().checked_add(self.opts.max_delay))
            .flatten();
        // Set-aside requests are bounded by `max` so the queue's capacity still bounds memory.
        while rows < max && self.pending.len() < max {
            let next = match until {
                None => self.rx.try_recv().ok(),
                Some(t) => self.rx.recv_deadline(t).ok(),
            };
            let Some(j) = next else { break };
            if fits(batch, rows, &j) {
                rows = rows.saturating_add(j.rows);
                batch.push(j);
            } else {
                self.pending.push_back(j);
            }
        }
        true
    }

    /// Runs inputs once, timing it and catching a panic.
    fn timed_run(
        &mut self,
        inputs: &[Tensor],
        rows: usize,
    ) -> (Result<Vec<Tensor>, String>, Duration) {
        let started = Instant::now();
        let exec = &mut self.exec;
        let result = catch_unwind(AssertUnwindSafe(|| exec.run(inputs))).unwrap_or_else(|_| {
            PANICS.fetch_add(1, Relaxed);
            Err("the run panicked (a bug; counted in kinfer_panics_total)".into())
        });
        let compute = started.elapsed();
        (self.on_batch)(rows, compute);
        (result, compute)
    }

    /// Runs one job alone and answers it.
    fn run_alone(&mut self, j: Job, started: Instant) {
        let (result, compute) = self.timed_run(&j.inputs, j.rows);
        let queue = started.saturating_duration_since(j.enqueued);
        let rows = j.rows;
        let answer = result
            .map(|outputs| RunOutput {
                outputs,
                queue,
                compute,
                batch_rows: rows,
            })
            .map_err(|e| InferError::Internal(format!("{} failed: {e}", self.label)));
        j.answer(answer);
    }

    fn run_batch(&mut self, batch: &mut Vec<Job>) {
        let now = Instant::now();
        // Expired requests never reach the model.
        let mut live = Vec::with_capacity(batch.len());
        for j in batch.drain(..) {
            if j.expired(now) {
                let waited = now.saturating_duration_since(j.enqueued);
                j.answer(Err(InferError::Deadline(format!(
                    "deadline passed after {waited:?} in the queue; the request was not run"
                ))));
            } else {
                live.push(j);
            }
        }
        if live.len() <= 1 {
            if let Some(j) = live.pop() {
                self.run_alone(j, now);
            }
            return;
        }
        let rows: usize = live.iter().map(|j| j.rows).sum();
        let span =
            tracing::debug_span!("batch", version = %self.label, requests = live.len(), rows);
        let _entered = span.enter();
        let parts = stack(&live, rows).and_then(|stacked| {
            let (result, compute) = self.timed_run(&stacked, rows);
            match result {
                Ok(outputs) => {
                    split(&outputs, live.iter().map(|j| j.rows), rows).map(|parts| (parts, compute))
                }
                Err(e) => {
                    tracing::debug!(error = %e, "batch failed; running its requests one by one");
                    None
                }
            }
        });
        match parts {
            Some((parts, compute)) => {
                for (j, outputs) in live.into_iter().zip(parts) {
                    let queue = now.saturating_duration_since(j.enqueued);
                    j.answer(Ok(RunOutput {
                        outputs,
                        queue,
                        compute,
                        batch_rows: rows,
                    }));
                }
            }
            None => {
                for j in live {
                    self.run_alone(j, now);
                }
            }
        }
    }
}

/// Concatenates the jobs' inputs along dimension 0; `None` if they do not line up (which
/// [`Job::joins`] rules out).
fn stack(batch: &[Job], rows: usize) -> Option<Vec<Tensor>> {
    let first = batch.first()?;
    first
        .inputs
        .iter()
        .enumerate()
        .map(|(i, t0)| {
            let mut shape = t0.shape.clone();
            *shape.first_mut()? = i64::try_from(rows).ok()?;
            let bytes: usize = batch
                .iter()
                .map(|j| j.inputs.get(i).map_or(0, |t| t.data.len()))
                .sum();
            let mut data = Vec::with_capacity(bytes);
            for j in batch {
                data.extend_from_slice(&j.inputs.get(i)?.data);
            }
            Some(Tensor {
                name: t0.name.clone(),
                dtype: t0.dtype,
                shape,
                data,
            })
        })
        .collect()
}

/// Splits a batch's outputs into each request's rows; `None` unless every output has exactly
/// `total` rows in dimension 0 (a model whose outputs are not per row cannot be split).
fn split(
    outputs: &[Tensor],
    rows: impl Iterator<Item = usize>,
    total: usize,
) -> Option<Vec<Vec<Tensor>>> {
    let mut row_bytes = Vec::with_capacity(outputs.len());
    for o in outputs {
        if o.shape.first().and_then(|&d| usize::try_from(d).ok()) != Some(total)
            || o.data.len().checked_rem(total)? != 0
        {
            return None;
        }
        row_bytes.push(o.data.len().checked_div(total)?);
    }
    let mut offset = 0usize;
    let mut parts = Vec::new();
    for n in rows {
        let part = outputs
            .iter()
            .zip(&row_bytes)
            .map(|(o, &rb)| {
                let mut shape = o.shape.clone();
                *shape.first_mut()? = i64::try_from(n).ok()?;
                let from = offset.checked_mul(rb)?;
                let to = from.checked_add(n.checked_mul(rb)?)?;
                Some(Tensor {
                    name: o.name.clone(),
                    dtype: o.dtype,
                    shape,
                    data: o.data.get(from..to)?.to_vec(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        offset = offset.checked_add(n)?;
        parts.push(part);
    }
    Some(parts)
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // tests
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::sync::oneshot;

    use super::*;
    use crate::tensor::DataType;

    /// Doubles every FP32 element; fails on a negative one, panics on NaN; records batch shapes.
    struct Doubler {
        seen: Arc<Mutex<Vec<Vec<i64>>>>,
        /// Output dimension 0 forced to 1 (a model whose output is not per row).
        pooled: bool,
    }

    impl Executor for Doubler {
        fn run(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
            let x = &inputs[0];
            self.seen.lock().unwrap().push(x.shape.clone());
            let vals: Vec<f32> = x
                .data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            if vals.iter().any(|v| v.is_nan()) {
                panic!("NaN");
            }
            if vals.iter().any(|&v| v < 0.0) {
                return Err("negative input".into());
            }
            let mut shape = x.shape.clone();
            if self.pooled {
                shape[0] = 1;
            }
            Ok(vec![Tensor {
                name: "y".into(),
                dtype: DataType::Fp32,
                shape,
                data: vals.iter().flat_map(|v| (v * 2.0).to_le_bytes()).collect(),
            }])
        }
    }

    type Reply = oneshot::Receiver<Result<RunOutput, InferError>>;

    fn job(shape: &[i64], v: f32, deadline: Option<Instant>) -> (Job, Reply) {
        let n: i64 = shape.iter().product();
        let (reply, rx) = oneshot::channel();
        let j = Job {
            inputs: vec![Tensor {
                name: "x".into(),
                dtype: DataType::Fp32,
                shape: shape.to_vec(),
                data: (0..n).flat_map(|_| v.to_le_bytes()).collect(),
            }],
            rows: usize::try_from(shape[0]).unwrap(),
            deadline,
            enqueued: Instant::now(),
            reply,
        };
        (j, rx)
    }

    struct Harness {
        batcher: Batcher<Doubler>,
        seen: Arc<Mutex<Vec<Vec<i64>>>>,
        raw: crossbeam_channel::Sender<Job>,
    }

    fn harness(max_batch: usize, pooled: bool) -> Harness {
        // Jobs are put straight into a channel the test controls, so batches are deterministic.
        let (raw, raw_rx) = crossbeam_channel::unbounded();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let batcher = Batcher::new(
            Doubler {
                seen: seen.clone(),
                pooled,
            },
            raw_rx,
            BatchOptions {
                max_batch,
                max_delay: Duration::ZERO,
                queue_capacity: 64,
            },
            Box::new(|_, _| {}),
            "model 'm' version 'v'".into(),
        );
        Harness { batcher, seen, raw }
    }

    impl Harness {
        fn push(&self, shape: &[i64], v: f32) -> Reply {
            let (j, rx) = job(shape, v, None);
            self.raw.send(j).unwrap();
            rx
        }
        fn step(&mut self) {
            let mut b = Vec::new();
            assert!(self.batcher.step(&mut b));
        }
        fn shapes(&self) -> Vec<Vec<i64>> {
            self.seen.lock().unwrap().clone()
        }
    }

    fn answer(mut rx: Reply) -> Result<RunOutput, InferError> {
        rx.try_recv().expect("answered")
    }

    #[test]
    fn requests_with_other_dimensions_never_share_a_batch() {
        let mut h = harness(8, false);
        let rs: Vec<(Vec<i64>, Reply)> = [[1, 4], [1, 6], [1, 4], [1, 8], [1, 6], [1, 4]]
            .iter()
            .map(|s| (s.to_vec(), h.push(s, 1.0)))
            .collect();
        h.step();
        h.step();
        h.step();
        // Oldest first: the [1,4] batch, then [1,6] (set aside, older than [1,8]), then [1,8].
        assert_eq!(h.shapes(), vec![vec![3, 4], vec![2, 6], vec![1, 8]]);
        for (shape, rx) in rs {
            let out = answer(rx).unwrap();
            assert_eq!(out.outputs[0].shape, shape);
            assert!(
                out.outputs[0]
                    .data
                    .chunks_exact(4)
                    .all(|c| c == 2.0f32.to_le_bytes())
            );
        }
    }

    #[test]
    fn zero_delay_takes_only_what_is_queued_and_respects_max_rows() {
        let mut h = harness(4, false);
        let rs: Vec<Reply> = (0..6).map(|_| h.push(&[1, 2], 1.0)).collect();
        h.step();
        h.step();
        assert_eq!(h.shapes(), vec![vec![4, 2], vec![2, 2]]);
        for rx in rs {
            assert_eq!(answer(rx).unwrap().outputs[0].shape, vec![1, 2]);
        }
    }

    #[test]
    fn a_failing_request_fails_alone() {
        let mut h = harness(8, false);
        let good1 = h.push(&[1, 3], 1.0);
        let bad = h.push(&[2, 3], -1.0);
        let good2 = h.push(&[1, 3], 3.0);
        h.step();
        // One batch of 4 rows failed, then each ran alone.
        assert_eq!(
            h.shapes(),
            vec![vec![4, 3], vec![1, 3], vec![2, 3], vec![1, 3]]
        );
        assert!(answer(good1).is_ok());
        let e = answer(bad).unwrap_err().to_string();
        assert!(e.contains("negative input"), "{e}");
        let out = answer(good2).unwrap();
        assert!(
            out.outputs[0]
                .data
                .chunks_exact(4)
                .all(|c| c == 6.0f32.to_le_bytes())
        );
    }

    #[test]
    fn a_panic_answers_with_an_error_and_the_worker_goes_on() {
        let mut h = harness(8, false);
        let before = PANICS.load(Relaxed);
        let good = h.push(&[1, 2], 1.0);
        let boom = h.push(&[1, 2], f32::NAN);
        h.step();
        assert!(answer(good).is_ok());
        assert!(answer(boom).unwrap_err().to_string().contains("panicked"));
        // The batch, then the request alone (other tests may count too).
        assert!(PANICS.load(Relaxed) >= before + 2);
        let after = h.push(&[1, 2], 1.0);
        h.step();
        assert!(answer(after).is_ok());
    }

    #[test]
    fn outputs_that_are_not_per_row_are_never_split() {
        let mut h = harness(8, true);
        let a = h.push(&[1, 2], 1.0);
        let b = h.push(&[1, 2], 1.0);
        h.step();
        // The batch's output has 1 row for 2 requests: each request runs alone instead.
        assert_eq!(h.shapes(), vec![vec![2, 2], vec![1, 2], vec![1, 2]]);
        assert_eq!(answer(a).unwrap().outputs[0].shape, vec![1, 2]);
        assert_eq!(answer(b).unwrap().outputs[0].shape, vec![1, 2]);
    }

    #[test]
    fn expired_requests_are_answered_without_running() {
        let mut h = harness(8, false);
        let past = Instant::now();
        let (j, expired) = job(&[1, 2], 1.0, Some(past));
        h.raw.send(j).unwrap();
        let live = h.push(&[1, 2], 1.0);
        h.step();
        assert_eq!(h.shapes(), vec![vec![1, 2]]);
        assert!(matches!(answer(expired), Err(InferError::Deadline(_))));
        assert!(answer(live).is_ok());
    }

    #[test]
    fn without_batching_every_request_runs_alone() {
        let mut h = harness(1, false);
        let rs: Vec<Reply> = (0..3).map(|_| h.push(&[1, 2], 1.0)).collect();
        for _ in 0..3 {
            h.step();
        }
        assert_eq!(h.shapes(), vec![vec![1, 2]; 3]);
        assert!(rs.into_iter().all(|r| answer(r).is_ok()));
    }

    #[test]
    fn the_worker_stops_when_the_queue_closes() {
        let h = harness(4, false);
        let Harness {
            mut batcher, raw, ..
        } = h;
        drop(raw);
        assert!(!batcher.step(&mut Vec::new()));
    }
}
