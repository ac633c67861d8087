//! The command lines one kinfer process writes for another: the operator's runtime container
//! ([`RuntimeServe`]) and the verification Job's two checks ([`RuntimeCheck`],
//! [`WatcherCheck`]). The flag names are constants the consumers' argument parsers are declared
//! with, and each consumer has a test that parses what [`RuntimeServe::to_args`] and the others
//! produce, so a flag renamed or dropped on one side fails a test instead of a pod.

/// Flag names of `kinfer-runtime` (without the leading `--`).
pub mod runtime {
    /// Model name on the API.
    pub const MODEL_NAME: &str = "model-name";
    /// The admin socket.
    pub const ADMIN_SOCKET: &str = "admin-socket";
    /// `text` or `json`.
    pub const LOG_FORMAT: &str = "log-format";
    /// Execution provider.
    pub const EXECUTION_PROVIDER: &str = "execution-provider";
    /// Fallback when the provider is missing.
    pub const EP_FALLBACK: &str = "ep-fallback";
    /// CUDA device of the GPU providers.
    pub const CUDA_DEVICE_ID: &str = "cuda-device-id";
    /// cuDNN convolution algorithm search.
    pub const CUDNN_CONV_ALGO_SEARCH: &str = "cudnn-conv-algo-search";
    /// TensorRT fp16 engines.
    pub const TRT_FP16: &str = "trt-fp16";
    /// TensorRT engine cache directory.
    pub const TRT_ENGINE_CACHE: &str = "trt-engine-cache";
    /// Intra-op threads per session.
    pub const INTRA_OP_THREADS: &str = "intra-op-threads";
    /// CPU pinning (`auto`).
    pub const CPU_AFFINITY: &str = "cpu-affinity";
    /// The whole CPUs the pod asked for: a cpuset larger than this is the shared pool.
    pub const EXCLUSIVE_CPUS: &str = "exclusive-cpus";
    /// Inter-op threads per session.
    pub const INTER_OP_THREADS: &str = "inter-op-threads";
    /// Session instances per version.
    pub const INSTANCES: &str = "instances";
    /// Largest batch in rows.
    pub const MAX_BATCH_SIZE: &str = "max-batch-size";
    /// Longest a batch waits to fill.
    pub const MAX_QUEUE_DELAY: &str = "max-queue-delay";
    /// Requests that may wait per version.
    pub const QUEUE_CAPACITY: &str = "queue-capacity";
    /// Deadline of a request.
    pub const REQUEST_TIMEOUT: &str = "request-timeout";
    /// Request bytes all requests in flight may hold.
    pub const MAX_INFLIGHT_BYTES: &str = "max-inflight-bytes";
    /// Largest request message.
    pub const MAX_MESSAGE_BYTES: &str = "max-message-bytes";
    /// Decision policy file.
    pub const POLICY: &str = "policy";
    /// The decision log's file, `-` for stdout.
    pub const DECISION_LOG: &str = "decision-log";
    /// Fraction of requests written to the decision log.
    pub const DECISION_LOG_SAMPLE: &str = "decision-log-sample";
    /// Size at which a decision-log file is rotated.
    pub const DECISION_LOG_MAX_BYTES: &str = "decision-log-max-bytes";
    /// Recent requests kept for replay (0: none kept).
    pub const REPLAY_REQUESTS: &str = "replay-requests";
    /// Most bytes the kept requests take.
    pub const REPLAY_BYTES: &str = "replay-bytes";
    /// Fraction of live requests kept.
    pub const REPLAY_SAMPLE_RATE: &str = "replay-sample-rate";
    /// Check mode.
    pub const CHECK: &str = "check";
    /// The model file.
    pub const MODEL: &str = "model";
    /// Golden set of the check.
    pub const GOLDEN: &str = "golden";
    /// Absolute tolerance of the check.
    pub const ATOL: &str = "atol";
    /// Relative tolerance of the check.
    pub const RTOL: &str = "rtol";
    /// Decision agreement the check needs.
    pub const MIN_AGREEMENT: &str = "min-agreement";
}

