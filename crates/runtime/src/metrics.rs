//! Prometheus text exposition (`GET /metrics` on `--metrics-port`) of the names in docs/operations.md ("Metrics"),
//! rendered on scrape from the lock-free per-version statistics. Label values (model, version and
//! policy label names come from users) are escaped as the text format requires.

use std::{
    fmt::{self, Write},
    sync::atomic::Ordering::Relaxed,
};

use crate::{
    error::PANICS,
    models::stats::{Histogram, VersionStats, prometheus_buckets},
    server::{CODES, Protocol, Server},
};

/// A label value escaped as the text format requires: backslash, double quote and newline.
pub struct Label<'a>(pub &'a str);

impl fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

const BOUNDS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let counts = h.snapshot();
    for (le, c) in BOUNDS.iter().zip(prometheus_buckets(&counts, &BOUNDS)) {
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {c}");
    }
    let (count, sum_us) = h.count_sum();
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
}

/// Rows each side needs before `kinfer_drift_score` is exported: below it the PSI of two samples
/// of one distribution is mostly sampling noise ((bins − 1)·(1/n₁ + 1/n₂), 0.38 at 100 each).
pub const DRIFT_MIN_ROWS: u64 = 1000;

/// `kinfer_drift_score{version, baseline}`: the PSI of the serving version's first-output
/// distribution against the previous version's (each since it was loaded or made to serve), as
/// the watcher's analysis computes it, once both have [`DRIFT_MIN_ROWS`].
fn drift(out: &mut String, s: &Server) {
    let r = &s.registry;
    let _ = writeln!(
        out,
        "# HELP kinfer_drift_score Population Stability Index of the serving version's output distribution against the previous version's (exported once both have {DRIFT_MIN_ROWS} rows).\n# TYPE kinfer_drift_score gauge"
    );
    let (Some(v), Some(p)) = (r.serving(), r.previous()) else {
        return;
    };
    let (cur, base) = (v.stats.distribution(), p.stats.distribution());
    if cur.iter().sum::<u64>() < DRIFT_MIN_ROWS || base.iter().sum::<u64>() < DRIFT_MIN_ROWS {
        return;
    }
    if let Some(score) = kinfer_contract::drift::psi(&base, &cur) {
        let _ = writeln!(
            out,
            "kinfer_drift_score{{model=\"{}\",version=\"{}\",baseline=\"{}\"}} {score}",
            Label(&r.name),
            Label(&v.info.version),
            Label(&p.info.version)
        );
    }
}

