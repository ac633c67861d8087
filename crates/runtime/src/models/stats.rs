//! Per-version statistics, recorded without locks on the request path: log-linear latency
//! histograms (HdrHistogram-style buckets, ~4.4% relative precision from 1 µs to ~70 s) in
//! atomics, request and error counters, batch sizes, and the distribution of the first output
//! (for drift). Each histogram exists twice: since the version was loaded/promoted, and over a
//! sliding window made of rotating slots.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::{Duration, Instant},
};

pub use kinfer_contract::admin::{Percentiles, VersionStats as StatsSnapshot};

use crate::tensor::{TensorSpec, TensorView};

/// Sub-buckets per power of two: 16 → each bucket spans 1/16 of an octave (~4.4%).
const SUB: u32 = 16;
/// Octaves above 1 µs: 2^26 µs ≈ 67 s.
const OCTAVES: u32 = 26;
const BUCKETS: usize = (SUB * (OCTAVES + 1)) as usize;

/// A lock-free log-linear histogram of durations in microseconds.
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    total: AtomicU64,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            total: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

fn bucket_of(us: u64) -> usize {
    if us < SUB as u64 {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros(); // >= 4
    let shift = octave - SUB.trailing_zeros();
    let sub = ((us >> shift) as u32) & (SUB - 1);
    (((octave - SUB.trailing_zeros() + 1) * SUB + sub) as usize).min(BUCKETS - 1)
}

/// Lowest and highest value (µs) that fall into bucket `b`.
pub fn bucket_bounds(b: usize) -> (u64, u64) {
    let lo = if b == 0 { 0 } else { bucket_upper(b - 1) + 1 };
    (lo, bucket_upper(b))
}

/// Upper bound (µs) of a bucket, the value reported for a percentile that lands in it.
fn bucket_upper(b: usize) -> u64 {
    let b = b as u32;
    if b < SUB {
        return b as u64;
    }
    let octave = b / SUB - 1 + SUB.trailing_zeros();
    let sub = b % SUB;
    let shift = octave - SUB.trailing_zeros();
    (((SUB + sub + 1) as u64) << shift) - 1
}

impl Histogram {
    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.counts[bucket_of(us)].fetch_add(1, Relaxed);
        self.total.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Clears all counts.
    pub fn reset(&self) {
        for c in self.counts.iter() {
            c.store(0, Relaxed);
        }
        self.total.store(0, Relaxed);
        self.sum_us.store(0, Relaxed);
    }

    /// Adds this histogram's counts into `into`.
    fn add_to(&self, into: &mut [u64]) {
        for (i, c) in self.counts.iter().enumerate() {
            into[i] += c.load(Relaxed);
        }
    }

    /// Count and sum (µs).
    pub fn count_sum(&self) -> (u64, u64) {
        (self.total.load(Relaxed), self.sum_us.load(Relaxed))
    }

    /// Snapshot of the bucket counts.
    pub fn snapshot(&self) -> Vec<u64> {
        let mut v = vec![0; BUCKETS];
        self.add_to(&mut v);
        v
    }
}

/// Computes percentiles (upper bucket bounds, seconds) from bucket counts.
pub fn percentiles(counts: &[u64]) -> Percentiles {
    let total: u64 = counts.iter().sum();
    let at = |q: f64| -> f64 {
        if total == 0 {
            return 0.0;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bucket_upper(i) as f64 / 1e6;
            }
        }
        bucket_upper(counts.len() - 1) as f64 / 1e6
    };
    Percentiles {
        count: total,
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
    }
}

/// Cumulative counts at Prometheus bucket bounds (seconds) for the text exposition.
pub fn prometheus_buckets(counts: &[u64], bounds: &[f64]) -> Vec<u64> {
    bounds
        .iter()
        .map(|&le| {
            counts
                .iter()
                .enumerate()
                .filter(|(i, _)| (bucket_upper(*i) as f64) / 1e6 <= le)
                .map(|(_, c)| c)
                .sum()
        })
        .collect()
}

/// Slots of the sliding window.
const SLOTS: usize = 6;

