//! Running a copy of a live request on a second version off the request path, and comparing the
//! two answers on the same inputs: a shadow (a staged version) before promotion, and the pairs of
//! an analysis's split (the candidate and its baseline) after.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Instant,
};

use kinfer_contract::telemetry::TARGET;
use tracing::{Instrument, Span};

use crate::{
    models::{baseline::Baseline, registry::Shadow, stats::argmax, version::LoadedVersion},
    tensor::{Tensor, TensorView, to_f64, validate_inputs},
};

/// The exported span of a copy of a request run on a second version: a child of the request's
/// span, ending when that run does (after the request's own answer).
fn child(parent: Option<&Span>, name: &'static str, v: &LoadedVersion) -> Option<Span> {
    let parent = parent?;
    Some(tracing::info_span!(target: TARGET, parent: parent, "copy",
        otel.name = name,
        kinfer.version = %v.info.version,
        kinfer.digest = v.digest.as_deref().unwrap_or(""),
    ))
}

/// Spawns a copy's run, in its span when there is one.
fn spawn(span: Option<Span>, run: impl Future<Output = ()> + Send + 'static) {
    match span {
        Some(s) => drop(tokio::spawn(run.instrument(s))),
        None => drop(tokio::spawn(run)),
    }
}

/// Per-row decisions of a first output: arg-max for a vector per row, score >= 0.5 for one value.
pub fn row_decisions<'a>(t: impl Into<TensorView<'a>>) -> Vec<usize> {
    let t = t.into();
    let values = to_f64(t);
    let rows = t.rows().unwrap_or(1).max(1);
    let per = (values.len() / rows).max(1);
    values
        .chunks(per)
        .map(|r| {
            if per == 1 {
                r.first().map_or(0, |&v| usize::from(v >= 0.5))
            } else {
                argmax(r)
            }
        })
        .collect()
}

/// Checks a copy of a live request against the second version's inputs and puts it in that
/// model's order; false when that version cannot take it.
pub(super) fn fit(v: &LoadedVersion, inputs: &mut [Tensor], max_bytes: usize) -> bool {
    if validate_inputs(
        &v.info.name,
        &v.info.inputs,
        inputs,
        v.max_batch(),
        max_bytes,
    )
    .is_err()
    {
        return false;
    }
    inputs.sort_by_key(|t| v.info.inputs.iter().position(|s| s.name == t.name));
    true
}

/// Runs a copy of a live request on the shadow version in a separate task and records whether
/// its decisions agree with the serving version's. The live response does not wait for it.
pub fn mirror(
    sh: Arc<Shadow>,
    mut inputs: Vec<Tensor>,
    rows: usize,
    serving_first: Tensor,
    max_bytes: usize,
    traced: Option<&Span>,
) {
    sh.mirrored.fetch_add(1, Relaxed);
    let span = child(traced, "shadow", &sh.version);
    spawn(span, async move {
        let v = &sh.version;
        if !fit(v, &mut inputs, max_bytes) {
            sh.errors.fetch_add(1, Relaxed);
            return;
        }
        let t = Instant::now();
        match v.infer(inputs, rows, None).await {
            Ok(out) => {
                sh.latency.record(t.elapsed());
                if let Some(first) = out.outputs.first() {
                    let (a, b) = (row_decisions(first), row_decisions(&serving_first));
                    sh.compared.fetch_add(1, Relaxed);
                    if a == b {
                        sh.agreed.fetch_add(1, Relaxed);
                    }
                }
            }
            Err(_) => {
                sh.errors.fetch_add(1, Relaxed);
            }
        }
    });
}

/// Largest absolute difference between two first outputs, element by element (infinite when
/// their sizes differ; NaN when either holds a NaN).
pub fn max_deviation(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (to_f64(a), to_f64(b));
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, |m, d| {
            if d.is_nan() || m.is_nan() {
                f64::NAN
            } else {
                m.max(d)
            }
        })
}

/// Runs a copy of a live request of a split on `other` (the version that did not answer it) in
/// a separate task and records how the two answers compare. The live response does not wait.
pub fn pair(
    split: Arc<Baseline>,
    other: Arc<LoadedVersion>,
    mut inputs: Vec<Tensor>,
    rows: usize,
    answered_first: Tensor,
    max_bytes: usize,
    traced: Option<&Span>,
) {
    let span = child(traced, "paired", &other);
    spawn(span, async move {
        let v = &other;
        if !fit(v, &mut inputs, max_bytes) {
            split.pairs.errors.fetch_add(1, Relaxed);
            return;
        }
        match v.infer(inputs, rows, None).await {
            Ok(out) => match out.outputs.first() {
                Some(first) => split.pairs.record(
                    row_decisions(first) == row_decisions(&answered_first),
                    max_deviation(first, &answered_first),
                ),
                None => {
                    split.pairs.errors.fetch_add(1, Relaxed);
                }
            },
            Err(_) => {
                split.pairs.errors.fetch_add(1, Relaxed);
            }
        }
    });
}
