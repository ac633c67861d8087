//! Mirroring live traffic to a shadow version off the request path, and comparing the decisions
//! of the two versions on the same inputs.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Instant,
};

use crate::{
    models::{registry::Shadow, stats::argmax},
    tensor::{Tensor, to_f64, validate_inputs},
};

/// Per-row decisions of a first output: arg-max for a vector per row, score >= 0.5 for one value.
pub fn row_decisions(t: &Tensor) -> Vec<usize> {
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

/// Runs a copy of a live request on the shadow version in a separate task and records whether
/// its decisions agree with the serving version's. The live response does not wait for it.
pub fn mirror(
    sh: Arc<Shadow>,
    mut inputs: Vec<Tensor>,
    rows: usize,
    serving_first: Tensor,
    max_bytes: usize,
) {
    sh.mirrored.fetch_add(1, Relaxed);
    tokio::spawn(async move {
        let v = &sh.version;
        if validate_inputs(
            &v.info.name,
            &v.info.inputs,
            &inputs,
            v.max_batch(),
            max_bytes,
        )
        .is_err()
        {
            sh.errors.fetch_add(1, Relaxed);
            return;
        }
        inputs.sort_by_key(|t| v.info.inputs.iter().position(|s| s.name == t.name));
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
