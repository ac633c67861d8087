//! The paired baseline of an analysis: while a freshly promoted version (the candidate) is
//! judged, a random fraction of its live requests is answered by the version that served before
//! (still loaded and warm), so both see the same load on the same CPUs at the same moments. Each
//! arm counts its own requests, server errors, latency and outputs from the moment the split
//! began; a sampled fraction of requests also runs on the other version, off the request path,
//! and the two answers on identical inputs are compared.
//!
//! The request path pays one atomic load to find the split, one atomic add to pick an arm and
//! the arm's counters; nothing here runs when no analysis is under way. A split also holds the
//! figures of its replay (recent requests run on both versions, `server::replay`), kept apart
//! from the live arms.

use std::{
    sync::{
        Arc,
        atomic::{
            AtomicBool, AtomicU64,
            Ordering::{AcqRel, Acquire, Relaxed, Release},
        },
    },
    time::Instant,
};

use kinfer_contract::admin::{ArmSummary, BaselineSummary, PairSummary, ReplaySummary};

use super::{
    stats::{VersionStats, bucket_bounds},
    version::LoadedVersion,
};

/// The largest fraction of live traffic the baseline may answer: the candidate must keep at
/// least half, or it is no longer the version under test.
pub const MAX_FRACTION: f64 = 0.5;

/// One version's side of the split.
pub struct Arm {
    /// The version answering this arm's requests.
    pub version: Arc<LoadedVersion>,
    /// Its figures since the split began (only the request latency, counters and output bins
    /// are used).
    pub stats: VersionStats,
}

impl Arm {
    fn new(version: Arc<LoadedVersion>) -> Self {
        let stats = VersionStats::new(&version.info.outputs);
        Self { version, stats }
    }

    fn summary(&self) -> ArmSummary {
        let s = self.stats.snapshot();
        ArmSummary {
            version: self.version.info.version.clone(),
            requests: s.requests,
            server_errors: s.server_errors,
            latency: self
                .stats
                .request
                .total
                .snapshot()
                .iter()
                .enumerate()
                .filter(|(_, c)| **c > 0)
                .map(|(b, &c)| {
                    let (lo, hi) = bucket_bounds(b);
                    [lo, hi, c]
                })
                .collect(),
            output_kind: s.output_kind,
            output_distribution: s.output_distribution,
        }
    }
}

/// Pairwise comparisons of the two versions on identical inputs.
#[derive(Default)]
pub struct Pairs {
    /// Requests compared.
    pub compared: AtomicU64,
    /// Compared requests whose decisions matched on every row.
    pub agreed: AtomicU64,
    /// Sum of the per-request largest absolute deviation, in units of 1e-9.
    deviation_nanos: AtomicU64,
    /// Largest absolute deviation, as `f64` bits (non-negative floats order like their bits).
    max_deviation_bits: AtomicU64,
    /// Requests the other version could not run.
    pub errors: AtomicU64,
}

impl Pairs {
    /// Records one comparison: whether the decisions agreed and the largest absolute difference
    /// of the first output (NaN, from a NaN on either side, counts as infinitely far).
    pub fn record(&self, agreed: bool, deviation: f64) {
        let d = if deviation.is_nan() {
            f64::INFINITY
        } else {
            deviation.abs()
        };
        self.compared.fetch_add(1, Relaxed);
        if agreed {
            self.agreed.fetch_add(1, Relaxed);
        }
        self.deviation_nanos
            .fetch_add((d.min(1e9) * 1e9) as u64, Relaxed);
        self.max_deviation_bits.fetch_max(d.to_bits(), Relaxed);
    }

    fn summary(&self) -> PairSummary {
        let compared = self.compared.load(Relaxed);
        PairSummary {
            compared,
            agreed: self.agreed.load(Relaxed),
            mean_abs_deviation: if compared == 0 {
                0.0
            } else {
                self.deviation_nanos.load(Relaxed) as f64 / 1e9 / compared as f64
            },
            // JSON has no infinity: a NaN on one side reads as the largest float.
            max_abs_deviation: f64::from_bits(self.max_deviation_bits.load(Relaxed)).min(f64::MAX),
            errors: self.errors.load(Relaxed),
        }
    }
}

/// A split of live traffic between the candidate and its baseline.
pub struct Baseline {
    /// The serving version under analysis.
    pub candidate: Arm,
    /// The previous version.
    pub baseline: Arm,
    /// Fraction of live requests the baseline answers.
    pub fraction: f64,
    /// Fraction of live requests also run on the other version.
    pub pair_rate: f64,
    /// The pairwise comparison.
    pub pairs: Pairs,
    /// Recent requests replayed on both versions.
    pub replay: Replay,
    started: Instant,
    draws: Draws,
}

/// The replay of a split (`POST /admin/replay`): the same recent requests run on each version,
/// measured apart from the live arms.
pub struct Replay {
    /// The candidate on the replayed requests.
    pub candidate: Arm,
    /// The baseline on the same requests.
    pub baseline: Arm,
    /// Both answers of each replayed request compared.
    pub pairs: Pairs,
    /// Requests taken from the ring; 0 until the replay begins.
    pub queued: AtomicU64,
    begun: AtomicBool,
    /// Cleared when the replay ends (all run, or the split ended).
    pub running: AtomicBool,
}

