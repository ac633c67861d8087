//! Command-line flags (with `KINFER_*` environment fallbacks), parsed once into [`Args`]. Every
//! count and duration has an upper bound, so a value that cannot work is refused at start with
//! a message naming the flag, never taken as a reason to allocate or wait without end.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::builder::RangedU64ValueParser;
use kinfer_contract::flags::runtime as flags;

use crate::models::{
    session::{ConvAlgoSearch, Provider},
    version::BatchRounding,
};

/// Upper bounds of the flags (the InferenceService CRD has the same ones).
pub mod bounds {
    use std::time::Duration;
    /// `--max-batch-size`.
    pub const MAX_BATCH_SIZE: u64 = 4096;
    /// `--max-request-rows`.
    pub const MAX_REQUEST_ROWS: u64 = 1 << 20;
    /// `--queue-capacity`.
    pub const QUEUE_CAPACITY: u64 = 65536;
    /// `--instances`.
    pub const INSTANCES: u64 = 64;
    /// `--intra-op-threads`, `--inter-op-threads`.
    pub const THREADS: u64 = 256;
    /// `--cuda-device-id` (exclusive; the CRD's `deviceId` has the same bound).
    pub const CUDA_DEVICES: u64 = 64;
    /// `--warmup-runs`.
    pub const WARMUP_RUNS: u64 = 100;
    /// `--max-message-bytes` (1 GiB; gRPC's length prefix allows 4 GiB).
    pub const MESSAGE_BYTES: u64 = 1 << 30;
    /// `--max-inflight-bytes` (64 GiB).
    pub const INFLIGHT_BYTES: u64 = 1 << 36;
    /// `--replay-requests`.
    pub const REPLAY_REQUESTS: u64 = 100_000;
    /// `--replay-bytes` (16 GiB).
    pub const REPLAY_BYTES: u64 = 1 << 34;
    /// `--max-queue-delay`.
    pub const QUEUE_DELAY: Duration = Duration::from_secs(1);
    /// `--request-timeout`.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);
    /// `--drain-timeout`.
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
    /// `--body-idle-timeout`.
    pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
}

fn bounded_duration(v: &str, max: Duration) -> Result<Duration, String> {
    let d = kinfer_contract::duration::parse(v).map_err(|e| e.to_string())?;
    if d > max {
        return Err(format!("{v} is longer than the most allowed, {max:?}"));
    }
    Ok(d)
}

fn queue_delay(v: &str) -> Result<Duration, String> {
    bounded_duration(v, bounds::QUEUE_DELAY)
}

fn request_timeout(v: &str) -> Result<Duration, String> {
    bounded_duration(v, bounds::REQUEST_TIMEOUT)
}

fn drain_timeout(v: &str) -> Result<Duration, String> {
    bounded_duration(v, bounds::DRAIN_TIMEOUT)
}

fn body_idle_timeout(v: &str) -> Result<Duration, String> {
    match bounded_duration(v, bounds::BODY_IDLE_TIMEOUT)? {
        d if d.is_zero() => Err(format!("{v}: a body must be given some time to arrive")),
        d => Ok(d),
    }
}

fn fraction(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{v} is not a fraction between 0 and 1")),
    }
}

