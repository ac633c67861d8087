//! The paired verdict, as pure functions: the candidate and the previous version (the baseline)
//! answered randomly interleaved live requests of the same pod over the same window (the
//! runtime's `POST /admin/baseline`), and each comparison is a confidence interval:
//!
//! - **typical latency**: the Hodges–Lehmann estimate of the ratio candidate / baseline (the
//!   median of all pairwise ratios of one request from each side), with the distribution-free
//!   interval of the Mann–Whitney test, against `maxLatencyRatio`;
//! - **tail latency**: the ratio of the p99s, each with its order-statistic interval, against
//!   `maxP99Ratio`, once each side has [`P99_MIN_REQUESTS`] requests;
//! - **errors**: the difference of the server-error rates (Newcombe's interval from two Wilson
//!   intervals) against `maxErrorRate`;
//! - **outputs** (with `drift`): the rate at which the two versions' decisions differ on the
//!   same inputs (a Wilson interval on the pairs) against `drift.maxDisagreement`.
//!
//! A test fails only when its whole interval lies beyond its limit and passes only when it lies
//! within; a pass needs the window over and every test passed. Otherwise more requests are
//! awaited, up to `maxWindow`, and then the verdict is inconclusive. The confidence is split
//! (Bonferroni) over the tests and over the looks an analysis may take ([`look_every`] apart up
//! to `maxWindow`), so repeated looks do not inflate the chance of a false rollback.
//!
//! When live traffic has given no verdict by the end of `window` and `replay` is on, the
//! runtime runs recent requests it kept on both versions, and the same tests judge them as a
//! second, separate comparison ([`replay_view`]); either comparison's verdict stands, and the
//! confidence is split over both.
//!
//! Assumptions: requests are independent and the split is random per request, so the two sides
//! differ only by the version; latency is read from histograms with ~4.4% wide buckets (a
//! ratio is resolved to a few percent); a regression confined to the slowest 1% shows only in the
//! p99 test, which needs 1,000 requests per side.

use std::{f64::consts::SQRT_2, time::Duration};

use kinfer_api::inference_service::{AnalysisFigures, AnalysisSpec};
use kinfer_api::report::reasons;
use kinfer_contract::admin::{ArmSummary, BaselineSummary};

use crate::analysis::{Judgement, psi};

pub mod offline;

/// Longest time between two looks of a paired analysis.
pub const LOOK_EVERY: Duration = Duration::from_secs(5);

/// Requests each side needs before their p99s are compared (ten samples beyond it).
pub const P99_MIN_REQUESTS: u64 = 1000;

/// How often an analysis with these settings looks: every [`LOOK_EVERY`], or four times per
/// window when the window is shorter than 20 s.
pub fn look_every(spec: &AnalysisSpec) -> Duration {
    LOOK_EVERY
        .min(spec.window.get() / 4)
        .max(Duration::from_millis(100))
}

/// The longest analysis: `maxWindow`, at least `window`.
pub fn max_window(spec: &AnalysisSpec) -> Duration {
    spec.max_window.get().max(spec.window.get())
}

/// Looks an analysis may take up to its longest window.
pub fn looks(spec: &AnalysisSpec) -> u32 {
    let every = look_every(spec).as_secs_f64();
    ((max_window(spec).as_secs_f64() / every).ceil() as u32).max(1)
}

/// erfc(x), Numerical Recipes' Chebyshev fit (relative error below 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// P(Z > z) for a standard normal Z.
pub fn upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / SQRT_2)
}

/// The z with P(Z > z) = `p` (0 < p < 0.5), by bisection.
pub fn z_upper(p: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 40.0);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if upper_tail(mid) > p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Wilson score interval of a proportion `k` of `n` ((0, 1) with no observations).
pub fn wilson(k: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (k.min(n) as f64, n as f64);
    let p = k / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    ((center - half).max(0.0), (center + half).min(1.0))
}

/// Newcombe's hybrid score interval of `k1/n1 − k2/n2`.
pub fn rate_difference(k1: u64, n1: u64, k2: u64, n2: u64, z: f64) -> Interval {
    let rate = |k: u64, n: u64| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    let (p1, p2) = (rate(k1, n1), rate(k2, n2));
    let ((l1, u1), (l2, u2)) = (wilson(k1, n1, z), wilson(k2, n2, z));
    let d = p1 - p2;
    Interval {
        estimate: d,
        low: d - ((p1 - l1).powi(2) + (u2 - p2).powi(2)).sqrt(),
        high: d + ((u1 - p1).powi(2) + (p2 - l2).powi(2)).sqrt(),
    }
}

/// An estimate with its confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    /// The point estimate.
    pub estimate: f64,
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

