//! Unbatched runs on the request's own thread. A version that does not batch, is not pinned and
//! whose run is short keeps its sessions in a lock-free pool instead of behind worker threads: a
//! request takes a session, runs it where it is (a Tokio worker), encodes its answer straight
//! from ONNX Runtime's output and puts the session back — no hand-off to another thread and back,
//! no wake-ups, no queue in the common case. When every session is busy, a request waits for one
//! in FIFO order (a semaphore with a permit per session), within the version's queue capacity and
//! its deadline, exactly as it would wait in the workers' queue.
//!
//! Under load a thread groups its requests: when its Tokio worker has had work without a break
//! since the previous request ran here (it has not parked — the runtime's park hook,
//! [`worker_parked`], counts that) and its busy spells have lately been long, a request yields
//! once before its run and once after its answer is encoded. The ready requests then go in
//! rounds — parse them all, run them all back to back, write them all — so the model's weights
//! and the network code each stay in cache for a round and one wake-up of a client covers
//! several answers. A request that finds the worker
//! fresh from idle runs at once, and so does every request while the worker's busy spells are
//! short (moderate load, a burst after a stall): there the path has no yield at all.

use std::{
    cell::Cell,
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
    time::{Duration, Instant},
};

use crossbeam_queue::ArrayQueue;
use tokio::sync::Semaphore;

use super::session::OrtExecutor;
use crate::{
    error::InferError,
    tensor::{Tensor, TensorView},
};

/// The longest run (a warm-up's median) that is made on the request's thread. A longer one
/// would hold a network thread: health checks, metrics and other connections on it would wait
/// behind the model, so such a version keeps its worker threads.
pub const INLINE_MAX_RUN: Duration = Duration::from_millis(2);

/// The typical busy spell (requests run between two parks of a worker) from which requests go
/// in rounds. A worker at saturation parks rarely (long spells) or between rounds of all its
/// connections' requests; at moderate load it parks between most requests (spells of one or
/// two, longer only after a stall), where rounds would only make the requests behind a burst
/// wait for each other.
pub const ROUND_MIN_SPELL: u32 = 4;

thread_local! {
    /// The Tokio worker on this thread has parked at least once: the runtime runs the hook.
    static PARKED: Cell<bool> = const { Cell::new(false) };
    /// Requests that reached their run on this thread since the worker last parked.
    static SPELL: Cell<u32> = const { Cell::new(0) };
    /// Moving average of the spells that ended at a park (weight 1/8), times 16.
    static TYPICAL_SPELL_X16: Cell<u32> = const { Cell::new(0) };
}

/// The runtime's `on_thread_park` hook: the worker on this thread ran out of work and parks.
/// Without it (a runtime built elsewhere, tests) requests never group.
pub fn worker_parked() {
    PARKED.set(true);
    let spell = SPELL.replace(0).min(1 << 16);
    if spell > 0 {
        let typical = TYPICAL_SPELL_X16.get();
        // avg' = avg - avg/8 + spell/8, in sixteenths.
        TYPICAL_SPELL_X16.set(typical - typical / 8 + spell * 2);
    }
}

/// Whether this request should go in a round: the worker on this thread has been busy without
/// a break since the previous request reached its run here (others are likely ready behind it),
/// and its busy spells have lately been long ([`ROUND_MIN_SPELL`]). Counts this request.
fn busy_since_last_run() -> bool {
    // A spell under way means an earlier request ran here since the worker last parked.
    let before = SPELL.get();
    let spell = before.saturating_add(1);
    SPELL.set(spell);
    // The spell under way counts too once it is far beyond a burst: a worker that has not
    // parked since the load began has no finished spell to average yet.
    let long = TYPICAL_SPELL_X16.get() >= ROUND_MIN_SPELL * 16 || spell >= ROUND_MIN_SPELL * 16;
    PARKED.get() && before > 0 && long
}

/// What a run produced (the caller's closure's value), with the figures the statistics record.
#[derive(Debug)]
pub struct Ran<R> {
    /// What the caller's closure returned.
    pub value: R,
    /// Time waiting for a session (or in the workers' queue), and in a round for the other
    /// requests of the round (inline, under load).
    pub queue: Duration,
    /// Time in `session.run`, shared by a batch.
    pub compute: Duration,
    /// Rows of the run that answered it.
    pub batch_rows: usize,
}

/// The sessions of an unbatched version, shared by every request thread.
pub struct InlinePool {
    free: ArrayQueue<OrtExecutor>,
    /// One permit per session that is in `free` or about to be: a request holding a permit is
    /// sure to find a session.
    permits: Semaphore,
    /// Requests waiting for a permit (the version's queue depth).
    waiting: AtomicUsize,
    capacity: usize,
    label: String,
}

