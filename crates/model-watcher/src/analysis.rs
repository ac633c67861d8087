//! The before/after verdict, as pure functions: compare a freshly promoted version's figures with
//! the baseline the previous version had just before the swap, and say keep, wait or roll back.
//! It judges when the paired baseline is off (`analysis.baseline.fraction: 0`) or the runtime
//! cannot split traffic; [`crate::paired`] judges otherwise. The [`Judgement`] is shared.
//!
//! Figures come from the runtime's `GET /admin/stats` (see [`Figures::from_stats`]): p90 and p99
//! of the end-to-end request latency, the rate of the failures the server is answerable for
//! (model and internal errors, overload, the server's own deadlines — not malformed requests or
//! deadlines the client chose), and the output distribution (20 bins of a score in [0, 1], or the
//! arg-max class). Drift is the Population Stability Index of the two output distributions.
//!
//! Both tests account for how few requests a canary may have seen. The p99 of fewer than
//! [`P99_MIN_REQUESTS`] requests rests on fewer than ten samples (at 100 requests it is the
//! second slowest), so below that the p90 stands in for it against `maxP99Ratio`. The PSI of two
//! samples of the same distribution is not 0 but about (bins − 1)·(1/n₁ + 1/n₂) (0.19 for 20 bins
//! and 100 requests, next to a usual limit of 0.2), so that expected sampling part is taken off
//! before the score is compared with `maxScore`.

use std::time::Duration;

use kinfer_api::inference_service::{AnalysisFigures, AnalysisSpec};
use kinfer_api::report::reasons;
use kinfer_contract::admin::StatsAnswer;
pub use kinfer_contract::drift::{psi, psi_sampling_noise};

/// Requests from which the p99 is compared (ten samples beyond it); below, the p90 is.
pub const P99_MIN_REQUESTS: u64 = 1000;

/// One version's figures, read from the runtime's stats.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Requests answered since promotion (or since load).
    pub requests: u64,
    /// Failed requests the server is answerable for (not clients' mistakes).
    pub errors: u64,
    /// p90 of the request latency in seconds over the figures' span (0 with no requests).
    pub p90: f64,
    /// p99 of the request latency in seconds over the figures' span (0 with no requests).
    pub p99: f64,
    /// Output distribution counts.
    pub distribution: Vec<u64>,
    /// `value` or `argmax`: how the distribution was binned.
    pub output_kind: String,
}

impl Figures {
    /// Reads `versions.<version>` of a stats answer. `recent` takes the latency of the last
    /// minute (the baseline: how the old version behaved just before the swap) instead of since
    /// load.
    pub fn from_stats(stats: &StatsAnswer, version: &str, recent: bool) -> Option<Self> {
        let s = stats.stats(version)?;
        let latency = if recent && s.request_window.count > 0 {
            &s.request_window
        } else {
            &s.request
        };
        Some(Self {
            requests: s.requests,
            errors: s.server_errors,
            p90: latency.p90,
            p99: latency.p99,
            distribution: s.output_distribution.clone(),
            output_kind: s.output_kind.clone(),
        })
    }

    /// errors / requests (0 with no requests).
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// What the analysis says now.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Not enough evidence yet (the message says what is awaited).
    Wait(String),
    /// The window is over and nothing regressed.
    Pass(String),
    /// The longest window is over without evidence either way: hold.
    Inconclusive(String),
    /// A regression: roll back. `reason` is one of [`reasons`].
    Fail {
        /// `LatencyRegression`, `ErrorRateRegression` or `DriftDetected`.
        reason: &'static str,
        /// The figures against the limits.
        message: String,
    },
}

/// Limits of one analysis, from the InferenceService's `rollout.analysis`, plus the latency
/// noise floor: a p99 ratio over the limit counts only when the p99 also grew by more than
/// this (a 40 µs model whose p99 moves to 70 µs is noise, not a regression).
#[derive(Debug, Clone)]
pub struct Limits {
    /// The InferenceService's analysis settings.
    pub spec: AnalysisSpec,
    /// Smallest p99 increase that may count as a regression.
    pub p99_noise_floor: Duration,
}

/// The figures reported for the current state.
pub fn figures(baseline: Option<&Figures>, current: &Figures) -> AnalysisFigures {
    AnalysisFigures {
        p99: Some(current.p99),
        baseline_p99: baseline.filter(|b| b.requests > 0).map(|b| b.p99),
        error_rate: Some(current.error_rate()),
        drift: baseline
            .filter(|b| b.output_kind == current.output_kind)
            .and_then(|b| psi(&b.distribution, &current.distribution)),
        requests: Some(current.requests as i64),
        ..Default::default()
    }
}