/// A histogram bucket's representative latency (µs): its middle, at least half a microsecond.
fn middle(b: &[u64; 3]) -> f64 {
    ((b[0] + b[1]) as f64 / 2.0).max(0.5)
}

fn count(h: &[[u64; 3]]) -> u64 {
    h.iter().map(|b| b[2]).sum()
}

/// The value at 1-based `rank` of a histogram.
fn at_rank(h: &[[u64; 3]], rank: u64) -> f64 {
    let mut seen = 0;
    for b in h {
        seen += b[2];
        if seen >= rank {
            return middle(b);
        }
    }
    h.last().map_or(0.0, middle)
}

/// The `q` quantile of a latency histogram with its distribution-free (order-statistic)
/// interval: the ranks n·q ∓ z·√(n·q·(1−q)). A bound beyond the sample is 0 or infinite.
pub fn quantile(h: &[[u64; 3]], q: f64, z: f64) -> Option<Interval> {
    let n = count(h);
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    let m = nf * q;
    let s = z * (nf * q * (1.0 - q)).sqrt();
    let lo_rank = (m - s).floor();
    let hi_rank = (m + s).ceil() + 1.0;
    Some(Interval {
        estimate: at_rank(h, (m.ceil() as u64).max(1)),
        low: if lo_rank >= 1.0 {
            at_rank(h, lo_rank as u64)
        } else {
            0.0
        },
        high: if hi_rank <= nf {
            at_rank(h, hi_rank as u64)
        } else {
            f64::INFINITY
        },
    })
}

/// The ratio of two quantiles with the interval their two intervals give (each at `z`).
pub fn quantile_ratio(cand: &[[u64; 3]], base: &[[u64; 3]], q: f64, z: f64) -> Option<Interval> {
    let (c, b) = (quantile(cand, q, z)?, quantile(base, q, z)?);
    Some(Interval {
        estimate: c.estimate / b.estimate,
        low: if b.high.is_finite() {
            c.low / b.high
        } else {
            0.0
        },
        high: if b.low > 0.0 {
            c.high / b.low
        } else {
            f64::INFINITY
        },
    })
}

/// Hodges–Lehmann estimate of the latency ratio candidate / baseline — the median of the
/// ratios of every pair of one request from each side — with the interval of the Mann–Whitney
/// test: the pairwise ratios at ranks N/2 ∓ z·√(n₁·n₂·(n₁+n₂+1)/12), N = n₁·n₂ (ties make it
/// a little wider than needed, never narrower).
pub fn latency_ratio(cand: &[[u64; 3]], base: &[[u64; 3]], z: f64) -> Option<Interval> {
    let (n1, n2) = (count(cand) as f64, count(base) as f64);
    if n1 == 0.0 || n2 == 0.0 {
        return None;
    }
    let mut d: Vec<(f64, f64)> = Vec::with_capacity(cand.len() * base.len());
    for c in cand {
        for b in base {
            d.push((middle(c).ln() - middle(b).ln(), c[2] as f64 * b[2] as f64));
        }
    }
    d.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = n1 * n2;
    let at = |rank: f64| {
        let mut seen = 0.0;
        for &(v, w) in &d {
            seen += w;
            if seen >= rank {
                return v;
            }
        }
        d.last().map_or(0.0, |x| x.0)
    };
    let k = total / 2.0 - z * (n1 * n2 * (n1 + n2 + 1.0) / 12.0).sqrt();
    Some(Interval {
        estimate: at(total / 2.0).exp(),
        low: if k >= 1.0 { at(k).exp() } else { 0.0 },
        high: if k >= 1.0 {
            at(total - k + 1.0).exp()
        } else {
            f64::INFINITY
        },
    })
}

fn ms(us: f64) -> String {
    format!("{:.3} ms", us / 1e3)
}

fn bounds(i: &Interval) -> String {
    let hi = if i.high.is_finite() {
        format!("{:.2}", i.high)
    } else {
        "∞".to_owned()
    };
    format!("{:.2}–{hi}", i.low)
}

/// Everything one look computed.
#[derive(Debug, Clone)]
pub struct Look {
    /// z of every interval of this look.
    pub z: f64,
    /// Typical latency ratio.
    pub latency: Option<Interval>,
    /// p99 ratio (only with enough requests on both sides).
    pub p99: Option<Interval>,
    /// Server-error rate difference.
    pub errors: Interval,
    /// Disagreement rate of the pairs (with `drift`).
    pub disagreement: Option<Interval>,
}

