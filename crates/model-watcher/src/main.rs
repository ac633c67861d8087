//! `kinfer-watcher`: the model-watcher sidecar binary.
//!
//! - `run`: in a pod (`KINFER_POD_NAME` set), follow the pod's target version and bring each one
//!   in safely; standalone (`--source s3://… --version NAME`), do the same for one version
//!   against a runtime's admin socket and exit with the verdict (`kinfer_contract::exit`: 0
//!   passed, 2 rolled back, 3 refused, 4 regressed and kept because autoRollback is off, 1 error).
//! - `check`: fetch and verify one artifact for the ModelVersion verification Job.
//! - `verify`: check a downloaded artifact offline (docs/signing.md).
//! - `fetch`: download a version's artifact atomically into a content-addressed directory.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args as ClapArgs, Parser, Subcommand};
use kinfer_api::{
    duration::Duration as ApiDuration,
    inference_service::{
        AnalysisSpec, BaselineSpec, DriftMetric, DriftSpec, ReplaySpec, RolloutSpec, ShadowSpec,
    },
    model_version::{ModelSource, ModelVersionSpec, SignaturePolicy, Validation},
    report::{AnalysisReport, Verdict, reasons},
};
use kinfer_contract::{
    check::VerifyResult,
    flags::watcher as flags,
    pod::env,
    telemetry::{self, Logging, TracingArgs},
};
use kinfer_watcher::{
    admin::AdminClient,
    cluster::{self, Identity},
    fetch,
    report::Reporter,
    rollout::{Plan, Settings, Watcher, verify_artifact},
    signature::TrustedKey,
};