fn ms(s: f64) -> String {
    format!("{:.3} ms", s * 1e3)
}

/// Judges `current` (since promotion, `elapsed` ago) against `baseline` (the previous version
/// just before the swap; `None` when nothing served before).
///
/// Regressions are acted on as soon as `minRequests` requests were answered (a slow version
/// should not serve for the whole window); passing needs both the window and `minRequests`.
pub fn judge(
    limits: &Limits,
    baseline: Option<&Figures>,
    current: &Figures,
    elapsed: Duration,
) -> Judgement {
    let spec = &limits.spec;
    let min = spec.min_requests.max(0) as u64;
    if current.requests < min {
        return Judgement::Wait(format!(
            "{} of {} requests needed before a verdict",
            current.requests, min
        ));
    }
    let f = figures(baseline, current);
    let rate = current.error_rate();
    if current.requests > 0 && rate > spec.max_error_rate {
        return Judgement::Fail {
            reason: reasons::ERROR_RATE_REGRESSION,
            message: format!(
                "error rate {:.4} over {} requests exceeds maxErrorRate {}",
                rate, current.requests, spec.max_error_rate
            ),
        };
    }
    if let Some(budget) = &spec.max_p99
        && current.requests > 0
        && current.p99 > budget.get().as_secs_f64()
    {
        return Judgement::Fail {
            reason: reasons::LATENCY_REGRESSION,
            message: format!(
                "p99 {} exceeds the budget maxP99 {} over {} requests",
                ms(current.p99),
                ms(budget.get().as_secs_f64()),
                current.requests
            ),
        };
    }
    // The baseline counts only with enough evidence of its own.
    let base = baseline.filter(|b| b.requests >= min.max(1));
    let (quantile, cur_q, base_q) = if current.requests >= P99_MIN_REQUESTS {
        ("p99", current.p99, base.map(|b| b.p99))
    } else {
        ("p90", current.p90, base.map(|b| b.p90))
    };
    if let Some(b_q) = base_q
        && current.requests > 0
        && b_q > 0.0
    {
        let ratio = cur_q / b_q;
        if ratio > spec.max_p99_ratio && cur_q - b_q > limits.p99_noise_floor.as_secs_f64() {
            let stand_in = if quantile == "p90" {
                format!(
                    " (the p90 stands in for the p99 below {P99_MIN_REQUESTS} requests; p99 {})",
                    ms(current.p99)
                )
            } else {
                String::new()
            };
            return Judgement::Fail {
                reason: reasons::LATENCY_REGRESSION,
                message: format!(
                    "{quantile} {} is {:.2}× the previous version's {} (maxP99Ratio {}) over {} requests{stand_in}",
                    ms(cur_q),
                    ratio,
                    ms(b_q),
                    spec.max_p99_ratio,
                    current.requests,
                ),
            };
        }
    }
    if let (Some(drift), Some(score), Some(b)) = (&spec.drift, f.drift, base)
        && b.output_kind == current.output_kind
    {
        let noise = psi_sampling_noise(&b.distribution, &current.distribution).unwrap_or(0.0);
        if score - noise > drift.max_score {
            return Judgement::Fail {
                reason: reasons::DRIFT_DETECTED,
                message: format!(
                    "output distribution moved: PSI {score:.3} ({noise:.3} of it expected from \
                     sampling alone) exceeds maxScore {} over {} requests",
                    drift.max_score, current.requests
                ),
            };
        }
    }
    let window = spec.window.get();
    if elapsed < window {
        return Judgement::Wait(format!(
            "analysing: {:.0} s of {:.0} s, {} requests, p99 {}",
            elapsed.as_secs_f64(),
            window.as_secs_f64(),
            current.requests,
            ms(current.p99)
        ));
    }
    Judgement::Pass(format!(
        "kept after {:.0} s and {} requests: p99 {}{}, error rate {:.4}{}",
        window.as_secs_f64(),
        current.requests,
        ms(current.p99),
        f.baseline_p99
            .map(|b| format!(" (previous {})", ms(b)))
            .unwrap_or_default(),
        rate,
        f.drift.map(|d| format!(", PSI {d:.3}")).unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kinfer_api::inference_service::DriftSpec;

    fn limits() -> Limits {
        Limits {
            spec: AnalysisSpec {
                window: "10s".parse().unwrap(),
                min_requests: 100,
                max_p99_ratio: 1.5,
                max_p99: None,
                max_error_rate: 0.01,
                drift: Some(DriftSpec {
                    metric: Default::default(),
                    max_score: 0.2,
                    max_disagreement: 0.05,
                }),
                ..Default::default()
            },
            p99_noise_floor: Duration::from_micros(250),
        }
    }

    /// Figures whose p90 is 80% of the p99 (a version slower throughout).
    fn figs(requests: u64, errors: u64, p99_ms: f64, dist: &[u64]) -> Figures {
        Figures {
            requests,
            errors,
            p90: 0.8 * p99_ms / 1e3,
            p99: p99_ms / 1e3,
            distribution: dist.to_vec(),
            output_kind: "value".into(),
        }
    }

    const EVEN: [u64; 4] = [250, 250, 250, 250];

    #[test]
    fn psi_is_zero_for_the_same_shape_and_grows_with_a_shift() {
        assert_eq!(psi(&EVEN, &[25, 25, 25, 25]), Some(0.0));
        let small = psi(&EVEN, &[260, 240, 250, 250]).unwrap();
        let big = psi(&EVEN, &[10, 10, 10, 970]).unwrap();
        assert!(small < 0.01, "{small}");
        assert!(big > 1.0, "{big}");
        // A bin empty on one side is clamped, not infinite.
        assert!(psi(&[100, 0], &[50, 50]).unwrap().is_finite());
        assert_eq!(psi(&[0, 0], &[1, 1]), None);
        assert_eq!(psi(&[1, 1], &[1, 1, 1]), None);
    }

    #[test]
    fn waits_for_min_requests_even_when_slow() {
        let b = figs(1000, 0, 1.0, &EVEN);
        let c = figs(99, 0, 50.0, &EVEN);
        assert!(matches!(
            judge(&limits(), Some(&b), &c, Duration::from_secs(60)),
            Judgement::Wait(m) if m.contains("99 of 100")
        ));
    }

    #[test]
    fn latency_ratio_rolls_back_before_the_window_ends() {
        let b = figs(1000, 0, 1.0, &EVEN);
        let c = figs(200, 0, 3.0, &EVEN);
        match judge(&limits(), Some(&b), &c, Duration::from_secs(1)) {
            Judgement::Fail { reason, message } => {
                assert_eq!(reason, reasons::LATENCY_REGRESSION);
                assert!(message.contains("p90 2.400 ms is 3.00×"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_few_slow_requests_are_not_a_p99_regression_until_the_p99_has_samples() {
        // 200 requests: the "p99" is the second slowest. Two hiccups triple it, the p90 is
        // unchanged: not evidence of a slower version.
        let b = figs(5000, 0, 1.0, &EVEN);
        let mut c = figs(200, 0, 3.0, &EVEN);
        c.p90 = b.p90;
        assert!(matches!(
            judge(&limits(), Some(&b), &c, Duration::from_secs(11)),
            Judgement::Pass(_)
        ));
        // With 1,000 requests the p99 has ten samples behind it and is compared.
        c.requests = P99_MIN_REQUESTS;
        match judge(&limits(), Some(&b), &c, Duration::from_secs(11)) {
            Judgement::Fail { reason, message } => {
                assert_eq!(reason, reasons::LATENCY_REGRESSION);
                assert!(message.ends_with("over 1000 requests"), "{message}");
                assert!(message.starts_with("p99 3.000 ms is 3.00×"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn psi_sampling_noise_is_taken_off_before_the_limit() {
        // Same distribution, 100 requests each over 20 bins: the PSI of the two samples is
        // around (20 − 1)·(1/100 + 1/100) = 0.38, over the 0.2 limit, and is not drift.
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut draw = |n: usize| {
            let mut bins = vec![0u64; 20];
            for _ in 0..n {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                bins[(rng % 20) as usize] += 1;
            }
            bins
        };
        let (b, c) = (draw(100), draw(100));
        let raw = psi(&b, &c).unwrap();
        let noise = psi_sampling_noise(&b, &c).unwrap();
        assert!((noise - 0.38).abs() < 1e-9, "{noise}");
        assert!(raw > 0.2, "raw PSI of two small samples {raw}");
        let mut base = figs(100, 0, 1.0, &b);
        base.distribution = b.clone();
        let cur = Figures {
            distribution: c,
            ..base.clone()
        };
        assert!(matches!(
            judge(&limits(), Some(&base), &cur, Duration::from_secs(11)),
            Judgement::Pass(_)
        ));
        // A real shift stays well over the limit after the correction.
        let shifted = Figures {
            distribution: {
                let mut v = vec![0; 20];
                v[19] = 100;
                v
            },
            ..base.clone()
        };
        match judge(&limits(), Some(&base), &shifted, Duration::from_secs(1)) {
            Judgement::Fail { reason, message } => {
                assert_eq!(reason, reasons::DRIFT_DETECTED);
                assert!(
                    message.contains("expected from sampling alone"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(psi_sampling_noise(&[0, 0], &[1, 1]), None);
    }

    #[test]
    fn a_ratio_inside_the_noise_floor_is_not_a_regression() {
        let b = figs(1000, 0, 0.040, &EVEN);
        let c = figs(1000, 0, 0.100, &EVEN); // 2.5× but only 60 µs more
        assert!(matches!(
            judge(&limits(), Some(&b), &c, Duration::from_secs(11)),
            Judgement::Pass(_)
        ));
    }

    #[test]
    fn absolute_budget_applies_without_a_baseline() {
        let mut l = limits();
        l.spec.max_p99 = Some("5ms".parse().unwrap());
        let c = figs(200, 0, 6.0, &EVEN);
        assert!(matches!(
            judge(&l, None, &c, Duration::from_secs(1)),
            Judgement::Fail { reason, .. } if reason == reasons::LATENCY_REGRESSION
        ));
    }

    #[test]
    fn error_rate_over_the_limit_fails() {
        let b = figs(1000, 0, 1.0, &EVEN);
        let c = figs(200, 5, 1.0, &EVEN);
        assert!(matches!(
            judge(&limits(), Some(&b), &c, Duration::from_secs(1)),
            Judgement::Fail { reason, .. } if reason == reasons::ERROR_RATE_REGRESSION
        ));
    }

    #[test]
    fn drift_fails_and_a_small_baseline_does_not_count() {
        let b = figs(1000, 0, 1.0, &EVEN);
        let c = figs(400, 0, 1.0, &[0, 0, 0, 400]);
        assert!(matches!(
            judge(&limits(), Some(&b), &c, Duration::from_secs(1)),
            Judgement::Fail { reason, .. } if reason == reasons::DRIFT_DETECTED
        ));
        // A baseline with fewer than minRequests observations is no evidence.
        let thin = figs(10, 0, 0.1, &[10, 0, 0, 0]);
        assert!(matches!(
            judge(&limits(), Some(&thin), &c, Duration::from_secs(11)),
            Judgement::Pass(_)
        ));
    }

    #[test]
    fn passes_only_after_the_window() {
        let b = figs(1000, 0, 1.0, &EVEN);
        let c = figs(500, 1, 1.2, &[120, 130, 125, 125]);
        assert!(matches!(
            judge(&limits(), Some(&b), &c, Duration::from_secs(5)),
            Judgement::Wait(_)
        ));
        match judge(&limits(), Some(&b), &c, Duration::from_secs(10)) {
            Judgement::Pass(m) => assert!(m.contains("previous 1.000 ms"), "{m}"),
            other => panic!("{other:?}"),
        }
        let f = figures(Some(&b), &c);
        assert_eq!(f.requests, Some(500));
        assert!(f.drift.unwrap() < 0.01);
    }

    #[test]
    fn reads_runtime_stats() {
        use kinfer_contract::admin::{Percentiles, VersionEntry, VersionStats};
        let p = |count, p90, p99| Percentiles {
            count,
            p90,
            p99,
            ..Default::default()
        };
        let stats = StatsAnswer {
            model: "m".into(),
            serving: Some("v2".into()),
            previous: None,
            ready: true,
            swaps: 1,
            rollbacks: 0,
            shadow: None,
            baseline: None,
            versions: [(
                "v2".to_string(),
                VersionEntry {
                    queue_depth: 0,
                    batching: false,
                    digest: None,
                    stats: VersionStats {
                        requests: 10,
                        // 3 failures, of which 1 was the server's: only that one counts.
                        errors: 3,
                        server_errors: 1,
                        request: p(10, 0.003, 0.004),
                        request_window: p(5, 0.001, 0.002),
                        output_kind: "value".into(),
                        output_distribution: vec![1, 2, 3],
                        ..Default::default()
                    },
                },
            )]
            .into(),
            cpu_pinning: None,
        };
        let recent = Figures::from_stats(&stats, "v2", true).unwrap();
        assert_eq!((recent.p90, recent.p99), (0.001, 0.002));
        assert_eq!(recent.distribution, vec![1, 2, 3]);
        assert_eq!(Figures::from_stats(&stats, "v2", false).unwrap().p99, 0.004);
        assert!((recent.error_rate() - 0.1).abs() < 1e-12);
        assert!(Figures::from_stats(&stats, "v3", true).is_none());
    }
}
