//! `kinfer-operator`: the control plane binary. Parses flags, serves `/metrics`, `/healthz` and
//! `/readyz`, checks the API server and the CRDs, takes part in leader election and, while it
//! leads, runs the InferenceService and ModelVersion controllers until SIGTERM (then finishes the
//! reconciles in flight and releases the Lease).

use std::{
    process::ExitCode,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use clap::Parser;
use kinfer_contract::telemetry::{self, Logging};
use kinfer_operator::{
    alerts::{Alerter, Retry},
    config::Args,
    controller::{self, Context},
    http::{Health, app},
    leader::{self, Elector, LeaseConfig},
};
use kube::{Api, Client, api::ListParams};
use tokio::sync::watch;
use tracing::{error, info};

async fn check_api(client: &Client) -> anyhow::Result<()> {
    let lp = ListParams::default().limit(1);
    Api::<kinfer_api::InferenceService>::all(client.clone())
        .list_metadata(&lp)
        .await
        .map_err(|e| anyhow::anyhow!("cannot list InferenceServices ({e}); are the CRDs in crds/ applied and is the operator's RBAC in place?"))?;
    Api::<kinfer_api::ModelVersion>::all(client.clone())
        .list_metadata(&lp)
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot list ModelVersions ({e}); are the CRDs in crds/ applied?")
        })?;
    Ok(())
}

async fn signal(stop: watch::Sender<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = int.recv() => info!("SIGINT: shutting down"),
    }
    let _ = stop.send(true);
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // A workspace build links rustls with both backends (kube: ring, the AWS SDK of the other
    // binaries: aws-lc-rs), so rustls cannot pick a process default by itself; pick ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // In a pod, HOSTNAME is the pod's name.
    let export = args
        .tracing
        .export("kinfer-operator")
        .map(|e| e.in_pod("HOSTNAME", "POD_NAMESPACE"));
    let telemetry = match telemetry::init(
        Logging {
            json: args.log_format == "json",
            default_filter: "info,kube=warn",
            stderr: false,
            flatten: true,
        },
        export,
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kinfer-operator: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match run(args).await {
        Ok(code) => code,
        Err(e) => {
            error!(error = format!("{e:#}"), "kinfer-operator failed");
            ExitCode::FAILURE
        }
    };
    telemetry.shutdown();
    code
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let health = Health::default();
    let metrics = health.metrics.clone();
    let ready_flag = health.ready.clone();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(signal(stop_tx));

    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot listen on --metrics-addr {}: {e}", args.metrics_addr)
        })?;
    info!(addr = %args.metrics_addr, "serving /metrics, /healthz, /readyz");
    let mut http_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app(health.clone()).into_make_service())
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|v| *v).await;
            })
            .await;
    });
    let ready = {
        let client = Client::try_default().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot build a Kubernetes client ({e}); set KUBECONFIG or run in a pod"
            )
        })?;
        check_api(&client).await?;
        client
    };
    let client = ready;
    let identity = leader::identity();
    info!(identity = %identity, leader_elect = args.leader_elect, "connected to the API server");
    // Ready once the API server and the CRDs are reachable; a follower is ready too.
    ready_flag.store(true, Ordering::Relaxed);

    let (leader_tx, mut leader_rx) = watch::channel(!args.leader_elect);
    let elector_task = args.leader_elect.then(|| {
        let elector = Elector::new(
            client.clone(),
            LeaseConfig {
                name: args.lease_name.clone(),
                namespace: args.lease_namespace.clone(),
                identity: identity.clone(),
                duration: args.lease_duration,
            },
        );
        tokio::spawn(leader::run(elector, leader_tx, stop_rx.clone()))
    });

    let mut stop = stop_rx.clone();
    tokio::select! {
        r = leader_rx.wait_for(|v| *v) => { drop(r); }
        _ = stop.wait_for(|v| *v) => {
            info!("stopped before becoming the leader");
            if let Some(t) = elector_task { let _ = t.await; }
            let _ = server.await;
            return Ok(ExitCode::SUCCESS);
        }
    }
    info!(identity = %identity, "leading: starting the controllers");
    metrics.set_leader(true);

    let alerter = Alerter::spawn(Some(client.clone()), metrics.clone(), Retry::default());
    let ctx = Arc::new(Context::new(
        client,
        args.defaults(),
        metrics.clone(),
        alerter,
        identity,
    ));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<bool>();
    {
        let mut stop = stop_rx.clone();
        let mut leader_rx = leader_rx.clone();
        tokio::spawn(async move {
            let lost = tokio::select! {
                _ = stop.wait_for(|v| *v) => false,
                // Without leader election there is no sender: leadership is never lost.
                _ = async {
                    if leader_rx.wait_for(|v| !*v).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                } => true,
            };
            let _ = done_tx.send(lost);
        });
    }
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<bool>();
    let shutdown = async move {
        let lost = done_rx.await.unwrap_or(false);
        let _ = lost_tx.send(lost);
    };
    controller::run(
        ctx,
        args.watch_namespace().map(str::to_owned),
        args.concurrency,
        shutdown,
    )
    .await;
    metrics.set_leader(false);
    let lost = lost_rx.await.unwrap_or(false);
    if lost {
        error!("lost the leader Lease; exiting so that this replica restarts as a follower");
        return Ok(ExitCode::FAILURE);
    }
    if let Some(t) = elector_task {
        // The elector releases the Lease on stop; do not hang on a dead API server.
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}