/// A histogram since start plus one over the last `SLOTS × slot` seconds.
pub struct WindowedHistogram {
    /// Since the version was loaded (or the last `reset`).
    pub total: Histogram,
    slots: [Histogram; SLOTS],
    slot_epoch: [AtomicU64; SLOTS],
    origin: Instant,
    slot: Duration,
}

impl WindowedHistogram {
    fn new(origin: Instant, slot: Duration) -> Self {
        Self {
            total: Histogram::default(),
            slots: Default::default(),
            slot_epoch: Default::default(),
            origin,
            slot,
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        (now.duration_since(self.origin).as_nanos() / self.slot.as_nanos().max(1)) as u64
    }

    /// Records into the total and the current slot (clearing a slot that is a window old).
    pub fn record(&self, d: Duration) {
        self.total.record(d);
        let e = self.epoch(Instant::now());
        let i = (e % SLOTS as u64) as usize;
        let prev = self.slot_epoch[i].load(Relaxed);
        if prev != e
            && self.slot_epoch[i]
                .compare_exchange(prev, e, Relaxed, Relaxed)
                .is_ok()
        {
            // This slot held an older window's counts. A concurrent record may land in it while
            // it is cleared; at worst one sample is lost, which a latency window tolerates.
            self.slots[i].reset();
        }
        self.slots[i].record(d);
    }

    /// Bucket counts over the sliding window.
    pub fn window(&self) -> Vec<u64> {
        let e = self.epoch(Instant::now());
        let mut v = vec![0; BUCKETS];
        for i in 0..SLOTS {
            let se = self.slot_epoch[i].load(Relaxed);
            if e.saturating_sub(se) < SLOTS as u64 {
                self.slots[i].add_to(&mut v);
            }
        }
        v
    }

    /// Clears everything (on promotion: "since promotion" starts now).
    pub fn reset(&self) {
        self.total.reset();
        for s in &self.slots {
            s.reset();
        }
    }
}

/// Bins of the output distribution.
pub const OUTPUT_BINS: usize = 20;

/// Counters and histograms of one loaded version.
pub struct VersionStats {
    /// End-to-end request latency.
    pub request: WindowedHistogram,
    /// End-to-end latency by protocol (HTTP, gRPC), for `kinfer_request_duration_seconds`.
    pub protocol: [Histogram; 2],
    /// Time waiting in the queue.
    pub queue: WindowedHistogram,
    /// Time in `session.run`.
    pub compute: WindowedHistogram,
    /// Successful requests.
    pub ok: AtomicU64,
    /// Failed requests by kind: 400, 404, 500, 503, 504.
    pub errors: [AtomicU64; 5],
    /// The 504s among them whose deadline the client chose (not the server's failure).
    pub client_deadlines: AtomicU64,
    /// Batches run.
    pub batches: AtomicU64,
    /// Rows in all batches (mean batch = rows / batches).
    pub batch_rows: AtomicU64,
    /// Batch-size histogram: 1, 2, 3-4, 5-8, …, > 256.
    pub batch_sizes: [AtomicU64; 10],
    /// Distribution of the first output: for one value per row, 20 bins over [0, 1]
    /// (scores/probabilities, clamped); for a vector per row, the arg-max class (mod 20).
    pub output_bins: [AtomicU64; OUTPUT_BINS],
    /// Which rule fills `output_bins`: "value" or "argmax".
    pub output_kind: &'static str,
    /// Rows per decision-policy label (indexes of `Policy::labels`).
    pub decisions: [AtomicU64; crate::policy::MAX_LABELS],
    /// Requests this version answered, by protocol and status code (indexes of
    /// `server::CODES`), for `kinfer_requests_total{version}`: counters, never reset.
    pub codes: [[AtomicU64; 6]; 2],
}

/// Index of the largest value (the first on ties; NaN never wins).
pub fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Error-kind index in [`VersionStats::errors`] for a status code label.
pub fn error_index(label: &str) -> usize {
    match label {
        "400" => 0,
        "404" => 1,
        "500" => 2,
        "503" => 3,
        _ => 4,
    }
}

impl VersionStats {
    /// Fresh statistics for a version with these outputs.
    pub fn new(outputs: &[TensorSpec]) -> Self {
        let now = Instant::now();
        let slot = Duration::from_secs(10);
        let per_row: i64 = outputs
            .first()
            .map(|o| o.shape.iter().skip(1).filter(|&&d| d > 0).product())
            .unwrap_or(1);
        Self {
            request: WindowedHistogram::new(now, slot),
            protocol: Default::default(),
            queue: WindowedHistogram::new(now, slot),
            compute: WindowedHistogram::new(now, slot),
            ok: AtomicU64::new(0),
            errors: Default::default(),
            client_deadlines: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            batch_rows: AtomicU64::new(0),
            batch_sizes: Default::default(),
            output_bins: Default::default(),
            output_kind: if per_row > 1 { "argmax" } else { "value" },
            decisions: Default::default(),
            codes: Default::default(),
        }
    }

