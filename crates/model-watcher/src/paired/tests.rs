//! The paired verdict's statistics and decisions on synthetic latencies.

use super::*;
use kinfer_api::inference_service::DriftSpec;
use kinfer_contract::admin::PairSummary;

/// A histogram of latencies (µs) in the runtime's buckets: 16 per octave.
fn hist(samples: impl IntoIterator<Item = f64>) -> Vec<[u64; 3]> {
    let mut m = std::collections::BTreeMap::<(u64, u64), u64>::new();
    for us in samples {
        let us = us.max(1.0) as u64;
        let octave = 63 - us.leading_zeros();
        let (lo, hi) = if us < 16 {
            (us, us)
        } else {
            let width = 1u64 << (octave - 4);
            let lo = us / width * width;
            (lo, lo + width - 1)
        };
        *m.entry((lo, hi)).or_default() += 1;
    }
    m.into_iter().map(|((lo, hi), c)| [lo, hi, c]).collect()
}

/// `n` log-normal latencies around `median_us` (spread σ = 0.3), deterministic.
fn latencies(n: usize, median_us: f64, seed: u64) -> Vec<f64> {
    let mut s = seed;
    let mut u = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            // Box–Muller.
            let z = (-2.0 * u().ln()).sqrt() * (2.0 * std::f64::consts::PI * u()).cos();
            median_us * (0.3 * z).exp()
        })
        .collect()
}

fn arm(version: &str, lat: &[f64], errors: u64) -> ArmSummary {
    ArmSummary {
        version: version.into(),
        requests: lat.len() as u64,
        server_errors: errors,
        latency: hist(lat.iter().copied()),
        output_kind: "value".into(),
        output_distribution: vec![10; 20],
    }
}

fn summary(c: ArmSummary, b: ArmSummary, compared: u64, agreed: u64) -> BaselineSummary {
    BaselineSummary {
        fraction: 0.5,
        pair_rate: 0.1,
        elapsed_ms: 30_000,
        candidate: c,
        baseline: b,
        pairs: PairSummary {
            compared,
            agreed,
            ..Default::default()
        },
        replay: None,
    }
}

fn spec() -> AnalysisSpec {
    AnalysisSpec::default()
}

const AFTER: Duration = Duration::from_secs(31);

#[test]
fn normal_quantiles_are_right() {
    assert!((upper_tail(1.959_964) - 0.025).abs() < 1e-6);
    assert!((z_upper(0.025) - 1.959_964).abs() < 1e-4);
    assert!((z_upper(0.005) - 2.575_829).abs() < 1e-4);
    assert!((upper_tail(-1.0) - 0.841_345).abs() < 1e-6);
}

#[test]
fn wilson_and_newcombe_bound_rates_even_at_zero() {
    let (lo, hi) = wilson(0, 1000, 1.96);
    assert_eq!(lo, 0.0);
    assert!((hi - 0.003_83).abs() < 1e-4, "{hi}");
    let (lo, hi) = wilson(20, 1000, 1.96);
    assert!(
        lo < 0.02 && 0.02 < hi && lo > 0.012 && hi < 0.031,
        "{lo} {hi}"
    );
    let d = rate_difference(20, 1000, 0, 1000, 1.96);
    assert!((d.estimate - 0.02).abs() < 1e-12);
    assert!(d.low > 0.0 && d.low < 0.02 && d.high > 0.02, "{d:?}");
    assert_eq!(wilson(0, 0, 1.96), (0.0, 1.0));
}

#[test]
fn the_latency_ratio_finds_a_shift_and_its_interval_covers_it() {
    let base = hist(latencies(1500, 1000.0, 1));
    let same = hist(latencies(1500, 1000.0, 2));
    let slow = hist(latencies(1500, 1200.0, 3));
    let z = 3.4;
    let r = latency_ratio(&same, &base, z).unwrap();
    assert!(r.low < 1.0 && 1.0 < r.high, "{r:?}");
    assert!(
        r.high < 1.1,
        "an equivalent version is shown within 1.1: {r:?}"
    );
    let r = latency_ratio(&slow, &base, z).unwrap();
    assert!((r.estimate - 1.2).abs() < 0.05, "{r:?}");
    assert!(r.low > 1.1, "a 1.2× version is shown beyond 1.1: {r:?}");
    // Few requests: the interval is too wide to say either.
    let few = latency_ratio(
        &hist(latencies(30, 1000.0, 4)),
        &hist(latencies(30, 1000.0, 5)),
        z,
    )
    .unwrap();
    assert!(few.low < 1.0 / 1.1 && few.high > 1.1, "{few:?}");
}