impl Replay {
    fn new(candidate: &Arc<LoadedVersion>, baseline: &Arc<LoadedVersion>) -> Self {
        Self {
            candidate: Arm::new(candidate.clone()),
            baseline: Arm::new(baseline.clone()),
            pairs: Pairs::default(),
            queued: AtomicU64::new(0),
            begun: AtomicBool::new(false),
            running: AtomicBool::new(false),
        }
    }

    /// Claims the one replay of this split: true for the first caller only.
    pub fn begin(&self) -> bool {
        let first = self
            .begun
            .compare_exchange(false, true, AcqRel, Acquire)
            .is_ok();
        if first {
            self.running.store(true, Release);
        }
        first
    }

    /// Its figures so far; `None` before it began.
    pub fn summary(&self) -> Option<ReplaySummary> {
        self.begun.load(Acquire).then(|| ReplaySummary {
            queued: self.queued.load(Relaxed),
            running: self.running.load(Acquire),
            candidate: self.candidate.summary(),
            baseline: self.baseline.summary(),
            pairs: self.pairs.summary(),
        })
    }
}

/// SplitMix64: a well-mixed 64-bit value from a counter (one add and three multiplies).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Independent uniform draws shared by many threads: one atomic add and a mix per draw, no lock.
pub struct Draws {
    seed: u64,
    n: AtomicU64,
}

impl Draws {
    /// Draws seeded from the clock (a different sequence in every process).
    pub fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            seed,
            n: AtomicU64::new(0),
        }
    }

    /// A uniform draw in [0, 1).
    pub fn uniform(&self) -> f64 {
        let n = self.n.fetch_add(1, Relaxed);
        (mix(self.seed ^ n) >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Default for Draws {
    fn default() -> Self {
        Self::new()
    }
}

impl Baseline {
    /// A split of `fraction` (clamped to [`MAX_FRACTION`]) of `candidate`'s live traffic to
    /// `baseline`, comparing `pair_rate` of requests on both.
    pub fn new(
        candidate: Arc<LoadedVersion>,
        baseline: Arc<LoadedVersion>,
        fraction: f64,
        pair_rate: f64,
    ) -> Self {
        Self {
            replay: Replay::new(&candidate, &baseline),
            candidate: Arm::new(candidate),
            baseline: Arm::new(baseline),
            fraction: fraction.clamp(0.0, MAX_FRACTION),
            pair_rate: pair_rate.clamp(0.0, 1.0),
            pairs: Pairs::default(),
            started: Instant::now(),
            draws: Draws::new(),
        }
    }

    /// A uniform draw in [0, 1).
    pub fn draw(&self) -> f64 {
        self.draws.uniform()
    }

    /// The arm that answers the next live request (random, independent per request) and
    /// whether that request is also run on the other arm's version.
    pub fn pick(&self) -> (&Arm, Option<&Arm>) {
        let u = self.draw();
        let (arm, other) = if u < self.fraction {
            (&self.baseline, &self.candidate)
        } else {
            (&self.candidate, &self.baseline)
        };
        let paired = self.pair_rate > 0.0 && self.draw() < self.pair_rate;
        (arm, paired.then_some(other))
    }

    /// The figures so far.
    pub fn summary(&self) -> BaselineSummary {
        BaselineSummary {
            fraction: self.fraction,
            pair_rate: self.pair_rate,
            elapsed_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            candidate: self.candidate.summary(),
            baseline: self.baseline.summary(),
            pairs: self.pairs.summary(),
            replay: self.replay.summary(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_uniform_and_independent_of_order() {
        let seed = 42;
        let n = 100_000u64;
        let below = (0..n)
            .filter(|&i| ((mix(seed ^ i) >> 11) as f64 / (1u64 << 53) as f64) < 0.3)
            .count() as f64;
        assert!((below / n as f64 - 0.3).abs() < 0.01, "{below}");
        // Consecutive draws are not correlated: runs of the same side are as for coin flips.
        let side = |i: u64| (mix(seed ^ i) >> 63) == 1;
        let changes = (1..n).filter(|&i| side(i) != side(i - 1)).count() as f64;
        assert!((changes / n as f64 - 0.5).abs() < 0.01, "{changes}");
    }

    #[test]
    fn pairs_keep_the_mean_and_the_largest_deviation() {
        let p = Pairs::default();
        p.record(true, 0.0);
        p.record(false, 0.25);
        p.record(true, -0.05);
        let s = p.summary();
        assert_eq!((s.compared, s.agreed), (3, 2));
        assert!((s.mean_abs_deviation - 0.1).abs() < 1e-9, "{s:?}");
        assert_eq!(s.max_abs_deviation, 0.25);
        p.record(true, f64::NAN);
        assert_eq!(p.summary().max_abs_deviation, f64::MAX);
    }
}
