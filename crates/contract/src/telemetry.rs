//! How the three binaries trace: log lines (text or JSON) always, and OpenTelemetry spans
//! exported over OTLP/gRPC when an endpoint is given ([`crate::flags::tracing`]), off by default.
//! Also the W3C trace context that crosses the boundary from a client into the runtime
//! (`traceparent`, `tracestate`).
//!
//! Only spans with the target [`TARGET`] are exported (with the warnings and errors logged
//! inside them as span events), so a dependency's spans never flood the collector and a span
//! made for export is visibly one. Each layer filters on its own: `RUST_LOG` chooses log lines
//! and never silences the export. With no endpoint no OpenTelemetry layer exists; the runtime
//! then makes no per-request span that is not disabled at its callsite.

use std::time::Duration;

use opentelemetry::{
    KeyValue,
    propagation::{Extractor, TextMapPropagator},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::flags::tracing as flags;
use tracing_subscriber::{
    EnvFilter, Layer, Registry,
    filter::{LevelFilter, Targets},
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

/// The target of every span meant for export: `info_span!(target: TARGET, "name", ...)`.
pub const TARGET: &str = "kinfer::trace";

/// The W3C header naming the caller's span.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header with vendor trace state, carried along with [`TRACEPARENT`].
pub const TRACESTATE: &str = "tracestate";

/// How long one export to the collector may take before it is dropped (spans are never worth
/// blocking for).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how log lines are written.
#[derive(Debug, Clone, Copy)]
pub struct Logging<'a> {
    /// JSON lines instead of text.
    pub json: bool,
    /// The filter when `RUST_LOG` is unset (`info,ort=warn`).
    pub default_filter: &'a str,
    /// Write to stderr (when stdout carries something else); else stdout.
    pub stderr: bool,
    /// JSON only: event fields at the top level and no span list, instead of `fields` and
    /// `span`/`spans` objects.
    pub flatten: bool,
}

/// The tracing flags of a binary (`#[command(flatten)]`), named by [`crate::flags::tracing`].
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TracingArgs {
    /// Export spans to this OpenTelemetry collector over OTLP/gRPC (`http://HOST:4317`); no
    /// spans are exported when unset.
    #[arg(long = flags::OTLP_ENDPOINT, env = flags::OTLP_ENDPOINT_ENV, global = true)]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded, 0 to 1 (a request's sampled `traceparent` decides
    /// for it).
    #[arg(
        long = flags::TRACE_SAMPLE_RATIO,
        env = flags::TRACE_SAMPLE_RATIO_ENV,
        default_value_t = flags::DEFAULT_SAMPLE_RATIO,
        global = true
    )]
    pub trace_sample_ratio: f64,
}

impl TracingArgs {
    /// The export these flags ask for, if any.
    pub fn export(&self, service: &'static str) -> Option<Export> {
        Export::configured(
            self.otlp_endpoint.as_deref(),
            self.trace_sample_ratio,
            service,
        )
    }
}

/// Where spans go, when they go anywhere.
#[derive(Debug, Clone)]
pub struct Export {
    /// The collector's OTLP/gRPC endpoint (`http://host:4317`).
    pub endpoint: String,
    /// The share of new traces recorded (0 to 1); a request that arrives with a sampled
    /// `traceparent` is always recorded, one that arrives unsampled never is.
    pub sample_ratio: f64,
    /// `service.name` of the spans (`kinfer-runtime`, `kinfer-watcher`, `kinfer-operator`).
    pub service: &'static str,
    /// More resource attributes (`k8s.pod.name`, `k8s.namespace.name`, ...).
    pub attributes: Vec<(&'static str, String)>,
}

impl Export {
    /// An export to `endpoint` when one is given (a flag, an environment variable), else `None`.
    pub fn configured(
        endpoint: Option<&str>,
        sample_ratio: f64,
        service: &'static str,
    ) -> Option<Self> {
        let endpoint = endpoint.map(str::trim).filter(|e| !e.is_empty())?;
        Some(Self {
            endpoint: endpoint.to_owned(),
            sample_ratio,
            service,
            attributes: Vec::new(),
        })
    }