/// `kinfer-runtime`: serve an ONNX model over the Open Inference Protocol v2.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "kinfer-runtime", version, about)]
pub struct Args {
    /// ONNX model to serve at start (optional in a pod: the watcher stages and promotes).
    #[arg(long = flags::MODEL, env = "KINFER_MODEL")]
    pub model: Option<PathBuf>,
    /// Model name on the API (`/v2/models/{name}`); the file stem of --model when empty.
    #[arg(long = flags::MODEL_NAME, env = "KINFER_MODEL_NAME")]
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
    #[arg(long = flags::ADMIN_SOCKET, env = "KINFER_ADMIN_SOCKET")]
    pub admin_socket: Option<PathBuf>,
    /// Execution provider.
    #[arg(long = flags::EXECUTION_PROVIDER, env = "KINFER_EP", value_enum, default_value = "cpu")]
    pub execution_provider: Provider,
    /// `cpu`: serve on the CPU, with a warning, when the provider is missing or cannot start
    /// (else refuse to load).
    #[arg(long = flags::EP_FALLBACK, env = "KINFER_EP_FALLBACK")]
    pub ep_fallback: Option<String>,
    /// CUDA device of the `cuda` and `tensorrt` providers, among the process's GPUs.
    #[arg(long = flags::CUDA_DEVICE_ID, env = "KINFER_CUDA_DEVICE_ID", default_value_t = 0,
          value_parser = RangedU64ValueParser::<u32>::new().range(0..bounds::CUDA_DEVICES))]
    pub cuda_device_id: u32,
    /// cuDNN convolution algorithm search of the `cuda` and `tensorrt` providers; ORT's default
    /// (exhaustive) when unset.
    #[arg(long = flags::CUDNN_CONV_ALGO_SEARCH, env = "KINFER_CUDNN_CONV_ALGO_SEARCH", value_enum)]
    pub cudnn_conv_algo_search: Option<ConvAlgoSearch>,
    /// TensorRT builds fp16 engines (`tensorrt` only).
    #[arg(long = flags::TRT_FP16, env = "KINFER_TRT_FP16")]
    pub trt_fp16: bool,
    /// Directory of TensorRT's engine and timing caches (`tensorrt` only; created when missing).
    #[arg(long = flags::TRT_ENGINE_CACHE, env = "KINFER_TRT_ENGINE_CACHE")]
    pub trt_engine_cache: Option<PathBuf>,
    /// Graph optimisation level 0 (off) to 3 (all).
    #[arg(long, env = "KINFER_OPT_LEVEL", default_value_t = 3)]
    pub optimization_level: u8,
    /// Intra-op threads per session; when empty, the CPUs of the process's affinity mask
    /// (divided between the instances under `--cpu-affinity auto`).
    #[arg(long = flags::INTRA_OP_THREADS, env = "KINFER_INTRA_OP_THREADS",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=bounds::THREADS))]
    pub intra_op_threads: Option<usize>,
    /// Inter-op threads per session.
    #[arg(long = flags::INTER_OP_THREADS, env = "KINFER_INTER_OP_THREADS", default_value_t = 1,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=bounds::THREADS))]
    pub inter_op_threads: usize,
    /// Session instances (worker threads) per loaded version.
    #[arg(long = flags::INSTANCES, env = "KINFER_INSTANCES", default_value_t = 1,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=bounds::INSTANCES))]
    pub instances: usize,
    /// `auto`: share the CPUs of this process's affinity mask (what a Guaranteed pod gets from
    /// the kubelet's static CPU manager) out between the instances and pin each worker and its
    /// ORT intra-op threads one per CPU; the network threads stay unpinned. A mask larger than
    /// instances × intra-op threads is the node's shared pool: nothing is pinned, and
    /// `/admin/stats` says so (`cpuPinning`).
    #[arg(long = flags::CPU_AFFINITY, env = "KINFER_CPU_AFFINITY")]
    pub cpu_affinity: Option<String>,
    /// With `--cpu-affinity auto`: the whole CPUs the pod asked for (the operator sets it). A
    /// cpuset larger than this is the node's shared pool, not CPUs of the pod's own; without
    /// it, instances × intra-op threads is what the cpuset is compared with.
    #[arg(long = flags::EXCLUSIVE_CPUS, env = "KINFER_EXCLUSIVE_CPUS",
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=bounds::THREADS))]
    pub exclusive_cpus: Option<usize>,
    /// Largest batch in rows; 1 disables dynamic batching.
    #[arg(long = flags::MAX_BATCH_SIZE, env = "KINFER_MAX_BATCH_SIZE", default_value_t = 1,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=bounds::MAX_BATCH_SIZE))]
    pub max_batch_size: usize,
    /// Largest batch dimension a single request may carry.
    #[arg(long, env = "KINFER_MAX_REQUEST_ROWS", default_value_t = 4096,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=bounds::MAX_REQUEST_ROWS))]
    pub max_request_rows: usize,
    /// Longest a batch waits to fill once its first request is taken, e.g. `2ms`; 0 (the
    /// default) batches only what queued while the worker was busy and adds no latency.
    #[arg(long = flags::MAX_QUEUE_DELAY, env = "KINFER_MAX_QUEUE_DELAY", default_value = "0s", value_parser = queue_delay)]
    pub max_queue_delay: Duration,
    /// `exact`: a version batches only when a probe at load finds its batched rows bit for bit
    /// the rows run alone; `tolerate`: rounding-level differences are accepted too. Rows that
    /// depend on each other never batch.
    #[arg(
        long,
        env = "KINFER_BATCH_ROUNDING",
        value_enum,
        default_value = "exact"
    )]
    pub batch_rounding: BatchRounding,
    /// Requests that may wait per version before 503 / RESOURCE_EXHAUSTED.
    #[arg(long = flags::QUEUE_CAPACITY, env = "KINFER_QUEUE_CAPACITY", default_value_t = 1024,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..=bounds::QUEUE_CAPACITY))]
    pub queue_capacity: usize,
    /// Deadline of a request (queue + run), e.g. `100ms`; clients may ask for less.
    #[arg(long = flags::REQUEST_TIMEOUT, env = "KINFER_REQUEST_TIMEOUT", value_parser = request_timeout)]
    pub request_timeout: Option<Duration>,
    /// Largest request message, HTTP body or gRPC message, in bytes; also the most bytes the
    /// tensors of one request may hold once decoded.
    #[arg(long = flags::MAX_MESSAGE_BYTES, visible_alias = "max-body-bytes", env = "KINFER_MAX_MESSAGE_BYTES",
          default_value_t = 64 * 1024 * 1024,
          value_parser = RangedU64ValueParser::<usize>::new().range(1024..=bounds::MESSAGE_BYTES))]
    pub max_message_bytes: usize,
    /// Request bytes (messages as they arrive and their decoded tensors) all requests in flight
    /// may hold together; past it a request is refused with 503 / RESOURCE_EXHAUSTED. At least
    /// --max-message-bytes.
    #[arg(long = flags::MAX_INFLIGHT_BYTES, env = "KINFER_MAX_INFLIGHT_BYTES", default_value_t = 256 * 1024 * 1024,
          value_parser = RangedU64ValueParser::<usize>::new().range(1024..=bounds::INFLIGHT_BYTES))]
    pub max_inflight_bytes: usize,
    /// Longest wait for the next piece of an HTTP request body; a body that stalls longer is
    /// refused (400) and its bytes released.
    #[arg(long, env = "KINFER_BODY_IDLE_TIMEOUT", default_value = "30s", value_parser = body_idle_timeout)]
    pub body_idle_timeout: Duration,
    /// Warm-up runs per session before a version is ready.
    #[arg(long, env = "KINFER_WARMUP_RUNS", default_value_t = 3,
          value_parser = RangedU64ValueParser::<usize>::new().range(0..=bounds::WARMUP_RUNS))]
    pub warmup_runs: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "KINFER_DRAIN_TIMEOUT", default_value = "10s", value_parser = drain_timeout)]
    pub drain_timeout: Duration,
    /// Decision policy file (YAML or JSON: output, thresholds, default): adds a `decision` output.
    #[arg(long = flags::POLICY, env = "KINFER_POLICY")]
    pub policy: Option<PathBuf>,
    /// Write sampled decisions (request id, version, artifact digest, labels, scores, latency) as
    /// JSON lines to this file, or to stdout with `-`.
    #[arg(long = flags::DECISION_LOG, env = "KINFER_DECISION_LOG")]
    pub decision_log: Option<PathBuf>,
    /// Fraction of requests written to the decision log.
    #[arg(long = flags::DECISION_LOG_SAMPLE, env = "KINFER_DECISION_LOG_SAMPLE", default_value_t = 1.0, value_parser = fraction)]
    pub decision_log_sample: f64,
    /// A decision-log file is renamed to `<file>.1` (replacing an older one) before it grows
    /// past this size.
    #[arg(long = flags::DECISION_LOG_MAX_BYTES, env = "KINFER_DECISION_LOG_MAX_BYTES", default_value_t = 64 << 20,
          value_parser = RangedU64ValueParser::<u64>::new().range(4096..))]
    pub decision_log_max_bytes: u64,
    /// Keep, in memory only, the inputs of up to this many recent live requests (sampled by
    /// --replay-sample-rate, capped by --replay-bytes) so an analysis with too little live traffic
    /// can replay them on both versions (`POST /admin/replay`). 0 keeps none.
    #[arg(long = flags::REPLAY_REQUESTS, env = "KINFER_REPLAY_REQUESTS", default_value_t = 0,
          value_parser = RangedU64ValueParser::<usize>::new().range(0..=bounds::REPLAY_REQUESTS))]
    pub replay_requests: usize,
    /// Most bytes the kept requests take (the oldest are dropped first).
    #[arg(long = flags::REPLAY_BYTES, env = "KINFER_REPLAY_BYTES", default_value_t = 16 << 20,
          value_parser = RangedU64ValueParser::<usize>::new().range(1024..=bounds::REPLAY_BYTES))]
    pub replay_bytes: usize,
    /// Fraction of live requests whose inputs are kept.
    #[arg(long = flags::REPLAY_SAMPLE_RATE, env = "KINFER_REPLAY_SAMPLE_RATE", default_value_t = 0.1, value_parser = fraction)]
    pub replay_sample_rate: f64,
    /// Check mode (the ModelVersion verification Job): load --model, run --golden if given,
    /// print one JSON object (and write it to --termination-log), exit 0 when it passes, 3 when the
    /// artifact is refused (load failure, golden-set mismatch, unreadable golden set).
    #[arg(long = flags::CHECK, requires = "model")]
    pub check: bool,
    /// Golden set (.npz with `input.<name>` / `output.<name>` arrays) for --check.
    #[arg(long = flags::GOLDEN, requires = "check")]
    pub golden: Option<PathBuf>,
    /// Absolute tolerance of --check.
    #[arg(long = flags::ATOL, default_value_t = 1e-5)]
    pub atol: f64,
    /// Relative tolerance of --check.
    #[arg(long = flags::RTOL, default_value_t = 1e-4)]
    pub rtol: f64,
    /// Fraction of golden samples whose decision must match in --check.
    #[arg(long = flags::MIN_AGREEMENT, default_value_t = 1.0)]
    pub min_agreement: f64,
    /// Where --check also writes its JSON result (Kubernetes reads it as the termination message).
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
    /// Log format.
    #[arg(long = flags::LOG_FORMAT, env = "KINFER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Span export (off unless `--otlp-endpoint` is given).
    #[command(flatten)]
    pub tracing: kinfer_contract::telemetry::TracingArgs,
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
    use clap::Parser;

    use super::Args;
    use crate::models::session::{ConvAlgoSearch, Provider};

    fn parse(flags: &[&str]) -> Result<Args, String> {
        Args::try_parse_from(["kinfer-runtime"].iter().chain(flags)).map_err(|e| e.to_string())
    }

    #[test]
    fn counts_and_durations_are_bounded() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.max_queue_delay, std::time::Duration::ZERO);
        assert_eq!(a.max_message_bytes, 64 << 20);
        for (flag, value) in [
            ("--queue-capacity", "2147483647"),
            ("--queue-capacity", "0"),
            ("--max-batch-size", "100000"),
            ("--instances", "1000"),
            ("--max-queue-delay", "2s"),
            ("--request-timeout", "100h"),
            ("--max-message-bytes", "99999999999"),
            ("--decision-log-sample", "1.5"),
            ("--body-idle-timeout", "0s"),
            ("--body-idle-timeout", "1h"),
        ] {
            let e = parse(&[flag, value]).unwrap_err();
            assert!(e.contains(flag), "{flag} {value}: {e}");
        }
        // The old name of the message limit still works.
        assert_eq!(
            parse(&["--max-body-bytes", "65536"])
                .unwrap()
                .max_message_bytes,
            65536
        );
    }

    /// The command lines the operator writes (`kinfer_contract::flags`) parse here, every
    /// field arriving where the runtime reads it.
    #[test]
    fn parses_the_command_lines_the_operator_writes() {
        use kinfer_contract::flags::{
            Batching, GoldenCheck, ProviderFlags, RuntimeCheck, RuntimeServe,
        };
        let serve = RuntimeServe {
            model_name: "fraud".into(),
            admin_socket: "/run/kinfer/admin.sock".into(),
            log_format: "json".into(),
            execution_provider: "tensorrt".into(),
            ep_fallback_cpu: true,
            provider: ProviderFlags {
                device_id: Some(1),
                cudnn_conv_algo_search: Some("heuristic".into()),
                trt_fp16: true,
                trt_engine_cache: Some("/var/cache/kinfer/tensorrt".into()),
            },
            intra_op_threads: Some(4),
            pinned_cpus: Some(12),
            inter_op_threads: Some(2),
            instances: Some(3),
            batching: Some(Batching {
                max_batch_size: 16,
                max_queue_delay: "2ms".into(),
                queue_capacity: 64,
            }),
            request_timeout: Some("100ms".into()),
            max_inflight_bytes: Some(1 << 28),
            max_message_bytes: Some(1 << 25),
            policy: Some("/etc/kinfer/policy/policy.yaml".into()),
            decision_log: Some(kinfer_contract::flags::DecisionLogFlags {
                target: "/var/log/kinfer/decisions.jsonl".into(),
                sample_rate: 0.05,
                max_bytes: Some(1 << 20),
            }),
            replay: Some(kinfer_contract::flags::Replay {
                requests: 2000,
                bytes: 16 << 20,
                sample_rate: 0.25,
            }),
            tracing: Some(kinfer_contract::flags::Tracing {
                endpoint: "http://10.0.0.9:4317".into(),
                sample_ratio: 0.25,
            }),
        };
        let args = serve.to_args();
        let a = parse(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        assert_eq!(a.model_name.as_deref(), Some("fraud"));
        assert_eq!(
            a.admin_socket.as_deref(),
            Some(std::path::Path::new("/run/kinfer/admin.sock"))
        );
        assert_eq!(a.log_format, "json");
        assert_eq!(
            a.tracing.otlp_endpoint.as_deref(),
            Some("http://10.0.0.9:4317")
        );
        assert_eq!(a.tracing.trace_sample_ratio, 0.25);
        assert_eq!(a.execution_provider, Provider::Tensorrt);
        assert_eq!(a.ep_fallback.as_deref(), Some("cpu"));
        assert_eq!(a.cuda_device_id, 1);
        assert_eq!(a.cudnn_conv_algo_search, Some(ConvAlgoSearch::Heuristic));
        assert!(a.trt_fp16);
        assert_eq!(
            a.trt_engine_cache.as_deref(),
            Some(std::path::Path::new("/var/cache/kinfer/tensorrt"))
        );
        assert_eq!(a.intra_op_threads, Some(4));
        assert_eq!(a.cpu_affinity.as_deref(), Some("auto"));
        assert_eq!(a.exclusive_cpus, Some(12));
        assert_eq!((a.inter_op_threads, a.instances), (2, 3));
        assert_eq!((a.max_batch_size, a.queue_capacity), (16, 64));
        assert_eq!(a.max_queue_delay, std::time::Duration::from_millis(2));
        assert_eq!(
            a.request_timeout,
            Some(std::time::Duration::from_millis(100))
        );
        assert_eq!(
            (a.max_inflight_bytes, a.max_message_bytes),
            (1 << 28, 1 << 25)
        );
        assert_eq!(
            a.policy.as_deref(),
            Some(std::path::Path::new("/etc/kinfer/policy/policy.yaml"))
        );
        assert_eq!(
            (a.replay_requests, a.replay_bytes, a.replay_sample_rate),
            (2000, 16 << 20, 0.25)
        );
        assert_eq!(
            (
                a.decision_log.as_deref(),
                a.decision_log_sample,
                a.decision_log_max_bytes
            ),
            (
                Some(std::path::Path::new("/var/log/kinfer/decisions.jsonl")),
                0.05,
                1 << 20
            )
        );

        let check = RuntimeCheck {
            model: "/work/current/model.onnx".into(),
            golden: Some(GoldenCheck {
                path: "/work/current/golden.npz".into(),
                atol: 0.001,
                rtol: 0.01,
                min_agreement: 0.99,
            }),
        };
        let args = check.to_args();
        let a = parse(&args.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
        assert!(a.check);
        assert_eq!(
            a.golden.as_deref(),
            Some(std::path::Path::new("/work/current/golden.npz"))
        );
        assert_eq!((a.atol, a.rtol, a.min_agreement), (0.001, 0.01, 0.99));
    }

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