    /// Records a batch run by a worker.
    pub fn record_batch(&self, rows: usize, compute: Duration) {
        self.batches.fetch_add(1, Relaxed);
        self.batch_rows.fetch_add(rows as u64, Relaxed);
        let idx = (usize::BITS - rows.saturating_sub(1).leading_zeros()) as usize;
        self.batch_sizes[idx.min(9)].fetch_add(1, Relaxed);
        self.compute.record(compute);
    }

    /// Counts one finished request: its latency, and its outcome by kind (`client_deadline`: it
    /// failed on a deadline the client chose, not the server's).
    pub fn record_request(
        &self,
        elapsed: Duration,
        result: Result<(), &crate::error::InferError>,
        client_deadline: bool,
    ) {
        self.request.record(elapsed);
        match result {
            Ok(()) => {
                self.ok.fetch_add(1, Relaxed);
            }
            Err(e) => {
                if let Some(c) = self.errors.get(error_index(e.metric_label())) {
                    c.fetch_add(1, Relaxed);
                }
                if client_deadline && matches!(e, crate::error::InferError::Deadline(_)) {
                    self.client_deadlines.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// Records the first output's values of a successful request into the distribution.
    pub fn record_output(&self, first: TensorView<'_>) {
        use crate::tensor::element_f64;
        let Some(size) = first.dtype.size() else {
            return;
        };
        let n = first.data.len() / size;
        let rows = (first.shape.first().copied().unwrap_or(1).max(1) as usize).min(n.max(1));
        let per_row = n / rows;
        if per_row == 0 {
            return;
        }
        // Read in place: this runs for every request, so no per-request Vec.
        for r in 0..rows {
            let at = |k: usize| element_f64(first, r * per_row + k).unwrap_or(f64::NAN);
            let bin = if per_row == 1 {
                let v = at(0);
                if v.is_nan() {
                    continue;
                }
                ((v.clamp(0.0, 1.0) * OUTPUT_BINS as f64) as usize).min(OUTPUT_BINS - 1)
            } else {
                let mut best = 0;
                for k in 1..per_row {
                    if at(k) > at(best) || at(best).is_nan() {
                        best = k;
                    }
                }
                best % OUTPUT_BINS
            };
            self.output_bins[bin].fetch_add(1, Relaxed);
        }
    }

    /// Counts per bin of the first output's distribution (`output_bins`, read now).
    pub fn distribution(&self) -> Vec<u64> {
        self.output_bins.iter().map(|b| b.load(Relaxed)).collect()
    }

    /// Clears the since-promotion figures.
    pub fn reset(&self) {
        self.request.reset();
        self.queue.reset();
        self.compute.reset();
        self.ok.store(0, Relaxed);
        for e in self.errors.iter().chain([&self.client_deadlines]) {
            e.store(0, Relaxed);
        }
        for b in self.output_bins.iter().chain(&self.decisions) {
            b.store(0, Relaxed);
        }
    }

    /// The figures `GET /admin/stats` reports.
    pub fn snapshot(&self) -> StatsSnapshot {
        let e: [u64; 5] = std::array::from_fn(|i| self.errors[i].load(Relaxed));
        let errors: u64 = e.iter().sum();
        // 500, 503 and the 504s of the server's own deadline.
        let server_errors = e[2] + e[3] + e[4].saturating_sub(self.client_deadlines.load(Relaxed));
        let ok = self.ok.load(Relaxed);
        let requests = ok + errors;
        let rate = |n: u64| {
            if requests == 0 {
                0.0
            } else {
                n as f64 / requests as f64
            }
        };
        let batches = self.batches.load(Relaxed);
        StatsSnapshot {
            requests,
            errors,
            error_rate: rate(errors),
            server_errors,
            server_error_rate: rate(server_errors),
            request: percentiles(&self.request.total.snapshot()),
            request_window: percentiles(&self.request.window()),
            queue: percentiles(&self.queue.total.snapshot()),
            compute: percentiles(&self.compute.total.snapshot()),
            batches,
            mean_batch: if batches == 0 {
                0.0
            } else {
                self.batch_rows.load(Relaxed) as f64 / batches as f64
            },
            batch_sizes: self.batch_sizes.iter().map(|b| b.load(Relaxed)).collect(),
            output_kind: self.output_kind.to_owned(),
            output_distribution: self.distribution(),
            decisions: self.decisions.iter().map(|b| b.load(Relaxed)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for us in [1u64, 15, 16, 17, 100, 1000, 12345, 1_000_000, 60_000_000] {
            let b = bucket_of(us);
            assert!(b >= last);
            last = b;
            let up = bucket_upper(b);
            assert!(up >= us, "{us} -> {up}");
            assert!((up - us) as f64 <= us as f64 * 0.07 + 1.0, "{us} -> {up}");
            let (lo, hi) = bucket_bounds(b);
            assert!(lo <= us && us <= hi, "{us} not in [{lo}, {hi}]");
        }
        // The buckets tile the line: each starts right after the one before.
        for b in 1..BUCKETS {
            assert_eq!(bucket_bounds(b).0, bucket_bounds(b - 1).1 + 1, "bucket {b}");
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let h = Histogram::default();
        for i in 1..=1000u64 {
            h.record(Duration::from_micros(i * 10));
        }
        let p = percentiles(&h.snapshot());
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 0.005).abs() / 0.005 < 0.07, "{p:?}");
        assert!((p.p99 - 0.0099).abs() / 0.0099 < 0.07, "{p:?}");
    }

    #[test]
    fn output_distribution_bins_scores_and_argmax() {
        use crate::tensor::{DataType, Tensor};
        let info = |shape: Vec<i64>| {
            vec![TensorSpec {
                name: "y".into(),
                dtype: DataType::Fp32,
                shape,
            }]
        };
        let t = |shape: Vec<i64>, v: &[f32]| Tensor {
            name: "y".into(),
            dtype: DataType::Fp32,
            shape,
            data: v.iter().flat_map(|f| f.to_le_bytes()).collect(),
        };
        let scores = VersionStats::new(&info(vec![-1, 1]));
        scores.record_output(t(vec![3, 1], &[0.01, 0.97, f32::NAN]).view());
        let bins: Vec<u64> = scores.output_bins.iter().map(|b| b.load(Relaxed)).collect();
        assert_eq!((bins[0], bins[19], bins.iter().sum::<u64>()), (1, 1, 2));
        let classes = VersionStats::new(&info(vec![-1, 3]));
        classes.record_output(t(vec![2, 3], &[0.1, 0.7, 0.2, 0.9, 0.05, 0.05]).view());
        let bins: Vec<u64> = classes
            .output_bins
            .iter()
            .map(|b| b.load(Relaxed))
            .collect();
        assert_eq!((bins[0], bins[1], bins.iter().sum::<u64>()), (1, 1, 2));
    }

    #[test]
    fn prometheus_buckets_are_cumulative() {
        let h = Histogram::default();
        h.record(Duration::from_micros(50));
        h.record(Duration::from_millis(5));
        let c = prometheus_buckets(&h.snapshot(), &[0.0001, 0.01, 1.0]);
        assert_eq!(c, vec![1, 2, 2]);
    }
}