/// The kinfer model-watcher.
#[derive(Parser, Debug)]
#[command(name = "kinfer-watcher", version, about)]
struct Args {
    /// Log format.
    #[arg(long, env = env::LOG_FORMAT, default_value = "text", value_parser = ["text", "json"], global = true)]
    log_format: String,
    /// Span export of `run` (one trace per version brought in).
    #[command(flatten)]
    tracing: TracingArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where an artifact comes from and how it is checked (flags of `run` standalone and `check`).
#[derive(ClapArgs, Debug, Clone)]
struct SourceArgs {
    /// `s3://bucket/prefix/` holding model.onnx, the signature bundle and the golden set.
    #[arg(long = flags::SOURCE, env = "KINFER_SOURCE")]
    source: Option<String>,
    /// S3-compatible endpoint URL (path-style addressing); AWS when empty.
    #[arg(long = flags::ENDPOINT, env = "KINFER_S3_ENDPOINT")]
    endpoint: Option<String>,
    /// Region for request signing.
    #[arg(long, env = "KINFER_S3_REGION", default_value = "us-east-1")]
    region: String,
    /// A file with `AWS_ACCESS_KEY_ID=…` and `AWS_SECRET_ACCESS_KEY=…` lines; else the default
    /// AWS chain (environment, profile, web identity, instance metadata).
    #[arg(long, env = "KINFER_S3_CREDENTIALS_FILE")]
    credentials_file: Option<PathBuf>,
    /// Trusted public key (SubjectPublicKeyInfo PEM, P-256 or P-384); repeatable.
    #[arg(long = "public-key", value_delimiter = ',')]
    public_keys: Vec<PathBuf>,
    /// A trusted public key given inline, `NAME=PEM` (the verification Job gets a trust policy's
    /// keys this way); repeatable.
    #[arg(long = flags::PUBLIC_KEY_PEM)]
    public_key_pems: Vec<String>,
    /// A directory whose `*.pem` files (and other files holding a PEM public key) are trusted
    /// keys (a mounted ConfigMap or Secret).
    #[arg(long = flags::PUBLIC_KEY_DIR, env = "KINFER_PUBLIC_KEY_DIR")]
    public_key_dir: Option<PathBuf>,
    /// Signature bundle inside the artifact.
    #[arg(long = flags::SIGNATURE, default_value = "model.sig")]
    signature: String,
    /// Accept an artifact without a signature bundle (a present but bad one is still refused).
    #[arg(long = flags::ALLOW_UNSIGNED)]
    allow_unsigned: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Follow this pod's target version (in a cluster) or bring in one version (standalone).
    Run(Box<RunArgs>),
    /// Fetch and verify one artifact into DEST/current (the ModelVersion verification Job).
    /// Prints one JSON object (also written to --termination-log); exit 0 when it holds, 3 when
    /// the artifact is refused (signature, digests, arguments: retrying cannot help), 1 when it
    /// could not be fetched (worth a retry).
    #[command(name = flags::CHECK)]
    Check {
        #[command(flatten)]
        source: SourceArgs,
        /// Directory to fetch into; `DEST/current` links to the verified artifact.
        #[arg(long = flags::DEST, default_value = "/work")]
        dest: PathBuf,
        /// Where the JSON result also goes (Kubernetes reads it as the termination message).
        #[arg(long, default_value = "/dev/termination-log")]
        termination_log: PathBuf,
        /// Give up fetching after this long.
        #[arg(long, default_value = "120s")]
        fetch_timeout: String,
    },
    /// Judge recorded runtime stats after the fact, with both judges: prints
    /// `{"paired": {...}, "beforeAfter": {...}}` (outcome Wait, Pass, Fail or Inconclusive).
    Judge {
        /// `GET /admin/stats` JSON taken just before the swap.
        #[arg(long)]
        before: PathBuf,
        /// `GET /admin/stats` JSON now.
        #[arg(long)]
        now: PathBuf,
        /// The version under analysis.
        #[arg(long)]
        version: String,
        /// The version that served before it.
        #[arg(long)]
        previous: String,
        /// Seconds since the promotion.
        #[arg(long)]
        elapsed: f64,
        /// The InferenceService's `rollout.analysis` as JSON (`{}`: the defaults).
        #[arg(long, default_value = "{}")]
        analysis: String,
        /// See `run --p99-noise-floor`.
        #[arg(long, default_value = "250us")]
        p99_noise_floor: String,
    },
    /// Download a version's artifact from S3 into DEST/sha256-<digest>/ (atomic, cached by digest).
    Fetch {
        #[command(flatten)]
        source: SourceArgs,
        /// Directory on the shared volume that holds fetched artifacts.
        #[arg(long, env = env::MODELS_DIR, default_value = "/models")]
        dest: PathBuf,
    },
    /// Verify a model directory offline against its model-signing bundle.
    ///
    /// Exit 0 and print the signer key fingerprint and the manifest digest when the signature
    /// and every file digest hold; exit 1 with the reason otherwise.
    Verify {
        /// The model directory.
        #[arg(long, env = "KINFER_MODEL_DIR")]
        dir: PathBuf,
        /// The signature bundle; default DIR/model.sig. A relative path that does not exist
        /// from the working directory is looked up inside DIR.
        #[arg(long, env = "KINFER_SIGNATURE")]
        signature: Option<PathBuf>,
        /// A trusted public key (SubjectPublicKeyInfo PEM, P-256 or P-384); repeatable.
        #[arg(
            long = "public-key",
            env = "KINFER_PUBLIC_KEYS",
            value_delimiter = ',',
            required = true
        )]
        public_keys: Vec<PathBuf>,
    },
}

