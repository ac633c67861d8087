//! `kinfer-runtime`: serves one ONNX model over OIP v2 HTTP and gRPC, with metrics and the
//! admin socket. Standalone: `kinfer-runtime --model model.onnx`.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt,
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use anyhow::{Context, bail};
use clap::Parser;
use kinfer_contract::{
    check::ValidateResult,
    pod, reasons,
    telemetry::{self, Logging},
};
use kinfer_runtime::{
    admin::{self, Admin},
    batching::BatchOptions,
    config::{Args, allowed_cpus},
    metrics,
    models::{
        registry::Registry,
        session::{GpuOptions, SessionOptions, init_ort},
        version::{LoadOptions, LoadedVersion},
    },
    pinning,
    protocol::{
        grpc::GrpcService,
        http,
        metered::MeterLayer,
        panic::{CatchPanicLayer, grpc_panic_response},
    },
    server::{Limits, Server, budget::Budget},
};
use tokio::net::{TcpListener, UnixListener};

/// `--check`: loads the model and runs the golden set; prints and records one
/// [`ValidateResult`]. Returns its exit code (0 passed, 3 refused).
async fn check(args: &Args, name: &str, options: &LoadOptions) -> i32 {
    let refused = |reason: &str, message: String| ValidateResult {
        ok: false,
        reason: Some(reason.to_owned()),
        message: Some(message),
        ..Default::default()
    };
    let result = match &args.model {
        None => refused(reasons::LOAD_FAILED, "--check needs --model".into()),
        Some(model) => match LoadedVersion::load(name, &args.model_version, model, None, options) {
            Err(e) => refused(reasons::LOAD_FAILED, format!("{}: {e}", model.display())),
            Ok(v) => match &args.golden {
                None => ValidateResult {
                    ok: true,
                    message: Some(format!(
                        "{} loads; no golden set configured",
                        model.display()
                    )),
                    ..Default::default()
                },
                Some(g) => match kinfer_runtime::golden::GoldenSet::read(g) {
                    Err(e) => refused(reasons::GOLDEN_SET_INVALID, e),
                    Ok(set) => {
                        match kinfer_runtime::golden::evaluate(&v, &set, args.atol, args.rtol).await
                        {
                            Err(e) => refused(reasons::NUMERICAL_MISMATCH, e),
                            Ok(r) => {
                                let ok = r.within_tolerance && r.agreement >= args.min_agreement;
                                ValidateResult {
                                    ok,
                                    reason: Some(
                                        if ok {
                                            "GoldenSetMatched"
                                        } else {
                                            reasons::NUMERICAL_MISMATCH
                                        }
                                        .into(),
                                    ),
                                    message: Some(format!(
                                        "{} samples: max abs error {:.3e}, max rel error {:.3e}, agreement {:.4} (atol {}, rtol {}, minAgreement {})",
                                        r.samples,
                                        r.max_abs_error,
                                        r.max_rel_error,
                                        r.agreement,
                                        args.atol,
                                        args.rtol,
                                        args.min_agreement
                                    )),
                                    samples: r.samples,
                                    max_abs_error: r.max_abs_error,
                                    max_rel_error: r.max_rel_error,
                                    agreement: r.agreement,
                                }
                            }
                        }
                    }
                },
            },
        },
    };
    let line = serde_json::to_string(&result).unwrap_or_default();
    println!("{line}");
    // Kubernetes reads the termination message from this file; elsewhere it may not exist.
    if let Err(e) = std::fs::write(&args.termination_log, &line)
        && args.termination_log != std::path::Path::new("/dev/termination-log")
    {
        eprintln!(
            "kinfer-runtime: cannot write {}: {e}",
            args.termination_log.display()
        );
    }
    // Every "not ok" here is a property of the artifact: the same run would refuse it again.
    result.exit_code()
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // A worker that parks has had a break: requests group in rounds only while it has not
        // (models::inline).
        .on_thread_park(kinfer_runtime::models::inline::worker_parked)
        .build()
        .context("cannot start the async runtime")?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    // A --check run is a one-shot Job step: its spans would be a trace of one load.
    let export = (!args.check).then(|| {
        args.tracing
            .export("kinfer-runtime")
            .map(|e| e.in_pod(pod::env::POD_NAME, pod::env::POD_NAMESPACE))
    });
    let telemetry = telemetry::init(
        Logging {
            json: args.log_format == "json",
            default_filter: "info,ort=warn",
            stderr: false,
            flatten: false,
        },
        export.flatten(),
    )?;
    let result = serve(args, telemetry.exporting()).await;
    telemetry.shutdown();
    result
}

