//! The inference path both protocols share: resolve the version, order and validate the inputs,
//! queue, wait, record statistics, pick the requested outputs.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use super::{
    error::InferError,
    tensor::{Tensor, validate_inputs},
};
use crate::{
    models::{
        registry::{Registry, Shadow},
        stats::{argmax, error_index},
    },
    policy::{DECISION_OUTPUT, DecisionLog, DecisionRecord, Policy, now_ms},
};

/// Which front end a request came through (the `protocol` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/REST.
    Http = 0,
    /// gRPC.
    Grpc = 1,
}

impl Protocol {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

/// Status codes counted in `kinfer_requests_total{code}`.
pub const CODES: [&str; 6] = ["200", "400", "404", "500", "503", "504"];

/// Server-wide state shared by the front ends.
pub struct Server {
    /// The model's versions.
    pub registry: Arc<Registry>,
    /// Default deadline of a request (queue + run).
    pub request_timeout: Option<Duration>,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// Requests by protocol and code (index of [`CODES`]).
    pub requests: [[AtomicU64; 6]; 2],
    /// Decision policy (`--policy`).
    pub policy: Option<Policy>,
    /// Sampled decision log (`--decision-log`).
    pub decision_log: Option<DecisionLog>,
}

/// A successful inference.
#[derive(Debug)]
pub struct InferOutput {
    /// The version that computed the outputs.
    pub version: String,
    /// Requested outputs, in the model's order.
    pub outputs: Vec<Tensor>,
}

impl Server {
    /// New server state.
    pub fn new(
        registry: Arc<Registry>,
        request_timeout: Option<Duration>,
        max_body: usize,
    ) -> Self {
        Self {
            registry,
            request_timeout,
            max_body,
            requests: Default::default(),
            policy: None,
            decision_log: None,
        }
    }

    /// Counts a finished request.
    pub fn count(&self, proto: Protocol, result: Result<(), &InferError>) {
        let code = match result {
            Ok(()) => 0,
            Err(e) => CODES
                .iter()
                .position(|c| *c == e.metric_label())
                .unwrap_or(3),
        };
        self.requests[proto as usize][code].fetch_add(1, Relaxed);
    }

    /// Runs one request. `requested` empty means every output.
    #[allow(clippy::too_many_arguments)] // one call site per protocol; a struct would only rename them
    pub async fn infer(
        &self,
        proto: Protocol,
        id: Option<&str>,
        model: &str,
        version: Option<&str>,
        mut inputs: Vec<Tensor>,
        requested: &[String],
        client_timeout: Option<Duration>,
    ) -> Result<InferOutput, InferError> {
        let started = Instant::now();
        let v = self.registry.resolve(model, version)?;
        // Disabled callsites cost one branch; enable with RUST_LOG=kinfer_runtime=debug.
        let span = tracing::debug_span!("infer", protocol = proto.label(), model, version = %v.info.version);
        let _entered = span.enter();
        let result = async {
            for r in requested {
                let is_decision = self.policy.is_some() && r == DECISION_OUTPUT;
                if !is_decision && !v.info.outputs.iter().any(|o| &o.name == r) {
                    let known: Vec<&str> = v.info.outputs.iter().map(|o| o.name.as_str()).collect();
                    return Err(InferError::invalid(format!(
                        "model '{model}' has no output '{r}'; its outputs are {known:?}"
                    )));
                }
            }
            let rows = validate_inputs(model, &v.info.inputs, &inputs, v.max_batch())?;
            if let Some(p) = &self.policy {
                p.check_inputs(&inputs)?;
            }
            // Put inputs in the model's order so batches can be stacked position by position.
            inputs.sort_by_key(|t| v.info.inputs.iter().position(|s| s.name == t.name));
            let timeout = match (self.request_timeout, client_timeout) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let deadline = timeout.map(|t| started + t);
            // Shadow only live traffic to the serving version; inputs are copied only when sampled.
            let shadow = if version.is_none_or(str::is_empty) {
                self.registry.shadow_sample()
            } else {
                None
            };
            let mirror = shadow.as_ref().map(|_| inputs.clone());
            let mut out = v.infer(inputs, rows, deadline).await?;
            if let (Some(sh), Some(inputs), Some(first)) = (shadow, mirror, out.outputs.first()) {
                mirror_to_shadow(sh, inputs, rows, first.clone());
            }
            let mut labels = Vec::new();
            if let Some(p) = &self.policy {
                let scores = p.scores(&out.outputs)?;
                labels = scores.iter().map(|&s| p.classify(s)).collect();
                for &l in &labels {
                    v.stats.decisions[l].fetch_add(1, Relaxed);
                }
                out.outputs.push(p.decision_tensor(&labels));
            }
            if let Some(log) = &self.decision_log
                && log.sample()
            {
                let names: Vec<&str> = self.policy.iter().flat_map(|p| p.labels()).collect();
                log.record(DecisionRecord {
                    ts_ms: now_ms(),
                    request_id: id.map(str::to_owned),
                    model: model.to_owned(),
                    version: v.info.version.clone(),
                    latency_us: started.elapsed().as_micros() as u64,
                    decisions: labels.iter().map(|&l| names[l].to_owned()).collect(),
                    scores: out.outputs.first().map(first_per_row).unwrap_or_default(),
                });
            }
            v.stats.queue.record(out.queue);
            if let Some(first) = out.outputs.first() {
                v.stats.record_output(first);
            }
            let outputs = if requested.is_empty() {
                out.outputs
            } else {
                out.outputs
                    .into_iter()
                    .filter(|o| requested.contains(&o.name))
                    .collect()
            };
            Ok(outputs)
        }
        .await;
        v.stats.request.record(started.elapsed());
        v.stats.protocol[proto as usize].record(started.elapsed());
        match result {
            Ok(outputs) => {
                v.stats.ok.fetch_add(1, Relaxed);
                Ok(InferOutput {
                    version: v.info.version.clone(),
                    outputs,
                })
            }
            Err(e) => {
                v.stats.errors[error_index(e.metric_label())].fetch_add(1, Relaxed);
                Err(e)
            }
        }
    }
}

/// First value of each row of a floating-point output (the decision log's score summary).
fn first_per_row(t: &Tensor) -> Vec<f64> {
    let values = super::tensor::to_f64(t);
    let rows = t.shape.first().copied().unwrap_or(1).max(1) as usize;
    let per = (values.len() / rows).max(1);
    values.chunks(per).map(|r| r[0]).collect()
}

/// Per-row decisions of a first output: arg-max for a vector per row, score >= 0.5 for one value.
fn row_decisions(t: &Tensor) -> Vec<usize> {
    let values = super::tensor::to_f64(t);
    let rows = t.shape.first().copied().unwrap_or(1).max(1) as usize;
    let per = (values.len() / rows).max(1);
    values
        .chunks(per)
        .map(|r| {
            if per == 1 {
                usize::from(r[0] >= 0.5)
            } else {
                argmax(r)
            }
        })
        .collect()
}

/// Runs a copy of a live request on the shadow version in a separate task and records whether
/// its decisions agree with the serving version's. The live response does not wait for it.
fn mirror_to_shadow(sh: Arc<Shadow>, mut inputs: Vec<Tensor>, rows: usize, serving_first: Tensor) {
    sh.mirrored.fetch_add(1, Relaxed);
    tokio::spawn(async move {
        let v = &sh.version;
        if validate_inputs(&v.info.name, &v.info.inputs, &inputs, v.max_batch()).is_err() {
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