#[derive(ClapArgs, Debug)]
struct RunArgs {
    /// The runtime's admin socket.
    #[arg(
        long,
        env = env::ADMIN_SOCKET,
        default_value = "/run/kinfer/admin.sock"
    )]
    admin_socket: PathBuf,
    /// Shared volume for artifacts.
    #[arg(long, env = env::MODELS_DIR, default_value = "/models")]
    models_dir: PathBuf,
    /// This pod (downward API); set = cluster mode.
    #[arg(long, env = env::POD_NAME)]
    pod_name: Option<String>,
    /// This pod's namespace (downward API).
    #[arg(long, env = env::POD_NAMESPACE, default_value = "default")]
    namespace: String,
    /// The InferenceService this pod belongs to.
    #[arg(long, env = env::INFERENCE_SERVICE)]
    inference_service: Option<String>,
    /// Standalone: the version label to stage (the ModelVersion name in a cluster).
    #[arg(long, env = "KINFER_VERSION")]
    version: Option<String>,
    #[command(flatten)]
    source: SourceArgs,
    /// Golden set inside the artifact (.npz); no numerical gate when empty.
    #[arg(long)]
    golden: Option<String>,
    /// Golden-set absolute tolerance.
    #[arg(long, default_value_t = 1e-5)]
    atol: f64,
    /// Golden-set relative tolerance.
    #[arg(long, default_value_t = 1e-4)]
    rtol: f64,
    /// Fraction of golden samples (and shadowed requests) whose decision must match.
    #[arg(long, default_value_t = 1.0)]
    min_agreement: f64,
    /// Shadow: fraction of live traffic mirrored to the staged version (0 = no shadow).
    #[arg(long, default_value_t = 0.0)]
    shadow_sample_rate: f64,
    /// Shadow duration.
    #[arg(long, default_value = "30s")]
    shadow_duration: String,
    /// Shortest analysis after promotion (no pass before it is over).
    #[arg(long, default_value = "30s")]
    window: String,
    /// Longest analysis: without evidence either way by then the verdict is Inconclusive.
    #[arg(long, default_value = "2m")]
    max_window: String,
    /// Confidence of every verdict.
    #[arg(long, default_value_t = 0.95)]
    confidence: f64,
    /// Fraction of live requests the previous version answers during the analysis (the paired
    /// baseline, up to 0.5); 0 compares with its figures from before the swap.
    #[arg(long, default_value_t = 0.5)]
    baseline_fraction: f64,
    /// Fraction of live requests run on both versions and compared.
    #[arg(long, default_value_t = 0.1)]
    pair_rate: f64,
    /// With a paired baseline: when live traffic gives no verdict by the end of the window,
    /// replay up to this many recent requests the runtime kept (its --replay-requests) on both
    /// versions; 0 never replays.
    #[arg(long, default_value_t = 0)]
    replay_requests: u64,
    /// Replayed requests per second on each version.
    #[arg(long, default_value_t = 100.0)]
    replay_rate: f64,
    /// Largest typical-latency ratio new / baseline.
    #[arg(long, default_value_t = 1.15)]
    max_latency_ratio: f64,
    /// Requests needed before any verdict.
    #[arg(long, default_value_t = 100)]
    min_requests: i64,
    /// Largest p99 ratio new / previous.
    #[arg(long, default_value_t = 1.5)]
    max_p99_ratio: f64,
    /// Absolute p99 budget, e.g. `20ms`.
    #[arg(long)]
    max_p99: Option<String>,
    /// Largest error rate.
    #[arg(long, default_value_t = 0.01)]
    max_error_rate: f64,
    /// Largest PSI of the output distribution against the previous version (no drift check when empty).
    #[arg(long)]
    max_drift: Option<f64>,
    /// With --max-drift and a paired baseline: the largest fraction of requests run on both
    /// versions whose decisions differ.
    #[arg(long, default_value_t = 0.05)]
    max_disagreement: f64,
    /// Report a regression but keep the version.
    #[arg(long)]
    no_auto_rollback: bool,
    /// The last report of an earlier run that was killed (the JSON a pod keeps in its
    /// `kinfer.dev/analysis` annotation): an analysis it left unfinished is judged again.
    #[arg(long)]
    last_report: Option<String>,
    /// A p99 increase smaller than this never counts as a regression.
    #[arg(long, env = "KINFER_P99_NOISE_FLOOR", default_value = "250us")]
    p99_noise_floor: String,
    /// Standalone: serve only an artifact whose manifest digest is this (`sha256:<hex>`, what
    /// `check` prints), as a cluster pod serves only the digest its verification Job recorded;
    /// any other bytes are refused with `ArtifactChanged`.
    #[arg(long)]
    expect_digest: Option<String>,
    /// Standalone: give up fetching after this long.
    #[arg(long, default_value = "300s")]
    fetch_timeout: String,
    /// Refuse, before downloading, an artifact larger than this many bytes (all files).
    #[arg(long, env = env::MAX_ARTIFACT_BYTES)]
    max_artifact_bytes: Option<u64>,
    /// Serve the watcher's Prometheus metrics on this port (all addresses), at /metrics; none
    /// when unset.
    #[arg(long, env = env::METRICS_PORT)]
    metrics_port: Option<u16>,
}