/// The tracing flags every binary takes (`kinfer-runtime`, `kinfer-watcher run`,
/// `kinfer-operator`), and the environment variables they fall back to.
pub mod tracing {
    /// The collector's OTLP/gRPC endpoint; spans are exported only when it is set.
    pub const OTLP_ENDPOINT: &str = "otlp-endpoint";
    /// The share of new traces recorded.
    pub const TRACE_SAMPLE_RATIO: &str = "trace-sample-ratio";
    /// Environment fallback of [`OTLP_ENDPOINT`].
    pub const OTLP_ENDPOINT_ENV: &str = "KINFER_OTLP_ENDPOINT";
    /// Environment fallback of [`TRACE_SAMPLE_RATIO`].
    pub const TRACE_SAMPLE_RATIO_ENV: &str = "KINFER_TRACE_SAMPLE_RATIO";
    /// The share recorded when none is given: every trace (a client's `traceparent` decides
    /// for the requests that carry one).
    pub const DEFAULT_SAMPLE_RATIO: f64 = 1.0;
}

/// Flag names of `kinfer-watcher check` (without the leading `--`).
pub mod watcher {
    /// The subcommand.
    pub const CHECK: &str = "check";
    /// `s3://bucket/prefix/`.
    pub const SOURCE: &str = "source";
    /// S3 endpoint URL.
    pub const ENDPOINT: &str = "endpoint";
    /// Directory to fetch into.
    pub const DEST: &str = "dest";
    /// Directory of trusted public keys.
    pub const PUBLIC_KEY_DIR: &str = "public-key-dir";
    /// A trusted public key given inline as `NAME=PEM` (repeatable).
    pub const PUBLIC_KEY_PEM: &str = "public-key-pem";
    /// Signature bundle inside the artifact.
    pub const SIGNATURE: &str = "signature";
    /// Accept an artifact without a bundle.
    pub const ALLOW_UNSIGNED: &str = "allow-unsigned";
}

fn flag(out: &mut Vec<String>, name: &str, value: impl ToString) {
    out.push(format!("--{name}"));
    out.push(value.to_string());
}

fn optional(out: &mut Vec<String>, name: &str, value: Option<impl ToString>) {
    if let Some(v) = value {
        flag(out, name, v);
    }
}

/// Dynamic batching of the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batching {
    /// `--max-batch-size`.
    pub max_batch_size: i64,
    /// `--max-queue-delay`, a duration as written (`2ms`).
    pub max_queue_delay: String,
    /// `--queue-capacity`.
    pub queue_capacity: i64,
}

/// The replay ring of the runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// `--replay-requests`.
    pub requests: u64,
    /// `--replay-bytes`.
    pub bytes: u128,
    /// `--replay-sample-rate`.
    pub sample_rate: f64,
}

/// Options of the GPU execution providers; what is `None` or false is left to ORT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProviderFlags {
    /// `--cuda-device-id`.
    pub device_id: Option<i64>,
    /// `--cudnn-conv-algo-search` (`exhaustive`, `heuristic`, `default`).
    pub cudnn_conv_algo_search: Option<String>,
    /// `--trt-fp16` when true.
    pub trt_fp16: bool,
    /// `--trt-engine-cache DIR`.
    pub trt_engine_cache: Option<String>,
}

/// The serving runtime's command line as the operator writes it; what is `None` is left to
/// the runtime's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeServe {
    /// `--model-name`.
    pub model_name: String,
    /// `--admin-socket`.
    pub admin_socket: String,
    /// `--log-format`.
    pub log_format: String,
    /// `--execution-provider` (`cpu`, `cuda`, `tensorrt`).
    pub execution_provider: String,
    /// `--ep-fallback cpu` when true.
    pub ep_fallback_cpu: bool,
    /// The GPU providers' options.
    pub provider: ProviderFlags,
    /// `--intra-op-threads`.
    pub intra_op_threads: Option<i64>,
    /// `--cpu-affinity auto --exclusive-cpus N`: the pod's N whole CPUs, pinned.
    pub pinned_cpus: Option<i64>,
    /// `--inter-op-threads`.
    pub inter_op_threads: Option<i64>,
    /// `--instances`.
    pub instances: Option<i64>,
    /// `--max-batch-size`, `--max-queue-delay`, `--queue-capacity`.
    pub batching: Option<Batching>,
    /// `--request-timeout`, a duration as written.
    pub request_timeout: Option<String>,
    /// `--max-inflight-bytes`.
    pub max_inflight_bytes: Option<u128>,
    /// `--max-message-bytes`.
    pub max_message_bytes: Option<u128>,
    /// `--policy`, the policy file's path.
    pub policy: Option<String>,
    /// `--decision-log`, `--decision-log-sample`, `--decision-log-max-bytes`.
    pub decision_log: Option<DecisionLogFlags>,
    /// `--replay-requests`, `--replay-bytes`, `--replay-sample-rate`.
    pub replay: Option<Replay>,
    /// `--otlp-endpoint`, `--trace-sample-ratio`.
    pub tracing: Option<Tracing>,
}

