//! `kinfer-operator`: the control plane binary.
//!
//! Reconciliation (InferenceService → Deployment/Service/PDB, canary rollouts, ModelVersion
//! verification) is tracked in issue 6; today the binary checks its configuration and that it can
//! reach the API server and find kinfer's CRDs, and says so.

use clap::Parser;
use kube::{Api, Client, api::ListParams};

/// The kinfer operator (today: checks the API server connection and the CRDs, then exits).
#[derive(Parser, Debug)]
#[command(name = "kinfer-operator", version, about)]
struct Args {}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    Args::parse();
    let client = Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("cannot build a Kubernetes client ({e}); set KUBECONFIG or run in a pod")
    })?;
    let services: Api<kinfer_api::InferenceService> = Api::all(client.clone());
    let versions: Api<kinfer_api::ModelVersion> = Api::all(client);
    let n_svc = services.list(&ListParams::default()).await.map_err(|e| {
        anyhow::anyhow!("cannot list InferenceServices ({e}); are the CRDs in crds/ applied?")
    })?;
    let n_mv = versions.list(&ListParams::default()).await.map_err(|e| {
        anyhow::anyhow!("cannot list ModelVersions ({e}); are the CRDs in crds/ applied?")
    })?;
    tracing::info!(
        inference_services = n_svc.items.len(),
        model_versions = n_mv.items.len(),
        "connected to the API server"
    );
    Ok(())
}
