//! The watcher's own Prometheus metrics, served on `/metrics` (`--metrics-port`, the pod's
//! `watcher-metrics` port): the verdicts this pod's watcher reached, how long each step of a
//! rollout took, what it downloaded, and how fast a rollback put the previous version back.
//! The runtime's metrics (requests, latency, drift) are the runtime's; the operator's
//! `kinfer_rollouts_total` counts whole rollouts, these count one pod's part in them.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use kinfer_api::report::Verdict;

/// A step of a version's way in (the `step` label, and the span of the same name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Download into the shared volume.
    Fetch,
    /// Signature and digests.
    Verify,
    /// Loading into the runtime.
    Stage,
    /// The golden-set check.
    Gate,
    /// Mirrored live traffic.
    Shadow,
    /// Making it serve.
    Promote,
    /// The analysis window, to its verdict.
    Analysis,
    /// Putting the previous version back after a regression.
    Rollback,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 8] = [
        Step::Fetch,
        Step::Verify,
        Step::Stage,
        Step::Gate,
        Step::Shadow,
        Step::Promote,
        Step::Analysis,
        Step::Rollback,
    ];

    /// The label value and span name.
    pub fn name(self) -> &'static str {
        match self {
            Step::Fetch => "fetch",
            Step::Verify => "verify",
            Step::Stage => "stage",
            Step::Gate => "gate",
            Step::Shadow => "shadow",
            Step::Promote => "promote",
            Step::Analysis => "analysis",
            Step::Rollback => "rollback",
        }
    }
}

/// Upper bounds (seconds) of the step histograms: a rollback takes milliseconds, a fetch or an
/// analysis minutes.
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

#[derive(Default)]
struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    fn record(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b)
            && let Some(c) = self.counts.get(i)
        {
            c.fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.fetch_add(us, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (b, c) in BUCKETS.iter().zip(&self.counts) {
            cumulative += c.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        let labels = labels.trim_end_matches(',');
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// The watcher's counters.
#[derive(Default)]
pub struct Metrics {
    /// Verdicts by (verdict, reason). std `Mutex`: a few updates per rollout, never held
    /// across an await.
    verdicts: Mutex<BTreeMap<(&'static str, String), u64>>,
    steps: [Histogram; Step::ALL.len()],
    fetched_bytes: AtomicU64,
    fetch_failures: AtomicU64,
}

fn verdict_label(v: Option<Verdict>) -> &'static str {
    match v {
        Some(Verdict::Passed) => "Passed",
        Some(Verdict::RolledBack) => "RolledBack",
        Some(Verdict::Refused) => "Refused",
        Some(Verdict::Regressed) => "Regressed",
        Some(Verdict::Inconclusive) => "Inconclusive",
        None => "None",
    }
}

/// A label value with the characters the text format escapes escaped.
fn escaped(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// A verdict this watcher reached (`reason` empty when none).
    pub fn verdict(&self, verdict: Option<Verdict>, reason: Option<&str>) {
        let key = (verdict_label(verdict), reason.unwrap_or("").to_owned());
        let mut v = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        *v.entry(key).or_default() += 1;
    }

    /// How long a step took.
    pub fn step(&self, step: Step, took: Duration) {
        if let Some(h) = Step::ALL
            .iter()
            .position(|s| *s == step)
            .and_then(|i| self.steps.get(i))
        {
            h.record(took);
        }
    }

    /// Bytes downloaded by one fetch (nothing for an artifact found in the cache).
    pub fn fetched(&self, bytes: u64) {
        self.fetched_bytes.fetch_add(bytes, Relaxed);
    }

    /// A fetch attempt that failed (and will be retried).
    pub fn fetch_failed(&self) {
        self.fetch_failures.fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP kinfer_watcher_verdicts_total Verdicts this pod's watcher reached on the versions it was asked to bring in, by verdict and reason.\n# TYPE kinfer_watcher_verdicts_total counter\n");
        {
            let v = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
            for ((verdict, reason), n) in v.iter() {
                let _ = writeln!(
                    out,
                    "kinfer_watcher_verdicts_total{{verdict=\"{verdict}\",reason=\"{}\"}} {n}",
                    escaped(reason)
                );
            }
        }
        out.push_str("# HELP kinfer_watcher_step_duration_seconds How long each step of bringing a version in took (fetch, verify, stage, gate, shadow, promote, analysis, rollback).\n# TYPE kinfer_watcher_step_duration_seconds histogram\n");
        for (step, h) in Step::ALL.iter().zip(&self.steps) {
            let labels = format!("step=\"{}\",", step.name());
            h.render(&mut out, "kinfer_watcher_step_duration_seconds", &labels);
        }
        let _ = write!(
            out,
            "# HELP kinfer_watcher_fetched_bytes_total Artifact bytes downloaded from the model store.\n# TYPE kinfer_watcher_fetched_bytes_total counter\nkinfer_watcher_fetched_bytes_total {}\n\
             # HELP kinfer_watcher_fetch_failures_total Artifact downloads that failed and were retried.\n# TYPE kinfer_watcher_fetch_failures_total counter\nkinfer_watcher_fetch_failures_total {}\n",
            self.fetched_bytes.load(Relaxed),
            self.fetch_failures.load(Relaxed)
        );
        out
    }
}

/// Serves `/metrics` on `listener` until the process exits. Any other path is a 404.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let (status, body) = if req.uri().path() == "/metrics" {
                        (200, metrics.render())
                    } else {
                        (404, "not found: the watcher serves /metrics\n".to_owned())
                    };
                    Response::builder()
                        .status(status)
                        .header("content-type", "text/plain; version=0.0.4")
                        .body(Full::new(Bytes::from(body)))
                }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_verdicts_steps_and_bytes_as_the_text_format_says() {
        let m = Metrics::default();
        m.verdict(Some(Verdict::RolledBack), Some("LatencyRegression"));
        m.verdict(Some(Verdict::RolledBack), Some("LatencyRegression"));
        m.verdict(Some(Verdict::Passed), None);
        m.step(Step::Rollback, Duration::from_millis(3));
        m.step(Step::Fetch, Duration::from_secs(700));
        m.fetched(1234);
        m.fetch_failed();
        let text = m.render();
        for line in [
            "kinfer_watcher_verdicts_total{verdict=\"RolledBack\",reason=\"LatencyRegression\"} 2",
            "kinfer_watcher_verdicts_total{verdict=\"Passed\",reason=\"\"} 1",
            "kinfer_watcher_step_duration_seconds_bucket{step=\"rollback\",le=\"0.001\"} 0",
            "kinfer_watcher_step_duration_seconds_bucket{step=\"rollback\",le=\"0.005\"} 1",
            "kinfer_watcher_step_duration_seconds_count{step=\"rollback\"} 1",
            "kinfer_watcher_step_duration_seconds_bucket{step=\"fetch\",le=\"600\"} 0",
            "kinfer_watcher_step_duration_seconds_bucket{step=\"fetch\",le=\"+Inf\"} 1",
            "kinfer_watcher_step_duration_seconds_sum{step=\"fetch\"} 700",
            "kinfer_watcher_fetched_bytes_total 1234",
            "kinfer_watcher_fetch_failures_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
    }
}