/// Span export of a binary (the [`tracing`] flags).
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// `--otlp-endpoint`, `http://HOST:PORT`.
    pub endpoint: String,
    /// `--trace-sample-ratio`, between 0 and 1.
    pub sample_ratio: f64,
}

impl RuntimeServe {
    /// The arguments after the binary, in a stable order.
    pub fn to_args(&self) -> Vec<String> {
        use runtime::*;
        let mut a = Vec::new();
        flag(&mut a, MODEL_NAME, &self.model_name);
        flag(&mut a, ADMIN_SOCKET, &self.admin_socket);
        flag(&mut a, LOG_FORMAT, &self.log_format);
        flag(&mut a, EXECUTION_PROVIDER, &self.execution_provider);
        if self.ep_fallback_cpu {
            flag(&mut a, EP_FALLBACK, "cpu");
        }
        let p = &self.provider;
        optional(&mut a, CUDA_DEVICE_ID, p.device_id);
        optional(
            &mut a,
            CUDNN_CONV_ALGO_SEARCH,
            p.cudnn_conv_algo_search.as_ref(),
        );
        if p.trt_fp16 {
            a.push(format!("--{TRT_FP16}"));
        }
        optional(&mut a, TRT_ENGINE_CACHE, p.trt_engine_cache.as_ref());
        optional(&mut a, INTRA_OP_THREADS, self.intra_op_threads);
        if let Some(n) = self.pinned_cpus {
            flag(&mut a, CPU_AFFINITY, "auto");
            flag(&mut a, EXCLUSIVE_CPUS, n);
        }
        optional(&mut a, INTER_OP_THREADS, self.inter_op_threads);
        optional(&mut a, INSTANCES, self.instances);
        if let Some(b) = &self.batching {
            flag(&mut a, MAX_BATCH_SIZE, b.max_batch_size);
            flag(&mut a, MAX_QUEUE_DELAY, &b.max_queue_delay);
            flag(&mut a, QUEUE_CAPACITY, b.queue_capacity);
        }
        optional(&mut a, REQUEST_TIMEOUT, self.request_timeout.as_ref());
        optional(&mut a, MAX_INFLIGHT_BYTES, self.max_inflight_bytes);
        optional(&mut a, MAX_MESSAGE_BYTES, self.max_message_bytes);
        optional(&mut a, POLICY, self.policy.as_ref());
        if let Some(d) = &self.decision_log {
            flag(&mut a, DECISION_LOG, &d.target);
            flag(&mut a, DECISION_LOG_SAMPLE, d.sample_rate);
            optional(&mut a, DECISION_LOG_MAX_BYTES, d.max_bytes);
        }
        if let Some(r) = &self.replay {
            flag(&mut a, REPLAY_REQUESTS, r.requests);
            flag(&mut a, REPLAY_BYTES, r.bytes);
            flag(&mut a, REPLAY_SAMPLE_RATE, r.sample_rate);
        }
        if let Some(t) = &self.tracing {
            flag(&mut a, tracing::OTLP_ENDPOINT, &t.endpoint);
            flag(&mut a, tracing::TRACE_SAMPLE_RATIO, t.sample_ratio);
        }
        a
    }
}

/// The decision-log part of [`RuntimeServe`].
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionLogFlags {
    /// `--decision-log`: a file, or `-` for stdout.
    pub target: String,
    /// `--decision-log-sample`, between 0 and 1.
    pub sample_rate: f64,
    /// `--decision-log-max-bytes` (a file's rotation size); the runtime's default when absent.
    pub max_bytes: Option<u64>,
}

/// The golden-set part of [`RuntimeCheck`].
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenCheck {
    /// `--golden`, the `.npz` path.
    pub path: String,
    /// `--atol`.
    pub atol: f64,
    /// `--rtol`.
    pub rtol: f64,
    /// `--min-agreement`.
    pub min_agreement: f64,
}

/// `kinfer-runtime --check` as the verification Job runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeCheck {
    /// `--model`.
    pub model: String,
    /// The golden set, when the ModelVersion has one.
    pub golden: Option<GoldenCheck>,
}