fn dur(flag: &str, v: &str) -> anyhow::Result<Duration> {
    kinfer_api::duration::parse(v).map_err(|e| anyhow::anyhow!("--{flag} {v:?}: {e}"))
}

fn api_dur(flag: &str, v: &str) -> anyhow::Result<ApiDuration> {
    v.parse()
        .map_err(|e| anyhow::anyhow!("--{flag} {v:?}: {e}"))
}

fn read_credentials(path: &std::path::Path) -> anyhow::Result<(String, String)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--credentials-file {}: {e}", path.display()))?;
    let get = |k: &str| {
        text.lines()
            .filter_map(|l| l.trim().trim_start_matches("export ").split_once('='))
            .find(|(key, _)| key.trim() == k)
            .map(|(_, v)| v.trim().trim_matches('"').to_owned())
            .ok_or_else(|| anyhow::anyhow!("--credentials-file {}: no {k}= line", path.display()))
    };
    Ok((get("AWS_ACCESS_KEY_ID")?, get("AWS_SECRET_ACCESS_KEY")?))
}

impl SourceArgs {
    fn keys(&self) -> anyhow::Result<Vec<TrustedKey>> {
        let mut keys = Vec::new();
        for p in &self.public_keys {
            keys.push(TrustedKey::from_file(p)?);
        }
        for inline in &self.public_key_pems {
            let Some((name, pem)) = inline.split_once('=') else {
                anyhow::bail!("--public-key-pem takes NAME=PEM, got no '=' in {inline:.40}");
            };
            keys.push(TrustedKey::from_pem(pem, Path::new(name))?);
        }
        if let Some(dir) = &self.public_key_dir {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| anyhow::anyhow!("--public-key-dir {}: {e}", dir.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for p in files {
                if std::fs::read_to_string(&p)
                    .is_ok_and(|t| t.contains("-----BEGIN PUBLIC KEY-----"))
                {
                    keys.push(TrustedKey::from_file(&p)?);
                }
            }
        }
        Ok(keys)
    }

    fn plan(
        &self,
        name: &str,
        validation: Option<Validation>,
        rollout: RolloutSpec,
    ) -> anyhow::Result<Plan> {
        let Some(uri) = &self.source else {
            anyhow::bail!(
                "--source s3://bucket/prefix/ is required outside a cluster (or set KINFER_POD_NAME)"
            );
        };
        let keys = self.keys()?;
        if keys.is_empty() && !self.allow_unsigned {
            anyhow::bail!(
                "no trusted key: give --public-key KEY.pem or --public-key-dir DIR (or --allow-unsigned)"
            );
        }
        Ok(Plan {
            name: name.to_owned(),
            spec: ModelVersionSpec {
                model: name.to_owned(),
                version: name.to_owned(),
                source: ModelSource {
                    uri: uri.clone(),
                    endpoint: self.endpoint.clone(),
                    region: Some(self.region.clone()),
                    force_path_style: None,
                    credentials_secret: None,
                },
                signature: SignaturePolicy {
                    required: !self.allow_unsigned,
                    bundle: self.signature.clone(),
                    trusted_keys: None,
                },
                validation,
            },
            digest: None,
            credentials: self
                .credentials_file
                .as_deref()
                .map(read_credentials)
                .transpose()?,
            keys,
            rollout,
        })
    }
}

/// Runs `verify`: prints the result and returns the exit code.
fn verify(dir: PathBuf, signature: Option<PathBuf>, public_keys: Vec<PathBuf>) -> i32 {
    use kinfer_watcher::signature::{DEFAULT_SIGNATURE_FILE, verify_dir};
    let signature = match signature {
        None => dir.join(DEFAULT_SIGNATURE_FILE),
        Some(p) if p.is_relative() && !p.exists() && dir.join(&p).exists() => dir.join(p),
        Some(p) => p,
    };
    let result = public_keys
        .iter()
        .map(|p| TrustedKey::from_file(p))
        .collect::<Result<Vec<_>, _>>()
        .and_then(|keys| verify_dir(&dir, &signature, &keys));
    match result {
        Ok(v) => {
            println!("verified: {}", dir.display());
            println!("model: {}", v.manifest.model_name);
            println!("files: {}", v.manifest.resources.len());
            println!("signer: sha256:{} ({})", v.key_fingerprint, v.key_curve);
            println!("manifest: sha256:{}", v.manifest.digest);
            0
        }
        Err(e) => {
            eprintln!(
                "kinfer-watcher: verification of {} failed: {}: {e}",
                dir.display(),
                e.reason()
            );
            1
        }
    }
}

/// Runs `check`: fetch, verify, link DEST/current, print and record the JSON result.
async fn check(
    source: SourceArgs,
    dest: PathBuf,
    termination_log: PathBuf,
    fetch_timeout: String,
) -> i32 {
    let result = async {
        let plan = source
            .plan("check", None, RolloutSpec::default())
            .map_err(|e| ("InvalidArguments", e.to_string()))?;
        let uri: fetch::S3Uri = plan
            .spec
            .source
            .uri
            .parse()
            .map_err(|e: fetch::FetchError| (reasons::FETCH_FAILED, e.to_string()))?;
        let client = fetch::client(
            plan.spec.source.endpoint.as_deref(),
            &source.region,
            plan.credentials
                .as_ref()
                .map(|(a, s)| (a.as_str(), s.as_str())),
        )
        .await;
        let deadline = dur("fetch-timeout", &fetch_timeout)
            .map_err(|e| ("InvalidArguments", e.to_string()))?;
        let fetched = tokio::time::timeout(
            deadline,
            fetch::fetch(&client, &uri, &dest, fetch::Retry::default()),
        )
        .await
        .map_err(|_| {
            (
                reasons::FETCH_FAILED,
                format!(
                    "{} not fetched within {fetch_timeout}",
                    plan.spec.source.uri
                ),
            )
        })?
        .map_err(|e| (reasons::FETCH_FAILED, e.to_string()))?;
        let signer = verify_artifact(&plan, &fetched.dir)?;
        let link = dest.join("current");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&fetched.dir, &link)
            .map_err(|e| (reasons::FETCH_FAILED, format!("{}: {e}", link.display())))?;
        Ok::<_, (&str, String)>((fetched, signer))
    }
    .await;
    let out = match &result {
        Ok((f, signer)) => VerifyResult {
            ok: true,
            digest: Some(f.digest.clone()),
            signer: signer.clone(),
            signed: signer.is_some(),
            reason: Some(
                if signer.is_some() {
                    "SignatureVerified"
                } else {
                    "Unsigned"
                }
                .into(),
            ),
            message: Some(format!(
                "{} bytes, {}",
                f.bytes,
                if signer.is_some() {
                    "signature and every file digest hold"
                } else {
                    "no signature bundle (allowed)"
                }
            )),
            retryable: false,
        },
        Err((reason, message)) => VerifyResult {
            ok: false,
            reason: Some((*reason).to_owned()),
            message: Some(message.clone()),
            // Only a fetch may succeed on a retry; a refusal is a property of the artifact.
            retryable: *reason == reasons::FETCH_FAILED,
            ..Default::default()
        },
    };
    let line = serde_json::to_string(&out).unwrap_or_default();
    println!("{line}");
    if let Err(e) = std::fs::write(&termination_log, &line)
        && termination_log != std::path::Path::new("/dev/termination-log")
    {
        eprintln!(
            "kinfer-watcher: cannot write {}: {e}",
            termination_log.display()
        );
    }
    out.exit_code()
}