/// Renders every metric.
pub fn render(s: &Server) -> String {
    let r = &s.registry;
    let mut out = String::with_capacity(16 * 1024);
    let model = Label(&r.name);
    out.push_str("# HELP kinfer_request_duration_seconds End-to-end inference latency.\n# TYPE kinfer_request_duration_seconds histogram\n");
    for v in r.all() {
        for p in [Protocol::Http, Protocol::Grpc] {
            let labels = format!(
                "model=\"{model}\",version=\"{}\",protocol=\"{}\"",
                Label(&v.info.version),
                p.label()
            );
            histogram(
                &mut out,
                "kinfer_request_duration_seconds",
                &labels,
                &v.stats.protocol[p as usize],
            );
        }
    }
    for (name, help, pick) in [
        (
            "kinfer_queue_duration_seconds",
            "Time requests wait in the batching queue.",
            (|st: &VersionStats| &st.queue.total) as fn(&VersionStats) -> &Histogram,
        ),
        (
            "kinfer_compute_duration_seconds",
            "Time in session.run per batch.",
            |st: &VersionStats| &st.compute.total,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for v in r.all() {
            let labels = format!("model=\"{model}\",version=\"{}\"", Label(&v.info.version));
            histogram(&mut out, name, &labels, pick(&v.stats));
        }
    }
    out.push_str(
        "# HELP kinfer_batch_size Rows per session.run.\n# TYPE kinfer_batch_size histogram\n",
    );
    for v in r.all() {
        let labels = format!("model=\"{model}\",version=\"{}\"", Label(&v.info.version));
        let mut cum = 0;
        for (i, b) in v.stats.batch_sizes.iter().enumerate() {
            cum += b.load(Relaxed);
            let le = if i == 9 {
                "+Inf".to_string()
            } else {
                (1u64 << i).to_string()
            };
            let _ = writeln!(
                out,
                "kinfer_batch_size_bucket{{{labels},le=\"{le}\"}} {cum}"
            );
        }
        let _ = writeln!(
            out,
            "kinfer_batch_size_sum{{{labels}}} {}",
            v.stats.batch_rows.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "kinfer_batch_size_count{{{labels}}} {}",
            v.stats.batches.load(Relaxed)
        );
    }
    out.push_str("# HELP kinfer_queue_depth Requests waiting per version.\n# TYPE kinfer_queue_depth gauge\n");
    for v in r.all() {
        let _ = writeln!(
            out,
            "kinfer_queue_depth{{model=\"{model}\",version=\"{}\"}} {}",
            Label(&v.info.version),
            v.queue_depth()
        );
    }
    out.push_str("# HELP kinfer_requests_total Inference requests by the version that answered (empty: failed before one was chosen), protocol and status code.\n# TYPE kinfer_requests_total counter\n");
    for p in [Protocol::Http, Protocol::Grpc] {
        let (pi, proto) = (p as usize, p.label());
        for (i, code) in CODES.iter().enumerate() {
            // Failures before a version was chosen: every request minus those that reached one.
            let before = s.requests[pi][i]
                .load(Relaxed)
                .saturating_sub(s.reached[pi][i].load(Relaxed));
            let _ = writeln!(
                out,
                "kinfer_requests_total{{model=\"{model}\",version=\"\",protocol=\"{proto}\",code=\"{code}\"}} {before}"
            );
            for v in r.all() {
                let _ = writeln!(
                    out,
                    "kinfer_requests_total{{model=\"{model}\",version=\"{}\",protocol=\"{proto}\",code=\"{code}\"}} {}",
                    Label(&v.info.version),
                    v.stats.codes[pi][i].load(Relaxed)
                );
            }
        }
    }
    drift(&mut out, s);
    out.push_str("# HELP kinfer_model_swaps_total Promotions and rollbacks.\n# TYPE kinfer_model_swaps_total counter\n");
    let _ = writeln!(
        out,
        "kinfer_model_swaps_total{{model=\"{model}\"}} {}",
        r.swaps.load(Relaxed)
    );
    out.push_str("# HELP kinfer_model_rollbacks_total Swaps back to the previous version in this runtime (automatic and POST /admin/rollback).\n# TYPE kinfer_model_rollbacks_total counter\n");
    let _ = writeln!(
        out,
        "kinfer_model_rollbacks_total{{model=\"{model}\"}} {}",
        r.rollbacks.load(Relaxed)
    );
    if let Some(p) = &s.policy {
        out.push_str("# HELP kinfer_decisions_total Rows per decision-policy label and version.\n# TYPE kinfer_decisions_total counter\n");
        for v in r.all() {
            for (i, label) in p.labels().enumerate() {
                let n = v.stats.decisions[i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "kinfer_decisions_total{{model=\"{model}\",version=\"{}\",label=\"{}\"}} {n}",
                    Label(&v.info.version),
                    Label(label),
                );
            }
        }
    }
    if let Some(log) = &s.decision_log {
        out.push_str("# HELP kinfer_decision_log_dropped_total Decision-log records dropped because the writer fell behind.\n# TYPE kinfer_decision_log_dropped_total counter\n");
        let _ = writeln!(
            out,
            "kinfer_decision_log_dropped_total{{model=\"{model}\"}} {}",
            log.dropped.load(Relaxed)
        );
    }
    out.push_str("# HELP kinfer_panics_total Panics caught while handling requests (each a bug, answered with an error).\n# TYPE kinfer_panics_total counter\n");
    let _ = writeln!(
        out,
        "kinfer_panics_total{{model=\"{model}\"}} {}",
        PANICS.load(Relaxed)
    );
    out.push_str("# HELP kinfer_inflight_bytes Request bytes held by requests in flight (--max-inflight-bytes bounds it).\n# TYPE kinfer_inflight_bytes gauge\n");
    let _ = writeln!(
        out,
        "kinfer_inflight_bytes{{model=\"{model}\"}} {}",
        s.budget.in_use()
    );
    out.push_str(
        "# HELP kinfer_serving Whether a version serves (1) or not.\n# TYPE kinfer_serving gauge\n",
    );
    let serving = r.serving().map(|v| v.info.version.clone());
    for v in r.all() {
        let on = u8::from(serving.as_deref() == Some(v.info.version.as_str()));
        let _ = writeln!(
            out,
            "kinfer_serving{{model=\"{model}\",version=\"{}\"}} {on}",
            Label(&v.info.version)
        );
    }
    out.push_str("# HELP kinfer_execution_provider The ONNX Runtime execution provider a loaded version runs on (1; `cpu` after --ep-fallback cpu).\n# TYPE kinfer_execution_provider gauge\n");
    for v in r.all() {
        let _ = writeln!(
            out,
            "kinfer_execution_provider{{model=\"{model}\",version=\"{}\",provider=\"{}\"}} 1",
            Label(&v.info.version),
            v.info.provider.as_str()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Label;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(Label("a\"b\\c\nd").to_string(), "a\\\"b\\\\c\\nd");
        assert_eq!(Label("fraud-v2").to_string(), "fraud-v2");
    }
}