/// The figures reported for a paired analysis.
pub fn figures(s: &BaselineSummary, look: Option<&Look>) -> AnalysisFigures {
    let (c, b) = (&s.candidate, &s.baseline);
    let p99 = |a: &ArmSummary| quantile(&a.latency, 0.99, 0.0).map(|i| i.estimate / 1e6);
    let rate =
        |a: &ArmSummary| (a.requests > 0).then(|| a.server_errors as f64 / a.requests as f64);
    AnalysisFigures {
        p99: p99(c),
        baseline_p99: p99(b),
        error_rate: rate(c),
        baseline_error_rate: rate(b),
        drift: (c.output_kind == b.output_kind)
            .then(|| psi(&b.output_distribution, &c.output_distribution))
            .flatten(),
        requests: Some(c.requests as i64),
        baseline_requests: Some(b.requests as i64),
        latency_ratio: look.and_then(|l| l.latency).map(|i| i.estimate),
        latency_ratio_low: look.and_then(|l| l.latency).map(|i| i.low),
        latency_ratio_high: look
            .and_then(|l| l.latency)
            .map(|i| i.high)
            .filter(|h| h.is_finite()),
        disagreement: (s.pairs.compared > 0)
            .then(|| (s.pairs.compared - s.pairs.agreed) as f64 / s.pairs.compared as f64),
        pairs: Some(s.pairs.compared as i64),
        replayed: None,
    }
}

/// Runs the tests of one look at `z`.
pub fn look(spec: &AnalysisSpec, s: &BaselineSummary, z: f64) -> Look {
    let (c, b) = (&s.candidate, &s.baseline);
    Look {
        z,
        latency: latency_ratio(&c.latency, &b.latency, z),
        p99: (c.requests >= P99_MIN_REQUESTS && b.requests >= P99_MIN_REQUESTS)
            .then(|| quantile_ratio(&c.latency, &b.latency, 0.99, z))
            .flatten(),
        errors: rate_difference(c.server_errors, c.requests, b.server_errors, b.requests, z),
        disagreement: spec.drift.as_ref().map(|_| {
            let (lo, hi) = wilson(
                s.pairs.compared - s.pairs.agreed.min(s.pairs.compared),
                s.pairs.compared,
                z,
            );
            Interval {
                estimate: if s.pairs.compared == 0 {
                    0.0
                } else {
                    1.0 - s.pairs.agreed as f64 / s.pairs.compared as f64
                },
                low: lo,
                high: hi,
            }
        }),
    }
}

/// The z of every interval of an analysis with these settings: the confidence split over the
/// tests and the looks (each interval two-sided), and over both judgements of a look (live and
/// replayed) when replay is on.
pub fn z_for(spec: &AnalysisSpec) -> f64 {
    let tests = 3 + u32::from(spec.drift.is_some());
    let judgements = 1 + u32::from(spec.replay.is_some());
    let alpha =
        (1.0 - spec.confidence).clamp(1e-9, 0.5) / f64::from(tests * judgements * looks(spec));
    z_upper(alpha / 2.0)
}

/// A split's replay as a summary of its own: the same tests judge it as they judge the live
/// arms (both arms ran the same requests, so every one is also a pair).
pub fn replay_view(s: &BaselineSummary) -> Option<BaselineSummary> {
    let r = s.replay.as_ref()?;
    Some(BaselineSummary {
        candidate: r.candidate.clone(),
        baseline: r.baseline.clone(),
        pairs: r.pairs,
        replay: None,
        ..s.clone()
    })
}

