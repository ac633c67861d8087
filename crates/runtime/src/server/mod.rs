//! The server core both protocols call: resolve the version a request names, check its tensors
//! against the model and the limits, queue it with its deadline, apply the decision policy,
//! record statistics and the decision log, pick the requested outputs. Protocols decode and
//! encode; everything a request means is decided here.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod budget;
pub mod replay;
pub mod shadow;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use budget::Budget;
use kinfer_contract::telemetry::TARGET;
use smallvec::SmallVec;
use tracing::{Instrument, field::Empty};

use crate::{
    decision_log::{DecisionLog, DecisionRecord},
    error::InferError,
    models::{
        baseline::{Arm, Baseline},
        registry::Registry,
        version::LoadedVersion,
    },
    policy::{DECISION_OUTPUT, Policy, now_ms},
    tensor::{Tensor, TensorView, first_per_row, to_f64, validate_inputs},
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

/// A request of a split that also runs on the other arm's version.
struct Pairing {
    split: Arc<Baseline>,
    other: Arc<LoadedVersion>,
}

/// Status codes counted in `kinfer_requests_total{code}`.
pub const CODES: [&str; 6] = ["200", "400", "404", "500", "503", "504"];

/// Index in [`CODES`] of a request's outcome.
pub fn code_index(result: Result<(), &InferError>) -> usize {
    match result {
        Ok(()) => 0,
        Err(e) => CODES
            .iter()
            .position(|c| *c == e.metric_label())
            .unwrap_or(3),
    }
}

fn bump(counters: &[[AtomicU64; 6]; 2], proto: Protocol, code: usize) {
    if let Some(c) = counters.get(proto as usize).and_then(|row| row.get(code)) {
        c.fetch_add(1, Relaxed);
    }
}

/// The longest deadline honoured; a longer one (or an overflowing one) is clamped to it.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The size limits of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request message (HTTP body, gRPC message) and largest total of decoded tensor
    /// bytes in one request (`--max-message-bytes`).
    pub max_message_bytes: usize,
    /// Longest wait for the next piece of an HTTP request body (`--body-idle-timeout`).
    pub body_idle_timeout: Duration,
}

/// Server-wide state shared by the front ends.
pub struct Server {
    /// The model's versions.
    pub registry: Arc<Registry>,
    /// Default deadline of a request (queue + run).
    pub request_timeout: Option<Duration>,
    /// Size limits.
    pub limits: Limits,
    /// Request bytes in flight (`--max-inflight-bytes`).
    pub budget: Budget,
    /// Requests by protocol and code (index of [`CODES`]).
    pub requests: [[AtomicU64; 6]; 2],
    /// The part of `requests` that reached a version ([`Server::infer`]); the rest failed
    /// before one was chosen (malformed, unknown model or version, too large).
    pub reached: [[AtomicU64; 6]; 2],
    /// Decision policy (`--policy`).
    pub policy: Option<Policy>,
    /// Sampled decision log (`--decision-log`).
    pub decision_log: Option<DecisionLog>,
    /// Spans are exported (`--otlp-endpoint`): each request gets a span of its own, continuing
    /// the client's `traceparent`. Off, a request makes no span that is not disabled at its
    /// callsite.
    pub traced: bool,
}

/// What a request's answer is made of, handed to the protocol's encoder while the outputs are
/// still where the run left them (ONNX Runtime's buffers, for a run on the request's thread).
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// The version that computed the outputs.
    pub version: &'a str,
    /// The requested outputs (all when none were named) in the model's order, then the policy's
    /// `decision` when one is set.
    pub outputs: &'a [TensorView<'a>],
}

/// One decoded request.
#[derive(Debug)]
pub struct Request<'a> {
    /// Front end.
    pub protocol: Protocol,
    /// The request's `id`.
    pub id: Option<&'a str>,
    /// Whether the request named its version (then it is not mirrored to a shadow).
    pub named_version: bool,
    /// Inputs, any order; put in the model's order, and taken when the version runs on workers
    /// (the caller's buffers are reused otherwise).
    pub inputs: &'a mut Vec<Tensor>,
    /// Output names to return; empty means all.
    pub requested: &'a [String],
    /// The deadline the client asked for.
    pub timeout: Option<Duration>,
    /// The client's W3C `traceparent` header (read only when [`Server::traced`]).
    pub traceparent: Option<&'a str>,
    /// The client's W3C `tracestate` header (read only when [`Server::traced`]).
    pub tracestate: Option<&'a str>,
}

/// The deadline of a request that started at `started`: the smaller of the server's and the
/// client's timeouts, clamped to [`MAX_TIMEOUT`] so any value is safe.
pub fn deadline(
    started: Instant,
    server: Option<Duration>,
    client: Option<Duration>,
) -> Option<Instant> {
    let t = match (server, client) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b)?,
    };
    started.checked_add(t.min(MAX_TIMEOUT))
}

