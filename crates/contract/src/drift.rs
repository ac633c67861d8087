//! Drift between two output distributions (counts per bin, the runtime's 20 bins of a score or
//! class index): the Population Stability Index and what sampling alone gives. One definition for
//! the runtime's `kinfer_drift_score` and the watcher's verdict.

/// Proportions below this are clamped before the PSI's logarithm (an empty bin on one side).
pub const PSI_EPSILON: f64 = 1e-4;

/// Population Stability Index of `current` against `baseline` (counts per bin):
/// Σ (c − b) · ln(c / b) over the bins' proportions, with empty bins clamped to a small
/// proportion. 0 for identical shapes; < 0.1 is usually read as stable, > 0.25 as a shift.
/// `None` when either side has no observations or the bins differ.
pub fn psi(baseline: &[u64], current: &[u64]) -> Option<f64> {
    let (nb, nc) = (
        baseline.iter().sum::<u64>() as f64,
        current.iter().sum::<u64>() as f64,
    );
    if nb == 0.0 || nc == 0.0 || baseline.len() != current.len() {
        return None;
    }
    Some(
        baseline
            .iter()
            .zip(current)
            .map(|(&b, &c)| {
                let pb = (b as f64 / nb).max(PSI_EPSILON);
                let pc = (c as f64 / nc).max(PSI_EPSILON);
                (pc - pb) * (pc / pb).ln()
            })
            .sum(),
    )
}

/// What two samples of one distribution give as PSI on average: (k − 1)·(1/n₁ + 1/n₂), k the
/// bins that either side observed. `None` as for [`psi`].
pub fn psi_sampling_noise(baseline: &[u64], current: &[u64]) -> Option<f64> {
    let (nb, nc) = (baseline.iter().sum::<u64>(), current.iter().sum::<u64>());
    if nb == 0 || nc == 0 || baseline.len() != current.len() {
        return None;
    }
    let bins = baseline
        .iter()
        .zip(current)
        .filter(|(b, c)| **b + **c > 0)
        .count();
    Some(bins.saturating_sub(1) as f64 * (1.0 / nb as f64 + 1.0 / nc as f64))
}
