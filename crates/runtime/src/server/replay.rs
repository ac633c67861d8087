//! Replaying kept requests on both versions of a split, off the request path: one request at a
//! time, each run once on the candidate and once on the baseline in a random order (so neither
//! version is always the one that finds the caches warm), paced at the asked rate. Each side's
//! latency, errors and outputs go to the split's replay arms, and the two answers of each
//! request are compared. It stops when the split ends (a swap, a rollback, a stop).

use std::{
    sync::{
        Arc,
        atomic::Ordering::{Relaxed, Release},
    },
    time::{Duration, Instant},
};

use super::shadow::{fit, max_deviation, row_decisions};
use crate::{
    models::{
        baseline::{Arm, Baseline},
        registry::Registry,
        ring::Kept,
    },
    tensor::Tensor,
};

/// Longest one replayed run may take before it counts as failed.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `kept` on both versions of `split` at `rate` requests per second each, in a task of
/// its own; the split's replay must have been begun ([`crate::models::baseline::Replay::begin`]).
pub fn start(registry: Arc<Registry>, split: Arc<Baseline>, kept: Vec<Arc<Kept>>, rate: f64) {
    split.replay.queued.store(kept.len() as u64, Relaxed);
    tokio::spawn(async move {
        run(&registry, &split, &kept, rate).await;
        split.replay.running.store(false, Release);
    });
}

async fn run(registry: &Registry, split: &Arc<Baseline>, kept: &[Arc<Kept>], rate: f64) {
    let every = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let began = tokio::time::Instant::now();
    let r = &split.replay;
    for (i, k) in kept.iter().enumerate() {
        let current = registry.baseline();
        if !current.is_some_and(|b| Arc::ptr_eq(&b, split)) {
            return;
        }
        let order = if split.draw() < 0.5 {
            [&r.candidate, &r.baseline]
        } else {
            [&r.baseline, &r.candidate]
        };
        let mut answers = Vec::with_capacity(2);
        for arm in order {
            if let Some(first) = once(arm, k).await {
                answers.push(first);
            }
        }
        match answers.as_slice() {
            [a, b] => r
                .pairs
                .record(row_decisions(a) == row_decisions(b), max_deviation(a, b)),
            _ => {
                r.pairs.errors.fetch_add(1, Relaxed);
            }
        }
        let next = began + every.saturating_mul(u32::try_from(i + 1).unwrap_or(u32::MAX));
        tokio::time::sleep_until(next).await;
    }
}

/// Runs one kept request on one arm's version and records it there; the first output when it
/// succeeded. A request the version cannot take at all (other inputs) is not counted.
async fn once(arm: &Arm, k: &Kept) -> Option<Tensor> {
    let v = &arm.version;
    let mut inputs = k.inputs.clone();
    if !fit(v, &mut inputs, usize::MAX) {
        return None;
    }
    let started = Instant::now();
    let result = v
        .infer(inputs, k.rows, started.checked_add(RUN_TIMEOUT))
        .await;
    arm.stats
        .record_request(started.elapsed(), result.as_ref().map(|_| ()), false);
    let first = result.ok()?.outputs.into_iter().next()?;
    arm.stats.record_output(first.view());
    Some(first)
}