    /// Adds the resource attributes of the pod this process runs in, from the environment
    /// variables `pod_env` names (the downward API), where they are set.
    #[must_use]
    pub fn in_pod(mut self, pod_name_env: &str, namespace_env: &str) -> Self {
        for (attr, var) in [
            ("k8s.pod.name", pod_name_env),
            ("k8s.namespace.name", namespace_env),
        ] {
            if let Ok(v) = std::env::var(var)
                && !v.is_empty()
            {
                self.attributes.push((attr, v));
            }
        }
        self
    }
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The endpoint is not a plain `http://` URL.
    #[error(
        "--otlp-endpoint {0:?}: give the collector's OTLP/gRPC address as http://HOST:PORT (usually port 4317; TLS is not supported: send to a collector agent in the cluster)"
    )]
    Endpoint(String),
    /// The sample ratio is not a share.
    #[error("--trace-sample-ratio {0}: give a number between 0 and 1")]
    SampleRatio(f64),
    /// The exporter could not be built.
    #[error("--otlp-endpoint {endpoint:?}: cannot build the OTLP exporter")]
    Exporter {
        /// The endpoint.
        endpoint: String,
        /// What the exporter said.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// A global subscriber was already installed.
    #[error("cannot install the tracing subscriber")]
    Install(#[source] tracing_subscriber::util::TryInitError),
}

/// What [`init`] set up; [`Telemetry::shutdown`] sends the spans still buffered.
#[must_use = "call shutdown() before exiting, or buffered spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (an endpoint was given).
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is buffered and stops the exporter; call once, before the process exits.
    pub fn shutdown(&self) {
        if let Some(p) = &self.provider
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "flushing the last spans to the collector failed");
        }
    }
}

type Boxed = Box<dyn Layer<Registry> + Send + Sync>;

fn log_layer(logging: Logging<'_>) -> Boxed {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(logging.default_filter));
    let fmt = tracing_subscriber::fmt::layer();
    match (logging.json, logging.stderr) {
        (true, stderr) => {
            let json = fmt
                .json()
                .flatten_event(logging.flatten)
                .with_current_span(!logging.flatten)
                .with_span_list(!logging.flatten);
            if stderr {
                json.with_writer(std::io::stderr)
                    .with_filter(filter)
                    .boxed()
            } else {
                json.with_filter(filter).boxed()
            }
        }
        (false, true) => fmt.with_writer(std::io::stderr).with_filter(filter).boxed(),
        (false, false) => fmt.with_filter(filter).boxed(),
    }
}

/// The filter of the export: spans made for it, and what the binaries log at warn or above
/// inside them (as span events).
fn export_filter() -> Targets {
    Targets::new()
        .with_target(TARGET, LevelFilter::INFO)
        .with_target("kinfer_runtime", LevelFilter::WARN)
        .with_target("kinfer_watcher", LevelFilter::WARN)
        .with_target("kinfer_operator", LevelFilter::WARN)
}

