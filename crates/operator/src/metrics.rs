//! The operator's Prometheus metrics, rendered in the text exposition format on `/metrics`:
//!
//! - `kinfer_reconcile_total{kind,result}`: reconciles by resource kind and `ok`/`error`
//! - `kinfer_reconcile_duration_seconds{kind}`: histogram of reconcile durations
//! - `kinfer_reconcile_errors_total{reason}`: failed reconciles by error label
//! - `kinfer_rollouts_total{outcome}`: finished rollouts (`promoted`, `rolled_back`, `refused`, `stopped`)
//! - `kinfer_rollbacks_total`: automatic rollbacks
//! - `kinfer_alerts_total{result}`: webhook deliveries (`sent`, `failed`, `dropped`)
//! - `kinfer_leader`: 1 while this replica holds the Lease
//!
//! A handful of label values, so plain maps under a mutex are enough: a reconcile touches them
//! once, never on a hot path. (std `Mutex`: never held across an await.)

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// Histogram bucket bounds, seconds.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// The registry.
#[derive(Default)]
pub struct Metrics {
    reconciles: Mutex<BTreeMap<(String, String), u64>>,
    durations: Mutex<BTreeMap<String, Histogram>>,
    errors: Mutex<BTreeMap<String, u64>>,
    rollouts: Mutex<BTreeMap<String, u64>>,
    alerts: Mutex<BTreeMap<String, u64>>,
    rollbacks: AtomicU64,
    leader: AtomicU64,
}

fn bump<K: Ord>(m: &Mutex<BTreeMap<K, u64>>, k: K) {
    *m.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(k)
        .or_default() += 1;
}

impl Metrics {
    /// Records one reconcile of `kind` that took `took`; `error` is its error label if it failed.
    pub fn reconciled(&self, kind: &str, took: Duration, error: Option<&str>) {
        let result = if error.is_some() { "error" } else { "ok" };
        bump(&self.reconciles, (kind.to_owned(), result.to_owned()));
        if let Some(reason) = error {
            bump(&self.errors, reason.to_owned());
        }
        let secs = took.as_secs_f64();
        let mut d = self.durations.lock().unwrap_or_else(|e| e.into_inner());
        let h = d.entry(kind.to_owned()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// Records a finished rollout.
    pub fn rollout(&self, outcome: &str) {
        bump(&self.rollouts, outcome.to_owned());
        if outcome == "rolled_back" {
            self.rollbacks.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a webhook delivery result.
    pub fn alert(&self, result: &str) {
        bump(&self.alerts, result.to_owned());
    }

    /// Sets the leader gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(u64::from(leader), Ordering::Relaxed);
    }

    /// Automatic rollbacks so far.
    pub fn rollbacks(&self) -> u64 {
        self.rollbacks.load(Ordering::Relaxed)
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let lock =
            |m: &Mutex<BTreeMap<String, u64>>| m.lock().unwrap_or_else(|e| e.into_inner()).clone();
        o.push_str("# HELP kinfer_reconcile_total Reconciles by resource kind and result.\n# TYPE kinfer_reconcile_total counter\n");
        for ((kind, result), v) in self
            .reconciles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                o,
                "kinfer_reconcile_total{{kind=\"{kind}\",result=\"{result}\"}} {v}"
            );
        }
        o.push_str("# HELP kinfer_reconcile_duration_seconds Reconcile duration.\n# TYPE kinfer_reconcile_duration_seconds histogram\n");
        for (kind, h) in self
            .durations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "kinfer_reconcile_duration_seconds_bucket{{kind=\"{kind}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "kinfer_reconcile_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                o,
                "kinfer_reconcile_duration_seconds_sum{{kind=\"{kind}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                o,
                "kinfer_reconcile_duration_seconds_count{{kind=\"{kind}\"}} {}",
                h.count
            );
        }
        o.push_str("# HELP kinfer_reconcile_errors_total Failed reconciles by reason.\n# TYPE kinfer_reconcile_errors_total counter\n");
        for (r, v) in lock(&self.errors) {
            let _ = writeln!(o, "kinfer_reconcile_errors_total{{reason=\"{r}\"}} {v}");
        }
        o.push_str("# HELP kinfer_rollouts_total Finished rollouts by outcome.\n# TYPE kinfer_rollouts_total counter\n");
        // Every outcome from 0: an alert on `increase(...[w]) > 0` cannot see a series' first
        // sample, so a series born at 1 (the first refusal) would never fire it.
        let mut rollouts: BTreeMap<String, u64> = crate::rollout::Outcome::ALL
            .iter()
            .map(|o| (o.label().to_owned(), 0))
            .collect();
        rollouts.extend(lock(&self.rollouts));
        for (r, v) in rollouts {
            let _ = writeln!(o, "kinfer_rollouts_total{{outcome=\"{r}\"}} {v}");
        }
        o.push_str("# HELP kinfer_rollbacks_total Automatic rollbacks.\n# TYPE kinfer_rollbacks_total counter\n");
        let _ = writeln!(o, "kinfer_rollbacks_total {}", self.rollbacks());
        o.push_str("# HELP kinfer_alerts_total Alert webhook deliveries by result.\n# TYPE kinfer_alerts_total counter\n");
        for (r, v) in lock(&self.alerts) {
            let _ = writeln!(o, "kinfer_alerts_total{{result=\"{r}\"}} {v}");
        }
        o.push_str("# HELP kinfer_leader 1 while this replica holds the leader Lease.\n# TYPE kinfer_leader gauge\n");
        let _ = writeln!(o, "kinfer_leader {}", self.leader.load(Ordering::Relaxed));
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family() {
        let m = Metrics::default();
        m.reconciled("InferenceService", Duration::from_millis(3), None);
        m.reconciled(
            "InferenceService",
            Duration::from_millis(30),
            Some("api_409"),
        );
        m.rollout("promoted");
        m.rollout("rolled_back");
        m.set_leader(true);
        let t = m.render();
        assert!(t.contains("kinfer_reconcile_total{kind=\"InferenceService\",result=\"ok\"} 1"));
        assert!(t.contains("kinfer_reconcile_total{kind=\"InferenceService\",result=\"error\"} 1"));
        assert!(t.contains("kinfer_reconcile_errors_total{reason=\"api_409\"} 1"));
        assert!(t.contains(
            "kinfer_reconcile_duration_seconds_bucket{kind=\"InferenceService\",le=\"0.005\"} 1"
        ));
        assert!(t.contains(
            "kinfer_reconcile_duration_seconds_bucket{kind=\"InferenceService\",le=\"0.05\"} 2"
        ));
        assert!(t.contains("kinfer_reconcile_duration_seconds_count{kind=\"InferenceService\"} 2"));
        assert!(t.contains("kinfer_rollouts_total{outcome=\"promoted\"} 1"));
        assert!(t.contains("kinfer_rollouts_total{outcome=\"refused\"} 0"));
        assert!(t.contains("kinfer_rollouts_total{outcome=\"stopped\"} 0"));
        assert!(t.contains("kinfer_rollbacks_total 1"));
        assert!(t.contains("kinfer_leader 1"));
    }
}