/// Puts a session back (and its permit) however the run ended, a panic included.
struct Checkout<'a> {
    pool: &'a InlinePool,
    exec: Option<OrtExecutor>,
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.exec.take() {
            // Never full: there are exactly as many slots as sessions.
            let _ = self.pool.free.push(e);
            self.pool.permits.add_permits(1);
        }
    }
}

impl InlinePool {
    /// A pool of `execs`; at most `capacity` requests wait when all are busy.
    pub fn new(execs: Vec<OrtExecutor>, capacity: usize, label: String) -> Self {
        let free = ArrayQueue::new(execs.len().max(1));
        let n = execs.len();
        for e in execs {
            let _ = free.push(e);
        }
        Self {
            free,
            permits: Semaphore::new(n),
            waiting: AtomicUsize::new(0),
            capacity: capacity.max(1),
            label,
        }
    }

    /// Requests waiting for a session now.
    pub fn depth(&self) -> usize {
        self.waiting.load(Relaxed)
    }

    /// Runs `inputs` (in the model's input order) on a free session on this thread and hands
    /// `f` the outputs in place. Waits for a session when all are busy: refused at once when
    /// `capacity` requests already wait (overload), and given up at `deadline`.
    pub async fn run<R>(
        &self,
        inputs: &[Tensor],
        rows: usize,
        deadline: Option<Instant>,
        f: impl FnOnce(&[TensorView<'_>]) -> R,
    ) -> Result<Ran<R>, InferError> {
        let queued = Instant::now();
        let grouped = busy_since_last_run();
        if grouped {
            // Let the requests ready behind this one reach this point first (module docs).
            tokio::task::yield_now().await;
        }
        let permit = match self.permits.try_acquire() {
            Ok(p) => p,
            Err(_) => self.wait(queued, deadline).await?,
        };
        // The session goes back with the permit (in `Checkout::drop`), not before.
        permit.forget();
        let mut queue = queued.elapsed();
        if deadline.is_some_and(|d| d <= Instant::now()) {
            self.permits.add_permits(1);
            return Err(self.expired(queue));
        }
        let (value, compute) = self.run_now(inputs, f)?;
        if grouped {
            // The session is back; the answers of a round are written together. Waiting for
            // the rest of the round is waiting for others, as in a queue: it counts as queue time.
            let ran = Instant::now();
            tokio::task::yield_now().await;
            queue += ran.elapsed();
        }
        Ok(Ran {
            value,
            queue,
            compute,
            batch_rows: rows,
        })
    }

    /// Runs on a session taken from the pool (a permit is held) and puts it back, a panic
    /// included.
    fn run_now<R>(
        &self,
        inputs: &[Tensor],
        f: impl FnOnce(&[TensorView<'_>]) -> R,
    ) -> Result<(R, Duration), InferError> {
        let exec = self.free.pop().ok_or_else(|| {
            InferError::Internal(format!("{}: no session behind a permit", self.label))
        });
        let mut checkout = Checkout {
            pool: self,
            exec: Some(exec?),
        };
        let exec = checkout
            .exec
            .as_mut()
            .ok_or_else(|| InferError::Internal(format!("{}: session taken twice", self.label)))?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| exec.run_with(inputs, f)))
            .unwrap_or_else(|_| {
                crate::error::PANICS.fetch_add(1, Relaxed);
                Err("the run panicked (a bug; counted in kinfer_panics_total)".into())
            })
            .map_err(|e| InferError::Internal(format!("{} failed: {e}", self.label)))
    }

    async fn wait(
        &self,
        queued: Instant,
        deadline: Option<Instant>,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, InferError> {
        if self.waiting.fetch_add(1, Relaxed) >= self.capacity {
            self.waiting.fetch_sub(1, Relaxed);
            return Err(InferError::Overloaded(format!(
                "{} has {} requests queued (the limit, --queue-capacity); retry shortly",
                self.label, self.capacity
            )));
        }
        let acquired = match deadline {
            None => Some(self.permits.acquire().await),
            Some(d) => tokio::time::timeout_at(d.into(), self.permits.acquire())
                .await
                .ok(),
        };
        self.waiting.fetch_sub(1, Relaxed);
        match acquired {
            None => Err(self.expired(queued.elapsed())),
            Some(Ok(p)) => Ok(p),
            Some(Err(_)) => Err(InferError::Unavailable(format!(
                "{} is unloading",
                self.label
            ))),
        }
    }

    fn expired(&self, waited: Duration) -> InferError {
        InferError::Deadline(format!(
            "deadline passed after {waited:?} waiting for a session of {}; the request was not run",
            self.label
        ))
    }
}