impl RuntimeCheck {
    /// The arguments after the binary.
    pub fn to_args(&self) -> Vec<String> {
        use runtime::*;
        let mut a = vec![format!("--{CHECK}")];
        flag(&mut a, MODEL, &self.model);
        if let Some(g) = &self.golden {
            flag(&mut a, GOLDEN, &g.path);
            flag(&mut a, ATOL, g.atol);
            flag(&mut a, RTOL, g.rtol);
            flag(&mut a, MIN_AGREEMENT, g.min_agreement);
        }
        a
    }
}

/// `kinfer-watcher check` as the verification Job runs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatcherCheck {
    /// `--source`.
    pub source: String,
    /// `--endpoint`.
    pub endpoint: Option<String>,
    /// `--dest`.
    pub dest: String,
    /// `--public-key-dir`.
    pub public_key_dir: String,
    /// `--public-key-pem NAME=PEM` for each (name, PEM): keys a trust policy chose, given on the
    /// command line so that nothing a namespace user can edit stands between the policy and the
    /// check.
    pub public_keys_pem: Vec<(String, String)>,
    /// `--signature`, the bundle's name inside the artifact.
    pub signature: String,
    /// `--allow-unsigned` when true.
    pub allow_unsigned: bool,
}

impl WatcherCheck {
    /// The arguments after the binary, the subcommand first.
    pub fn to_args(&self) -> Vec<String> {
        use watcher::*;
        let mut a = vec![CHECK.to_owned()];
        flag(&mut a, SOURCE, &self.source);
        optional(&mut a, ENDPOINT, self.endpoint.as_ref());
        flag(&mut a, DEST, &self.dest);
        flag(&mut a, PUBLIC_KEY_DIR, &self.public_key_dir);
        for (name, pem) in &self.public_keys_pem {
            flag(&mut a, PUBLIC_KEY_PEM, format!("{name}={pem}"));
        }
        flag(&mut a, SIGNATURE, &self.signature);
        if self.allow_unsigned {
            a.push(format!("--{ALLOW_UNSIGNED}"));
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_flags_are_left_out_and_set_ones_keep_their_order() {
        let base = RuntimeServe {
            model_name: "fraud".into(),
            admin_socket: "/run/kinfer/admin.sock".into(),
            log_format: "json".into(),
            execution_provider: "cpu".into(),
            ..Default::default()
        };
        assert_eq!(
            base.to_args().join(" "),
            "--model-name fraud --admin-socket /run/kinfer/admin.sock --log-format json --execution-provider cpu"
        );
        let full = RuntimeServe {
            intra_op_threads: Some(4),
            pinned_cpus: Some(4),
            max_inflight_bytes: Some(1 << 28),
            max_message_bytes: Some(1 << 26),
            policy: Some("/p.yaml".into()),
            ..base.clone()
        };
        let s = full.to_args().join(" ");
        assert!(
            s.contains("--intra-op-threads 4 --cpu-affinity auto --exclusive-cpus 4"),
            "{s}"
        );
        assert!(
            s.ends_with(
                "--max-inflight-bytes 268435456 --max-message-bytes 67108864 --policy /p.yaml"
            ),
            "{s}"
        );
        let gpu = RuntimeServe {
            execution_provider: "tensorrt".into(),
            provider: ProviderFlags {
                device_id: Some(1),
                cudnn_conv_algo_search: Some("heuristic".into()),
                trt_fp16: true,
                trt_engine_cache: Some("/var/cache/kinfer/tensorrt".into()),
            },
            ..base
        };
        assert!(
            gpu.to_args().join(" ").ends_with(
                "--execution-provider tensorrt --cuda-device-id 1 --cudnn-conv-algo-search heuristic --trt-fp16 --trt-engine-cache /var/cache/kinfer/tensorrt"
            ),
            "{:?}",
            gpu.to_args()
        );
        let check = WatcherCheck {
            source: "s3://b/p/".into(),
            dest: "/work".into(),
            public_key_dir: "/keys".into(),
            signature: "model.sig".into(),
            allow_unsigned: true,
            ..Default::default()
        };
        assert_eq!(
            check.to_args().join(" "),
            "check --source s3://b/p/ --dest /work --public-key-dir /keys --signature model.sig --allow-unsigned"
        );
    }
}