#[test]
fn quantile_intervals_widen_in_the_tail_and_are_unbounded_without_samples() {
    let h = hist(latencies(1000, 1000.0, 6));
    let p50 = quantile(&h, 0.5, 3.0).unwrap();
    let p99 = quantile(&h, 0.99, 3.0).unwrap();
    assert!(p50.low < p50.estimate && p50.estimate < p50.high);
    assert!(p99.high / p99.low > p50.high / p50.low);
    let thin = quantile(&hist(latencies(50, 1000.0, 7)), 0.99, 3.0).unwrap();
    assert_eq!(thin.high, f64::INFINITY);
}

#[test]
fn an_equivalent_version_passes_after_the_window_and_not_before() {
    let s = summary(
        arm("v2", &latencies(1500, 1000.0, 8), 0),
        arm("v1", &latencies(1500, 1000.0, 9), 0),
        0,
        0,
    );
    assert!(matches!(
        judge(&spec(), &s, Duration::from_secs(10)).0,
        Judgement::Wait(_)
    ));
    match judge(&spec(), &s, AFTER).0 {
        Judgement::Pass(m) => {
            assert!(m.contains("kept after 31 s"), "{m}");
            assert!(
                m.contains("over 1500 and 1500 requests in the same window"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_slower_version_fails_on_the_typical_latency() {
    let s = summary(
        arm("v2", &latencies(1500, 1500.0, 10), 0),
        arm("v1", &latencies(1500, 1000.0, 11), 0),
        0,
        0,
    );
    match judge(&spec(), &s, Duration::from_secs(5)).0 {
        Judgement::Fail { reason, message } => {
            assert_eq!(reason, reasons::LATENCY_REGRESSION);
            assert!(message.starts_with("latency 1.5"), "{message}");
            assert!(message.contains("at 95% confidence"), "{message}");
            assert!(message.contains("over maxLatencyRatio 1.15"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_tail_only_regression_fails_on_the_p99_with_enough_requests() {
    let base = latencies(3000, 1000.0, 12);
    let mut cand = latencies(3000, 1000.0, 13);
    for v in cand.iter_mut().step_by(25) {
        *v *= 6.0; // 4% of requests six times slower: the median barely moves
    }
    let s = summary(arm("v2", &cand, 0), arm("v1", &base, 0), 0, 0);
    match judge(&spec(), &s, AFTER).0 {
        Judgement::Fail { reason, message } => {
            assert_eq!(reason, reasons::LATENCY_REGRESSION);
            assert!(message.starts_with("p99 "), "{message}");
            assert!(message.contains("over maxP99Ratio 1.5"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn errors_fail_on_the_excess_over_the_baseline_and_not_on_its_own_rate() {
    let lat = |seed| latencies(3000, 1000.0, seed);
    let bad = summary(arm("v2", &lat(14), 90), arm("v1", &lat(15), 0), 0, 0);
    match judge(&spec(), &bad, AFTER).0 {
        Judgement::Fail { reason, message } => {
            assert_eq!(reason, reasons::ERROR_RATE_REGRESSION);
            assert!(
                message.contains("0.0300 against the baseline's 0.0000"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Both sides fail 3% (a bad dependency, not the version): no regression.
    let both = summary(arm("v2", &lat(16), 90), arm("v1", &lat(17), 90), 0, 0);
    assert!(
        !matches!(judge(&spec(), &both, AFTER).0, Judgement::Fail { .. }),
        "the same error rate on both sides is not the version's fault"
    );
}

#[test]
fn decisions_that_differ_on_the_same_inputs_are_drift() {
    let mut sp = spec();
    sp.drift = Some(DriftSpec {
        metric: Default::default(),
        max_score: 0.2,
        max_disagreement: 0.05,
    });
    let lat = |seed| latencies(1500, 1000.0, seed);
    let drifted = summary(arm("v2", &lat(18), 0), arm("v1", &lat(19), 0), 400, 300);
    match judge(&sp, &drifted, AFTER).0 {
        Judgement::Fail { reason, message } => {
            assert_eq!(reason, reasons::DRIFT_DETECTED);
            assert!(
                message.contains("25.0% of 400 requests run on both"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    let fine = summary(arm("v2", &lat(20), 0), arm("v1", &lat(21), 0), 400, 400);
    assert!(matches!(judge(&sp, &fine, AFTER).0, Judgement::Pass(_)));
    // Too few pairs to show the decisions agree: no pass yet.
    let few = summary(arm("v2", &lat(22), 0), arm("v1", &lat(23), 0), 20, 20);
    match judge(&sp, &few, AFTER).0 {
        Judgement::Wait(m) => assert!(m.contains("not yet within maxDisagreement"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn thin_traffic_is_inconclusive_at_max_window_never_a_pass() {
    let s = summary(
        arm("v2", &latencies(150, 1000.0, 24), 0),
        arm("v1", &latencies(150, 1000.0, 25), 0),
        0,
        0,
    );
    match judge(&spec(), &s, AFTER).0 {
        Judgement::Wait(m) => assert!(m.contains("not yet within"), "{m}"),
        other => panic!("{other:?}"),
    }
    match judge(&spec(), &s, Duration::from_secs(120)).0 {
        Judgement::Inconclusive(m) => {
            assert!(m.starts_with("no verdict after maxWindow 120 s"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    let none = summary(arm("v2", &[], 0), arm("v1", &[], 0), 0, 0);
    match judge(&spec(), &none, Duration::from_secs(120)).0 {
        Judgement::Inconclusive(m) => assert!(m.contains("100 needed on each"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_confidence_is_split_over_tests_and_looks() {
    let sp = spec();
    assert_eq!(look_every(&sp), LOOK_EVERY);
    assert_eq!(looks(&sp), 24);
    // 3 tests × 24 looks at 95%: each interval at 1 − 0.05/72, two-sided.
    assert!((upper_tail(z_for(&sp)) - 0.05 / 72.0 / 2.0).abs() < 1e-7);
    let mut short = spec();
    short.window = "2s".parse().unwrap();
    short.max_window = "1s".parse().unwrap();
    assert_eq!(look_every(&short), Duration::from_millis(500));
    assert_eq!(max_window(&short), Duration::from_secs(2));
    assert_eq!(looks(&short), 4);
}

#[test]
fn a_replay_is_judged_apart_and_splits_the_confidence_again() {
    let mut sp = spec();
    sp.replay = Some(Default::default());
    // Live and replayed judgements of each look: twice the intervals.
    assert!((upper_tail(z_for(&sp)) - 0.05 / 144.0 / 2.0).abs() < 1e-7);
    let mut s = summary(
        arm("v2", &latencies(20, 1000.0, 24), 0),
        arm("v1", &latencies(20, 1000.0, 25), 0),
        0,
        0,
    );
    assert!(replay_view(&s).is_none(), "no replay yet");
    s.replay = Some(kinfer_contract::admin::ReplaySummary {
        queued: 1500,
        running: false,
        candidate: arm("v2", &latencies(1500, 1500.0, 24), 0),
        baseline: arm("v1", &latencies(1500, 1000.0, 25), 0),
        pairs: PairSummary {
            compared: 1500,
            agreed: 1500,
            ..Default::default()
        },
    });
    let view = replay_view(&s).unwrap();
    assert_eq!((view.candidate.requests, view.pairs.compared), (1500, 1500));
    assert!(view.replay.is_none());
    // The live arms are too thin to say anything; the replay shows 1.5× slower.
    assert!(matches!(judge(&sp, &s, AFTER).0, Judgement::Wait(_)));
    match judge(&sp, &view, AFTER).0 {
        Judgement::Fail { reason, message } => {
            assert_eq!(reason, reasons::LATENCY_REGRESSION);
            assert!(message.contains("over 1500 and 1500 requests"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}