async fn run(a: RunArgs) -> anyhow::Result<i32> {
    let settings = Settings {
        p99_noise_floor: dur("p99-noise-floor", &a.p99_noise_floor)?,
        fetch_deadline: if a.pod_name.is_some() {
            None
        } else {
            Some(dur("fetch-timeout", &a.fetch_timeout)?)
        },
        max_artifact_bytes: a.max_artifact_bytes,
        ..Settings::default()
    };
    let watcher = Watcher::new(
        AdminClient::new(&a.admin_socket),
        a.models_dir.clone(),
        Reporter::Stdout,
        settings,
    );
    if let Some(port) = a.metrics_port {
        let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (--metrics-port): {e}"))?;
        tokio::spawn(kinfer_watcher::metrics::serve(
            listener,
            watcher.metrics.clone(),
        ));
    }
    if let Some(pod) = a.pod_name.clone() {
        let Some(service) = a.inference_service.clone() else {
            anyhow::bail!("KINFER_INFERENCE_SERVICE (--inference-service) is required in a pod");
        };
        let client = kube::Client::try_default().await?;
        let id = Identity {
            namespace: a.namespace.clone(),
            pod,
            service,
        };
        tracing::info!(pod = %id.pod, namespace = %id.namespace, service = %id.service, "kinfer-watcher following its pod");
        cluster::run(client, id, watcher).await?;
        return Ok(0);
    }
    let Some(version) = a.version.clone() else {
        anyhow::bail!(
            "standalone run needs --version NAME and --source s3://… (in a pod, set KINFER_POD_NAME)"
        );
    };
    let validation = a.golden.clone().map(|g| Validation {
        golden_set: g,
        atol: a.atol,
        rtol: a.rtol,
        min_agreement: a.min_agreement,
    });
    anyhow::ensure!(
        (0.0..=0.5).contains(&a.baseline_fraction),
        "--baseline-fraction {} must be between 0 and 0.5 (0 compares with the figures from before the swap)",
        a.baseline_fraction
    );
    anyhow::ensure!(
        a.replay_rate > 0.0 && a.replay_rate <= kinfer_contract::admin::MAX_REPLAY_RATE,
        "--replay-rate {} must be above 0 and at most {} requests per second",
        a.replay_rate,
        kinfer_contract::admin::MAX_REPLAY_RATE
    );
    anyhow::ensure!(
        (0.5..1.0).contains(&a.confidence),
        "--confidence {} must be at least 0.5 and below 1",
        a.confidence
    );
    let rollout = RolloutSpec {
        canary: Default::default(),
        analysis: AnalysisSpec {
            window: api_dur("window", &a.window)?,
            max_window: api_dur("max-window", &a.max_window)?,
            min_requests: a.min_requests,
            confidence: a.confidence,
            max_latency_ratio: a.max_latency_ratio,
            max_p99_ratio: a.max_p99_ratio,
            max_p99: a
                .max_p99
                .as_deref()
                .map(|v| api_dur("max-p99", v))
                .transpose()?,
            max_error_rate: a.max_error_rate,
            drift: a.max_drift.map(|m| DriftSpec {
                metric: DriftMetric::Psi,
                max_score: m,
                max_disagreement: a.max_disagreement,
            }),
            baseline: BaselineSpec {
                fraction: a.baseline_fraction,
                pair_rate: a.pair_rate,
            },
            replay: (a.replay_requests > 0).then(|| ReplaySpec {
                max_requests: i64::try_from(a.replay_requests).unwrap_or(i64::MAX),
                rate: a.replay_rate,
                ..Default::default()
            }),
        },
        shadow: (a.shadow_sample_rate > 0.0)
            .then(|| -> anyhow::Result<ShadowSpec> {
                Ok(ShadowSpec {
                    sample_rate: a.shadow_sample_rate,
                    duration: api_dur("shadow-duration", &a.shadow_duration)?,
                    min_agreement: a.min_agreement,
                })
            })
            .transpose()?,
        auto_rollback: !a.no_auto_rollback,
    };
    let mut plan = a.source.plan(&version, validation, rollout)?;
    plan.digest = a.expect_digest.clone();
    let mut watcher = watcher;
    if let Some(last) = &a.last_report {
        let Some(report) = AnalysisReport::from_annotation(Some(last)) else {
            anyhow::bail!(
                "--last-report is not an analysis report (the JSON of kinfer.dev/analysis)"
            );
        };
        watcher.resume_from(report);
    }
    // Where the runtime's inference threads run (`{"cpuPinning": …}`), when it is pinned; a
    // runtime not reachable yet is the apply's to report.
    if watcher.sync().await.is_ok()
        && let Some(p) = watcher.cpu_pinning().cloned()
    {
        watcher.reporter.cpu_pinning(&p).await;
    }
    let report = watcher.apply(&plan).await;
    use kinfer_contract::exit;
    Ok(match report.verdict {
        Some(Verdict::Passed) => exit::OK,
        Some(Verdict::RolledBack) => exit::ROLLED_BACK,
        Some(Verdict::Refused) => exit::REFUSED,
        Some(Verdict::Regressed) => exit::REGRESSED,
        Some(Verdict::Inconclusive) => exit::INCONCLUSIVE,
        None => exit::RETRY,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Both rustls backends are linked (kube: ring, the AWS SDK: aws-lc-rs), so rustls cannot
    // pick a process default by itself; kube's client needs one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Only `run` brings versions in; the one-shot commands have nothing worth a trace.
    let export = matches!(args.command, Command::Run(_)).then(|| {
        args.tracing
            .export("kinfer-watcher")
            .map(|e| e.in_pod(env::POD_NAME, env::POD_NAMESPACE))
    });
    let telemetry = telemetry::init(
        Logging {
            json: args.log_format == "json",
            default_filter: "info",
            // stdout carries the standalone reports.
            stderr: true,
            flatten: false,
        },
        export.flatten(),
    )?;
    match args.command {
        Command::Verify {
            dir,
            signature,
            public_keys,
        } => std::process::exit(verify(dir, signature, public_keys)),
        Command::Check {
            source,
            dest,
            termination_log,
            fetch_timeout,
        } => std::process::exit(check(source, dest, termination_log, fetch_timeout).await),
        Command::Run(a) => {
            let code = run(*a).await;
            telemetry.shutdown();
            std::process::exit(code?)
        }
        Command::Judge {
            before,
            now,
            version,
            previous,
            elapsed,
            analysis,
            p99_noise_floor,
        } => {
            let answers = kinfer_watcher::paired::offline::judge_files(
                &analysis,
                dur("p99-noise-floor", &p99_noise_floor)?,
                &before,
                &now,
                &version,
                &previous,
                std::time::Duration::from_secs_f64(elapsed.max(0.0)),
            )?;
            println!("{}", serde_json::to_string(&answers)?);
        }
        Command::Fetch { source, dest } => {
            let Some(src) = &source.source else {
                anyhow::bail!("--source s3://bucket/prefix/ is required")
            };
            let uri: fetch::S3Uri = src.parse()?;
            let creds = source
                .credentials_file
                .as_deref()
                .map(read_credentials)
                .transpose()?;
            let client = fetch::client(
                source.endpoint.as_deref(),
                &source.region,
                creds.as_ref().map(|(a, s)| (a.as_str(), s.as_str())),
            )
            .await;
            let f = fetch::fetch(&client, &uri, &dest, Default::default()).await?;
            println!(
                "{}\t{}\t{} bytes{}",
                f.digest,
                f.dir.display(),
                f.bytes,
                if f.cached { " (cached)" } else { "" }
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use kinfer_contract::flags::WatcherCheck;

    use super::{Args, Command};

    /// The verification Job's command line as the operator writes it parses here.
    #[test]
    fn parses_the_check_command_line_the_operator_writes() {
        let check = WatcherCheck {
            source: "s3://models/fraud/v2/".into(),
            endpoint: Some("http://s3:8333".into()),
            dest: "/work".into(),
            public_key_dir: "/etc/kinfer/keys".into(),
            public_keys_pem: vec![(
                "release".into(),
                "-----BEGIN PUBLIC KEY-----\nAA==\n".into(),
            )],
            signature: "bundle.sig".into(),
            allow_unsigned: true,
        };
        let args = Args::try_parse_from(
            std::iter::once("kinfer-watcher".to_owned()).chain(check.to_args()),
        )
        .unwrap();
        let Command::Check { source, dest, .. } = args.command else {
            panic!("not the check command");
        };
        assert_eq!(source.source.as_deref(), Some("s3://models/fraud/v2/"));
        assert_eq!(source.endpoint.as_deref(), Some("http://s3:8333"));
        assert_eq!(
            source.public_key_dir.as_deref(),
            Some(std::path::Path::new("/etc/kinfer/keys"))
        );
        assert_eq!(
            source.public_key_pems,
            ["release=-----BEGIN PUBLIC KEY-----\nAA==\n"]
        );
        assert_eq!(source.signature, "bundle.sig");
        assert!(source.allow_unsigned);
        assert_eq!(dest, std::path::Path::new("/work"));
    }
}