impl Server {
    /// New server state.
    pub fn new(
        registry: Arc<Registry>,
        request_timeout: Option<Duration>,
        limits: Limits,
        budget: Budget,
    ) -> Self {
        Self {
            registry,
            request_timeout,
            limits,
            budget,
            requests: Default::default(),
            reached: Default::default(),
            policy: None,
            decision_log: None,
            traced: false,
        }
    }

    /// Counts a finished request.
    pub fn count(&self, proto: Protocol, result: Result<(), &InferError>) {
        bump(&self.requests, proto, code_index(result));
    }

    /// The version a request names (the serving one when `version` is empty).
    pub fn resolve(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<Arc<LoadedVersion>, InferError> {
        self.registry.resolve(model, version)
    }

    /// Runs one request on `v` (from [`Server::resolve`]) and hands `encode` its answer. While
    /// an analysis splits the serving version's live traffic, the request may be answered by the
    /// baseline instead (the answer names the version that gave it) and counts in that arm's
    /// figures.
    pub async fn infer<R>(
        &self,
        v: Arc<LoadedVersion>,
        req: Request<'_>,
        encode: impl FnOnce(Answer<'_>) -> Result<R, InferError>,
    ) -> Result<R, InferError> {
        let started = Instant::now();
        let split = if req.named_version {
            None
        } else {
            self.registry.split_for(&v)
        };
        let picked = split.as_deref().map(Baseline::pick);
        let v = picked.map_or(v, |(arm, _)| arm.version.clone());
        let span = if self.traced {
            request_span(&v, &req)
        } else {
            // Disabled callsites cost one branch; enable with RUST_LOG=kinfer_runtime=debug.
            tracing::debug_span!("infer", protocol = req.protocol.label(), model = %v.info.name, version = %v.info.version)
        };
        let proto = req.protocol;
        // A deadline the client chose (tighter than the server's) is not the server's failure.
        let client_deadline = match (self.request_timeout, req.timeout) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(server), Some(client)) => client < server,
        };
        let pair = split.as_ref().zip(picked).and_then(|(b, (_, other))| {
            other.map(|o| Pairing {
                split: b.clone(),
                other: o.version.clone(),
            })
        });
        let arm = picked.map(|(arm, _)| arm);
        let traced = self.traced.then(|| span.clone());
        let result = self
            .run(&v, req, started, arm, pair, traced, encode)
            .instrument(span.clone())
            .await;
        if let (true, Err(e)) = (self.traced, &result) {
            span.record("otel.status_code", "ERROR");
            span.record("error", tracing::field::display(e));
        }
        let elapsed = started.elapsed();
        if let Some(h) = v.stats.protocol.get(proto as usize) {
            h.record(elapsed);
        }
        let outcome = result.as_ref().map(|_| ());
        let code = code_index(outcome);
        bump(&v.stats.codes, proto, code);
        bump(&self.reached, proto, code);
        v.stats.record_request(elapsed, outcome, client_deadline);
        if let Some(arm) = arm {
            arm.stats.record_request(elapsed, outcome, client_deadline);
        }
        result
    }