/// Judges one look of a paired analysis, `elapsed` after the split began.
pub fn judge(spec: &AnalysisSpec, s: &BaselineSummary, elapsed: Duration) -> (Judgement, Look) {
    let z = z_for(spec);
    let l = look(spec, s, z);
    let (c, b) = (&s.candidate, &s.baseline);
    let confidence = format!("{}%", spec.confidence * 100.0);
    let over = format!(
        "over {} and {} requests in the same window",
        c.requests, b.requests
    );
    let min = spec.min_requests.max(0) as u64;
    if c.requests < min || b.requests < min {
        let m = format!(
            "{} requests on {} and {} on the baseline {}, {min} needed on each before a verdict",
            c.requests, c.version, b.requests, b.version
        );
        return (ending(spec, elapsed, m), l);
    }
    let fail = |reason, message: String| Judgement::Fail { reason, message };
    if l.errors.low > spec.max_error_rate {
        let m = format!(
            "server-error rate {:.4} against the baseline's {:.4} {over}: the excess is at least {:.4} at {confidence} confidence, over maxErrorRate {}",
            c.server_errors as f64 / c.requests.max(1) as f64,
            b.server_errors as f64 / b.requests.max(1) as f64,
            l.errors.low,
            spec.max_error_rate
        );
        return (fail(reasons::ERROR_RATE_REGRESSION, m), l);
    }
    let p99 = quantile(&c.latency, 0.99, 0.0).map_or(0.0, |i| i.estimate);
    if let Some(budget) = &spec.max_p99
        && p99 > budget.get().as_secs_f64() * 1e6
    {
        let m = format!(
            "p99 {} exceeds the budget maxP99 {} over {} requests",
            ms(p99),
            ms(budget.get().as_secs_f64() * 1e6),
            c.requests
        );
        return (fail(reasons::LATENCY_REGRESSION, m), l);
    }
    let p50 = |a: &ArmSummary| quantile(&a.latency, 0.5, 0.0).map_or(0.0, |i| i.estimate);
    if let Some(r) = l.latency
        && r.low > spec.max_latency_ratio
    {
        let m = format!(
            "latency {:.2}× the baseline's ({} at {confidence} confidence; p50 {} against {}) {over}, over maxLatencyRatio {}",
            r.estimate,
            bounds(&r),
            ms(p50(c)),
            ms(p50(b)),
            spec.max_latency_ratio
        );
        return (fail(reasons::LATENCY_REGRESSION, m), l);
    }
    if let Some(r) = l.p99
        && r.low > spec.max_p99_ratio
    {
        let b99 = quantile(&b.latency, 0.99, 0.0).map_or(0.0, |i| i.estimate);
        let m = format!(
            "p99 {} is {:.2}× the baseline's {} ({} at {confidence} confidence) {over}, over maxP99Ratio {}",
            ms(p99),
            r.estimate,
            ms(b99),
            bounds(&r),
            spec.max_p99_ratio
        );
        return (fail(reasons::LATENCY_REGRESSION, m), l);
    }
    if let (Some(d), Some(drift)) = (&l.disagreement, &spec.drift)
        && d.low > drift.max_disagreement
    {
        let m = format!(
            "decisions differ from the baseline's on {:.1}% of {} requests run on both (at least {:.1}% at {confidence} confidence), over maxDisagreement {}",
            d.estimate * 100.0,
            s.pairs.compared,
            d.low * 100.0,
            drift.max_disagreement
        );
        return (fail(reasons::DRIFT_DETECTED, m), l);
    }
    // What is not shown yet for a pass.
    let mut open = Vec::new();
    match l.latency {
        Some(r) if r.high <= spec.max_latency_ratio => {}
        Some(r) => open.push(format!(
            "latency ratio {:.2} ({}) not yet within maxLatencyRatio {}",
            r.estimate,
            bounds(&r),
            spec.max_latency_ratio
        )),
        None => open.push("no latency on one side".to_owned()),
    }
    if l.errors.high > spec.max_error_rate {
        open.push(format!(
            "error-rate excess {:.4} (up to {:.4}) not yet within maxErrorRate {}",
            l.errors.estimate, l.errors.high, spec.max_error_rate
        ));
    }
    if let (Some(d), Some(drift)) = (&l.disagreement, &spec.drift)
        && d.high > drift.max_disagreement
    {
        open.push(format!(
            "disagreement {:.3} over {} pairs (up to {:.3}) not yet within maxDisagreement {}",
            d.estimate, s.pairs.compared, d.high, drift.max_disagreement
        ));
    }
    let window = spec.window.get();
    if open.is_empty() && elapsed >= window {
        let r = l.latency.unwrap_or(Interval {
            estimate: 1.0,
            low: 1.0,
            high: 1.0,
        });
        let m = format!(
            "kept after {:.0} s: latency {:.2}× the baseline's ({} at {confidence} confidence), p99 {} against {}, error rate {:.4} against {:.4} {over}",
            elapsed.as_secs_f64(),
            r.estimate,
            bounds(&r),
            ms(p99),
            ms(quantile(&b.latency, 0.99, 0.0).map_or(0.0, |i| i.estimate)),
            c.server_errors as f64 / c.requests.max(1) as f64,
            b.server_errors as f64 / b.requests.max(1) as f64,
        );
        return (Judgement::Pass(m), l);
    }
    let m = if open.is_empty() {
        format!(
            "analysing: {:.0} s of {:.0} s {over}, nothing regressed so far",
            elapsed.as_secs_f64(),
            window.as_secs_f64()
        )
    } else {
        open.join("; ")
    };
    (ending(spec, elapsed, m), l)
}

/// Waiting, or inconclusive once the longest window is over.
fn ending(spec: &AnalysisSpec, elapsed: Duration, m: String) -> Judgement {
    let max = max_window(spec);
    if elapsed >= max {
        Judgement::Inconclusive(format!(
            "no verdict after maxWindow {:.0} s: {m}",
            max.as_secs_f64()
        ))
    } else {
        Judgement::Wait(m)
    }
}

#[cfg(test)]
mod tests;
