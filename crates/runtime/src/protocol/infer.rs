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
use crate::models::{registry::Registry, stats::error_index};

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
    pub async fn infer(
        &self,
        proto: Protocol,
        model: &str,
        version: Option<&str>,
        mut inputs: Vec<Tensor>,
        requested: &[String],
        client_timeout: Option<Duration>,
    ) -> Result<InferOutput, InferError> {
        let started = Instant::now();
        let v = self.registry.resolve(model, version)?;
        let result = async {
            for r in requested {
                if !v.info.outputs.iter().any(|o| &o.name == r) {
                    let known: Vec<&str> = v.info.outputs.iter().map(|o| o.name.as_str()).collect();
                    return Err(InferError::invalid(format!(
                        "model '{model}' has no output '{r}'; its outputs are {known:?}"
                    )));
                }
            }
            let rows = validate_inputs(model, &v.info.inputs, &inputs, v.max_batch())?;
            // Put inputs in the model's order so batches can be stacked position by position.
            inputs.sort_by_key(|t| v.info.inputs.iter().position(|s| s.name == t.name));
            let timeout = match (self.request_timeout, client_timeout) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let deadline = timeout.map(|t| started + t);
            let out = v.infer(inputs, rows, deadline).await?;
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