    #[allow(clippy::too_many_arguments)] // the request's parts, taken apart once
    async fn run<R>(
        &self,
        v: &LoadedVersion,
        req: Request<'_>,
        started: Instant,
        arm: Option<&Arm>,
        pair: Option<Pairing>,
        traced: Option<tracing::Span>,
        encode: impl FnOnce(Answer<'_>) -> Result<R, InferError>,
    ) -> Result<R, InferError> {
        let Request {
            id,
            named_version,
            inputs,
            requested,
            timeout,
            ..
        } = req;
        let model = v.info.name.as_str();
        for r in requested {
            let is_decision = self.policy.is_some() && r == DECISION_OUTPUT;
            if !is_decision && !v.info.outputs.iter().any(|o| &o.name == r) {
                let known: Vec<&str> = v.info.outputs.iter().map(|o| o.name.as_str()).collect();
                return Err(InferError::invalid(format!(
                    "model '{model}' has no output '{r}'; its outputs are {known:?}"
                )));
            }
        }
        let max_bytes = self.limits.max_message_bytes;
        let rows = validate_inputs(model, &v.info.inputs, inputs, v.max_batch(), max_bytes)?;
        if let Some(p) = &self.policy {
            p.check_inputs(inputs)?;
        }
        // The model's order, so batches can be stacked position by position (and an unstable
        // sort: the names are distinct, and it needs no buffer).
        inputs.sort_unstable_by_key(|t| v.info.inputs.iter().position(|s| s.name == t.name));
        if !named_version && let Some(ring) = self.registry.ring() {
            ring.offer(inputs, rows);
        }
        let deadline = deadline(started, self.request_timeout, timeout);
        // Shadow only live traffic to the serving version; inputs are copied only when sampled.
        let shadow = if named_version {
            None
        } else {
            self.registry.shadow_sample()
        };
        let mirror = shadow.as_ref().map(|_| inputs.clone());
        let paired = pair.as_ref().map(|_| inputs.clone());
        let copy_first = mirror.is_some() || paired.is_some();
        let run_span = traced.as_ref().map(|parent| {
            tracing::info_span!(target: TARGET, parent: parent, "model.run",
                otel.name = "model.run", rows, queue_us = Empty, compute_us = Empty, batch_rows = Empty)
        });
        // Everything that reads the outputs happens here, while they are where the run left
        // them: statistics, the policy, the decision log, the encoding.
        let answer = |outputs: &[TensorView<'_>]| {
            let first = outputs.first().copied();
            let first_copy = first.filter(|_| copy_first).map(|t| t.to_tensor());
            let mut labels = Vec::new();
            let mut decision = None;
            if let Some(p) = &self.policy {
                let scores = p.scores(outputs)?;
                labels = scores.iter().map(|&s| p.classify(s)).collect();
                for &l in &labels {
                    if let Some(c) = v.stats.decisions.get(l) {
                        c.fetch_add(1, Relaxed);
                    }
                }
                decision = Some(p.decision_tensor(&labels));
            }
            if let Some(first) = first {
                v.stats.record_output(first);
                if let Some(arm) = arm {
                    arm.stats.record_output(first);
                }
            }
            if let Some(log) = &self.decision_log
                && log.sample()
            {
                let decisions = match &self.policy {
                    Some(p) => labels.iter().map(|&l| p.label(l).to_owned()).collect(),
                    None => Vec::new(),
                };
                log.record(DecisionRecord {
                    kind: "decision",
                    ts_ms: now_ms(),
                    request_id: id.map(str::to_owned),
                    model: model.to_owned(),
                    version: v.info.version.clone(),
                    digest: v.digest.clone(),
                    latency_us: micros(started.elapsed()),
                    decisions,
                    scores: first
                        .map(|t| first_per_row(&to_f64(t), t.rows().unwrap_or(1).max(1)))
                        .unwrap_or_default(),
                });
            }
            let mut chosen: SmallVec<[TensorView<'_>; 4]> = outputs
                .iter()
                .filter(|o| requested.is_empty() || requested.iter().any(|r| r == o.name))
                .copied()
                .collect();
            if let Some(d) = &decision
                && (requested.is_empty() || requested.iter().any(|r| r == DECISION_OUTPUT))
            {
                chosen.push(d.view());
            }
            let encoded = encode(Answer {
                version: &v.info.version,
                outputs: &chosen,
            })?;
            Ok::<_, InferError>((encoded, first_copy))
        };
        let ran = match &run_span {
            None => v.run(inputs, rows, deadline, answer).await?,
            Some(span) => {
                let ran = v
                    .run(inputs, rows, deadline, answer)
                    .instrument(span.clone())
                    .await?;
                span.record("queue_us", micros(ran.queue));
                span.record("compute_us", micros(ran.compute));
                span.record("batch_rows", ran.batch_rows);
                ran
            }
        };
        v.stats.queue.record(ran.queue);
        let (encoded, first) = ran.value?;
        if let (Some(sh), Some(inputs), Some(first)) = (shadow, mirror, first.clone()) {
            shadow::mirror(sh, inputs, rows, first, max_bytes, traced.as_ref());
        }
        if let (Some(p), Some(inputs), Some(first)) = (pair, paired, first) {
            let (split, other) = (p.split, p.other);
            shadow::pair(
                split,
                other,
                inputs,
                rows,
                first,
                max_bytes,
                traced.as_ref(),
            );
        }
        Ok(encoded)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The exported span of one request: the model, the version that answers and its artifact
/// digest, continuing the client's trace when it sent a valid `traceparent`.
fn request_span(v: &LoadedVersion, req: &Request<'_>) -> tracing::Span {
    let span = tracing::info_span!(target: TARGET, "infer",
        otel.name = "infer",
        otel.kind = "server",
        otel.status_code = Empty,
        error = Empty,
        rpc.system = req.protocol.label(),
        kinfer.model = %v.info.name,
        kinfer.version = %v.info.version,
        kinfer.digest = v.digest.as_deref().unwrap_or(""),
        kinfer.request_id = req.id.unwrap_or(""),
    );
    kinfer_contract::telemetry::continue_remote(&span, req.traceparent, req.tracestate);
    span
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)] // tests
mod tests {
    use super::*;

    #[test]
    fn deadlines_of_any_value_clamp_instead_of_overflowing() {
        let now = Instant::now();
        let huge = Duration::from_secs(u64::MAX);
        assert_eq!(deadline(now, None, None), None);
        assert_eq!(
            deadline(now, None, Some(huge)),
            now.checked_add(MAX_TIMEOUT)
        );
        assert_eq!(
            deadline(now, Some(huge), Some(huge)),
            now.checked_add(MAX_TIMEOUT)
        );
        let ms = Duration::from_millis(5);
        assert_eq!(deadline(now, Some(huge), Some(ms)), Some(now + ms));
        assert_eq!(deadline(now, Some(ms), None), Some(now + ms));
        assert_eq!(deadline(now, None, Some(Duration::ZERO)), Some(now));
    }
}