async fn serve(args: Args, traced: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    kinfer_runtime::memory::check_trim_threshold();
    init_ort(args.ort_lib.as_deref())?;

    let cpus = allowed_cpus();
    let auto = match args.cpu_affinity.as_deref() {
        None | Some("") | Some("none") => false,
        Some("auto") => true,
        Some(other) => bail!(
            "--cpu-affinity {other:?}: use `auto` (pin to this process's CPUs) or leave it unset"
        ),
    };
    let instances = args.instances.max(1);
    // Pinned, the CPUs are shared out between the instances; unpinned, each session may use all.
    let intra_threads = args.intra_op_threads.unwrap_or(if auto {
        (cpus.len() / instances).max(1)
    } else {
        cpus.len().clamp(1, 256)
    });
    if args.exclusive_cpus.is_some() && !auto {
        bail!("--exclusive-cpus describes pinning: give it with --cpu-affinity auto");
    }
    let pinning = auto.then(|| pinning::plan(&cpus, instances, intra_threads, args.exclusive_cpus));
    if let Some(p) = &pinning {
        let r = &p.report;
        if r.exclusive && !r.shared_threads {
            tracing::info!(cpus = %r.allowed, "{}", r.message);
        } else {
            tracing::warn!(cpus = %r.allowed, "{}", r.message);
        }
    }
    let fallback_cpu = match args.ep_fallback.as_deref() {
        None | Some("") | Some("none") => false,
        Some("cpu") => true,
        Some(other) => bail!("--ep-fallback {other:?}: the only fallback is `cpu`"),
    };
    let gpu = GpuOptions {
        device_id: args.cuda_device_id,
        conv_algo_search: args.cudnn_conv_algo_search,
        trt_fp16: args.trt_fp16,
        trt_engine_cache: args.trt_engine_cache.clone(),
    };
    if let Err(e) = gpu.check(args.execution_provider) {
        bail!("{e}");
    }
    if let Some(dir) = &gpu.trt_engine_cache {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "--trt-engine-cache {}: cannot create the directory (mount a writable volume there)",
                dir.display()
            )
        })?;
    }
    let options = LoadOptions {
        session: SessionOptions {
            provider: args.execution_provider,
            fallback_cpu,
            gpu,
            optimization_level: args.optimization_level,
            intra_threads,
            inter_threads: args.inter_op_threads,
            affinity: None,
        },
        batching: BatchOptions {
            max_batch: args.max_batch_size,
            max_delay: args.max_queue_delay,
            queue_capacity: args.queue_capacity,
        },
        instances: args.instances,
        max_request_rows: args.max_request_rows,
        warmup_runs: args.warmup_runs,
        batch_rounding: args.batch_rounding,
        pinning,
    };
    if args.max_inflight_bytes < args.max_message_bytes {
        bail!(
            "--max-inflight-bytes {} is smaller than --max-message-bytes {}: no request of the largest size could ever be served",
            args.max_inflight_bytes,
            args.max_message_bytes
        );
    }
    let request_timeout = args.request_timeout;
    let drain = args.drain_timeout;

    let name = match (&args.model_name, &args.model) {
        (Some(n), _) => n.clone(),
        (None, Some(p)) => p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into()),
        (None, None) => bail!("--model-name is required when no --model is given"),
    };
    if args.check {
        let code = check(&args, &name, &options).await;
        std::process::exit(code);
    }
    let mut registry = Registry::new(name.clone());
    if args.replay_requests > 0 {
        registry = registry.with_ring(kinfer_runtime::models::ring::Ring::new(
            args.replay_requests,
            args.replay_bytes,
            args.replay_sample_rate,
        ));
    }
    let registry = Arc::new(registry);
    if let Some(path) = &args.model {
        let v = LoadedVersion::load(&name, &args.model_version, path, None, &options)?;
        registry.stage(v)?;
        registry.serve(&args.model_version, false)?;
    }
    let limits = Limits {
        max_message_bytes: args.max_message_bytes,
        body_idle_timeout: args.body_idle_timeout,
    };
    let budget = Budget::new(args.max_inflight_bytes);
    let mut server = Server::new(registry.clone(), request_timeout, limits, budget.clone());
    if let Some(p) = &args.policy {
        let policy = kinfer_runtime::policy::Policy::read(p).map_err(anyhow::Error::msg)?;
        if let Some(v) = registry.serving()
            && !v.info.outputs.iter().any(|o| o.name == policy.output)
        {
            bail!(
                "--policy {}: output '{}' is not an output of the model",
                p.display(),
                policy.output
            );
        }
        server.policy = Some(policy);
    }
    if let Some(p) = &args.decision_log {
        use kinfer_runtime::decision_log::{DecisionLog, Sink};
        let sink = Sink::parse(p, args.decision_log_max_bytes);
        server.decision_log =
            Some(DecisionLog::open(sink, args.decision_log_sample).map_err(anyhow::Error::msg)?);
    }
    server.traced = traced;
    let server = Arc::new(server);

    let http_addr = SocketAddr::new(args.listen, args.http_port);
    let grpc_addr = SocketAddr::new(args.listen, args.grpc_port);
    let metrics_addr = SocketAddr::new(args.listen, args.metrics_port);
    let http_listener = TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("cannot listen on {http_addr} (--http-port)"))?;
    let grpc_listener = TcpListener::bind(grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {grpc_addr} (--grpc-port)"))?;
    let metrics_listener = TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {metrics_addr} (--metrics-port)"))?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let http_task = tokio::spawn({
        let app = http::router(server.clone());
        axum::serve(http_listener, app)
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future()
    });
    let grpc_task = tokio::spawn({
        let incoming =
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .layer(CatchPanicLayer::new(grpc_panic_response))
            .layer(MeterLayer::new(budget.clone(), limits.max_message_bytes))
            .add_service(GrpcService::new(server.clone()))
            .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()))
    });
    let metrics_app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get({
                let s = server.clone();
                move || {
                    let s = s.clone();
                    async move {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4",
                            )],
                            metrics::render(&s),
                        )
                    }
                }
            }),
        )
        .route("/v2/health/live", axum::routing::get(|| async { "ok" }));
    tokio::spawn(axum::serve(metrics_listener, metrics_app).into_future());

    if let Some(sock) = &args.admin_socket {
        let _ = std::fs::remove_file(sock);
        let listener = UnixListener::bind(sock)
            .with_context(|| format!("cannot bind admin socket {}", sock.display()))?;
        std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot chmod 0600 {}", sock.display()))?;
        let app = admin::router(Arc::new(Admin {
            registry: registry.clone(),
            options: options.clone(),
        }));
        tokio::spawn(axum::serve(listener, app).into_future());
    }
    tracing::info!(
        model = %name,
        serving = ?registry.serving().map(|v| v.info.version.clone()),
        %http_addr, %grpc_addr, %metrics_addr,
        admin_socket = ?args.admin_socket,
        startup_ms = started.elapsed().as_millis() as u64,
        "kinfer-runtime ready"
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!(drain_timeout = ?drain, "shutting down: readiness false, draining in-flight requests");
    registry.draining.store(true, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(drain, async {
        let _ = http_task.await;
        let _ = grpc_task.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("drain timeout reached; exiting with requests still in flight");
    }
    if let Some(sock) = &args.admin_socket {
        let _ = std::fs::remove_file(sock);
    }
    Ok(())
}