fn provider(export: &Export) -> Result<SdkTracerProvider, TelemetryError> {
    if !(0.0..=1.0).contains(&export.sample_ratio) {
        return Err(TelemetryError::SampleRatio(export.sample_ratio));
    }
    let endpoint = &export.endpoint;
    let host = endpoint.strip_prefix("http://").unwrap_or_default();
    if host.is_empty() || host.starts_with('/') || host.contains(char::is_whitespace) {
        return Err(TelemetryError::Endpoint(endpoint.clone()));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_compression(opentelemetry_otlp::Compression::Gzip)
        .build()
        .or_else(|_| {
            // Built without gzip support: plain is as good for a collector next door.
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build()
        })
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.clone(),
            source,
        })?;
    let resource = Resource::builder()
        .with_service_name(export.service)
        .with_attributes(
            export
                .attributes
                .iter()
                .map(|(k, v)| KeyValue::new(*k, v.clone())),
        )
        .with_attribute(KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION").to_owned(),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            export.sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// Installs the process's subscriber: log lines, and the OTLP export when `export` is given.
/// Must run inside a Tokio runtime when exporting (the gRPC client lives on it).
pub fn init(logging: Logging<'_>, export: Option<Export>) -> Result<Telemetry, TelemetryError> {
    let (provider, otel) = match &export {
        None => (None, None),
        Some(e) => {
            let p = provider(e)?;
            let layer = tracing_opentelemetry::layer()
                .with_tracer(p.tracer(e.service))
                .with_location(false)
                .with_threads(false)
                .with_filter(export_filter())
                .boxed();
            (Some(p), Some(layer))
        }
    };
    tracing_subscriber::registry()
        .with(log_layer(logging))
        .with(otel)
        .try_init()
        .map_err(TelemetryError::Install)?;
    if let Some(e) = &export {
        tracing::info!(endpoint = %e.endpoint, sample_ratio = e.sample_ratio, "exporting spans over OTLP/gRPC");
    }
    Ok(Telemetry { provider })
}

/// The two W3C headers of one request, as a propagator reads them.
struct Headers<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(self.traceparent),
            TRACESTATE => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// Makes `span` (not yet entered) the child of the caller's span that a `traceparent` header
/// names. A missing or malformed header (anything W3C Trace Context refuses) leaves `span` the
/// root of a new trace; it is never an error a client sees. Returns whether a parent was taken.
pub fn continue_remote(
    span: &tracing::Span,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> bool {
    let Some(traceparent) = traceparent else {
        return false;
    };
    let cx = TraceContextPropagator::new().extract(&Headers {
        traceparent,
        tracestate,
    });
    if !cx.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(cx).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_endpoints_and_shares_are_taken() {
        let e = |endpoint: &str, ratio| Export {
            endpoint: endpoint.into(),
            sample_ratio: ratio,
            service: "t",
            attributes: vec![],
        };
        for bad in [
            "",
            "collector:4317",
            "https://c:4317",
            "http://",
            "http:///x",
        ] {
            assert!(
                matches!(provider(&e(bad, 1.0)), Err(TelemetryError::Endpoint(_))),
                "{bad:?} was taken"
            );
        }
        assert!(matches!(
            provider(&e("http://c:4317", 1.5)),
            Err(TelemetryError::SampleRatio(_))
        ));
        assert!(matches!(
            provider(&e("http://c:4317", f64::NAN)),
            Err(TelemetryError::SampleRatio(_))
        ));
        assert!(Export::configured(Some("  "), 1.0, "t").is_none());
        assert!(Export::configured(None, 1.0, "t").is_none());
        assert_eq!(
            Export::configured(Some(" http://c:4317 "), 0.5, "t")
                .unwrap()
                .endpoint,
            "http://c:4317"
        );
    }

    #[test]
    fn a_malformed_traceparent_is_ignored_and_a_valid_one_is_read() {
        let headers = |tp| Headers {
            traceparent: tp,
            tracestate: None,
        };
        let read = |tp| {
            let cx = TraceContextPropagator::new().extract(&headers(tp));
            let sc = cx.span().span_context().clone();
            sc.is_valid()
                .then(|| (sc.trace_id().to_string(), sc.is_sampled()))
        };
        assert_eq!(
            read("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736".into(), true))
        );
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(read(bad), None, "{bad:?} was read");
        }
        // No OpenTelemetry layer: nothing to attach to, and no panic.
        let span = tracing::info_span!(target: TARGET, "t");
        assert!(!continue_remote(&span, Some("garbage"), None));
        assert!(!continue_remote(&span, None, None));
    }
}
