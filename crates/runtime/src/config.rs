//! Command-line flags (with `KINFER_*` environment fallbacks), parsed once into [`Args`].

use std::{net::IpAddr, path::PathBuf};

use crate::models::session::Provider;

/// `kinfer-runtime`: serve an ONNX model over the Open Inference Protocol v2.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "kinfer-runtime", version, about)]
pub struct Args {
    /// ONNX model to serve at start (optional in a pod: the watcher stages and promotes).
    #[arg(long, env = "KINFER_MODEL")]
    pub model: Option<PathBuf>,
    /// Model name on the API (`/v2/models/{name}`); the file stem of --model when empty.
    #[arg(long, env = "KINFER_MODEL_NAME")]
    pub model_name: Option<String>,
    /// Version label of --model.
    #[arg(long, env = "KINFER_MODEL_VERSION", default_value = "1")]
    pub model_version: String,
    /// Path of libonnxruntime.so (ONNX Runtime 1.31).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_lib: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "KINFER_LISTEN", default_value = "0.0.0.0")]
    pub listen: IpAddr,
    /// OIP HTTP/REST port.
    #[arg(long, env = "KINFER_HTTP_PORT", default_value_t = 8080)]
    pub http_port: u16,
    /// OIP gRPC port.
    #[arg(long, env = "KINFER_GRPC_PORT", default_value_t = 8081)]
    pub grpc_port: u16,
    /// Prometheus metrics port.
    #[arg(long, env = "KINFER_METRICS_PORT", default_value_t = 9090)]
    pub metrics_port: u16,
    /// Unix socket of the admin API (created with mode 0600); none when empty.
    #[arg(long, env = "KINFER_ADMIN_SOCKET")]
    pub admin_socket: Option<PathBuf>,
    /// Execution provider.
    #[arg(long, env = "KINFER_EP", value_enum, default_value = "cpu")]
    pub execution_provider: Provider,
    /// `cpu`: fall back to CPU with a warning when the provider is missing (else refuse to start).
    #[arg(long, env = "KINFER_EP_FALLBACK")]
    pub ep_fallback: Option<String>,
    /// Graph optimisation level 0 (off) to 3 (all).
    #[arg(long, env = "KINFER_OPT_LEVEL", default_value_t = 3)]
    pub optimization_level: u8,
    /// Intra-op threads per session; the CPUs of the process's affinity mask when empty.
    #[arg(long, env = "KINFER_INTRA_OP_THREADS")]
    pub intra_op_threads: Option<usize>,
    /// Inter-op threads per session.
    #[arg(long, env = "KINFER_INTER_OP_THREADS", default_value_t = 1)]
    pub inter_op_threads: usize,
    /// Session instances (worker threads) per loaded version.
    #[arg(long, env = "KINFER_INSTANCES", default_value_t = 1)]
    pub instances: usize,
    /// `auto`: pin ORT intra-op threads to the CPUs in this process's affinity mask (what a
    /// Guaranteed pod with the static CPU manager gets).
    #[arg(long, env = "KINFER_CPU_AFFINITY")]
    pub cpu_affinity: Option<String>,
    /// Largest batch in rows; 1 disables dynamic batching.
    #[arg(long, env = "KINFER_MAX_BATCH_SIZE", default_value_t = 1)]
    pub max_batch_size: usize,
    /// Largest batch dimension a single request may carry.
    #[arg(long, env = "KINFER_MAX_REQUEST_ROWS", default_value_t = 4096)]
    pub max_request_rows: usize,
    /// Longest wait for a batch to fill, e.g. `2ms`.
    #[arg(long, env = "KINFER_MAX_QUEUE_DELAY", default_value = "1ms")]
    pub max_queue_delay: String,
    /// Requests that may wait per version before 503 / RESOURCE_EXHAUSTED.
    #[arg(long, env = "KINFER_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Deadline of a request (queue + run), e.g. `100ms`; clients may ask for less.
    #[arg(long, env = "KINFER_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// Largest HTTP request body in bytes.
    #[arg(long, env = "KINFER_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Warm-up runs per session before a version is ready.
    #[arg(long, env = "KINFER_WARMUP_RUNS", default_value_t = 3)]
    pub warmup_runs: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "KINFER_DRAIN_TIMEOUT", default_value = "10s")]
    pub drain_timeout: String,
    /// Decision policy file (YAML or JSON: output, thresholds, default): adds a `decision` output.
    #[arg(long, env = "KINFER_POLICY")]
    pub policy: Option<PathBuf>,
    /// Append sampled decisions (request id, version, latency, scores, labels) to this JSON-lines file.
    #[arg(long, env = "KINFER_DECISION_LOG")]
    pub decision_log: Option<PathBuf>,
    /// Fraction of requests written to the decision log.
    #[arg(long, env = "KINFER_DECISION_LOG_SAMPLE", default_value_t = 1.0)]
    pub decision_log_sample: f64,
    /// Check mode (the ModelVersion verification Job): load --model, run --golden if given,
    /// print one JSON object (and write it to --termination-log), exit 0 when it passes, 1 when not.
    #[arg(long, requires = "model")]
    pub check: bool,
    /// Golden set (.npz with `input.<name>` / `output.<name>` arrays) for --check.
    #[arg(long, requires = "check")]
    pub golden: Option<PathBuf>,
    /// Absolute tolerance of --check.
    #[arg(long, default_value_t = 1e-5)]
    pub atol: f64,
    /// Relative tolerance of --check.
    #[arg(long, default_value_t = 1e-4)]
    pub rtol: f64,
    /// Fraction of golden samples whose decision must match in --check.
    #[arg(long, default_value_t = 1.0)]
    pub min_agreement: f64,
    /// Where --check also writes its JSON result (Kubernetes reads it as the termination message).
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
    /// Log format.
    #[arg(long, env = "KINFER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// The CPUs this process may run on (its affinity mask), from /proc/self/status.
pub fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("")
        .trim();
    parse_cpu_list(list)
}

/// Parses a Linux CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(a) = part.parse() {
                    out.push(a);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_cpu_lists() {
        assert_eq!(
            super::parse_cpu_list("0-3,8,10-11"),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(super::parse_cpu_list("5"), vec![5]);
        assert!(super::parse_cpu_list("").is_empty());
    }
}
