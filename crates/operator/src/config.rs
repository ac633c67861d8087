//! Command-line flags of `kinfer-operator` (with `KINFER_*` environment fallbacks), parsed once
//! into [`Args`]. The Helm chart passes exactly these flags.

use std::{net::SocketAddr, time::Duration};

use crate::objects::Defaults;

/// `kinfer-operator`: reconciles InferenceService and ModelVersion resources.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "kinfer-operator", version, about)]
pub struct Args {
    /// Image of the runtime container (`kinfer-runtime`) when an InferenceService names none.
    #[arg(
        long,
        env = "KINFER_RUNTIME_IMAGE",
        default_value = "kinfer.local/kinfer-runtime:0.1.0"
    )]
    pub runtime_image: String,
    /// Image of the runtime container of an InferenceService with `resources.gpu` that names
    /// none (`kinfer-runtime-gpu`: ONNX Runtime with the CUDA provider and the CUDA libraries).
    #[arg(
        long,
        env = "KINFER_RUNTIME_GPU_IMAGE",
        default_value = "kinfer.local/kinfer-runtime-gpu:0.1.0"
    )]
    pub runtime_gpu_image: String,
    /// Image of the model-watcher sidecar (`kinfer-watcher`) and of the verification Job.
    #[arg(
        long,
        env = "KINFER_WATCHER_IMAGE",
        default_value = "kinfer.local/kinfer-watcher:0.1.0"
    )]
    pub watcher_image: String,
    /// `imagePullPolicy` of every container the operator creates.
    #[arg(long, env = "KINFER_IMAGE_PULL_POLICY", default_value = "IfNotPresent",
          value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "KINFER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Elect a leader through a coordination.k8s.io Lease so that several replicas are safe.
    #[arg(long, env = "KINFER_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the Lease.
    #[arg(long, env = "KINFER_LEASE_NAME", default_value = "kinfer-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (the operator's own namespace in a pod).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kinfer-system")]
    pub lease_namespace: String,
    /// How long a leader's Lease is valid without renewal (`15s`); a follower takes over after it.
    #[arg(long, env = "KINFER_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Reconciles run at the same time, per controller.
    #[arg(long, env = "KINFER_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Watch only this namespace; every namespace when empty.
    #[arg(long, env = "KINFER_WATCH_NAMESPACE", default_value = "")]
    pub watch_namespace: String,
    /// Log format.
    #[arg(long, env = "KINFER_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,
    /// The operator's own spans (one trace per reconcile).
    #[command(flatten)]
    pub tracing: kinfer_contract::telemetry::TracingArgs,
    /// The OTLP/gRPC collector the pods of an InferenceService with `spec.tracing` and no
    /// `tracing.endpoint` export to.
    #[arg(long, env = "KINFER_POD_OTLP_ENDPOINT")]
    pub pod_otlp_endpoint: Option<String>,
    /// The Prometheus (HTTP API base URL) that KEDA queries for the queue depth and p99 of an
    /// InferenceService autoscaled on them: with it, such a service gets a KEDA ScaledObject
    /// (KEDA installed in the cluster); without it, an HPA on per-pod custom metrics.
    #[arg(long, env = "KINFER_KEDA_PROMETHEUS_ADDRESS")]
    pub keda_prometheus_address: Option<String>,
}

impl Args {
    /// The images and pull policy the builders use.
    pub fn defaults(&self) -> Defaults {
        Defaults {
            runtime_image: self.runtime_image.clone(),
            runtime_gpu_image: self.runtime_gpu_image.clone(),
            watcher_image: self.watcher_image.clone(),
            image_pull_policy: self.image_pull_policy.clone(),
            pod_otlp_endpoint: self
                .pod_otlp_endpoint
                .clone()
                .filter(|e| !e.trim().is_empty()),
            keda_prometheus: self
                .keda_prometheus_address
                .clone()
                .filter(|e| !e.trim().is_empty()),
        }
    }

    /// The namespace to watch, `None` for all.
    pub fn watch_namespace(&self) -> Option<&str> {
        Some(self.watch_namespace.as_str()).filter(|s| !s.is_empty())
    }
}

/// Parses `15s`, `500ms`, `2m` (and a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    kinfer_api::duration::parse(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_match_the_chart() {
        let a = Args::try_parse_from(["kinfer-operator"]).unwrap();
        assert_eq!(a.runtime_image, "kinfer.local/kinfer-runtime:0.1.0");
        assert_eq!(a.runtime_gpu_image, "kinfer.local/kinfer-runtime-gpu:0.1.0");
        assert_eq!(a.watcher_image, "kinfer.local/kinfer-watcher:0.1.0");
        assert_eq!(a.image_pull_policy, "IfNotPresent");
        assert_eq!(a.metrics_addr.to_string(), "0.0.0.0:8080");
        assert!(a.leader_elect);
        assert_eq!(a.lease_duration, Duration::from_secs(15));
        assert_eq!(a.concurrency, 8);
        assert_eq!(a.watch_namespace(), None);
        assert_eq!(a.log_format, "json");
    }

    #[test]
    fn flags_parse() {
        let a = Args::try_parse_from([
            "kinfer-operator",
            "--leader-elect=false",
            "--lease-duration",
            "2s",
            "--watch-namespace",
            "ml",
            "--concurrency",
            "2",
        ])
        .unwrap();
        assert!(!a.leader_elect);
        assert_eq!(a.lease_duration, Duration::from_secs(2));
        assert_eq!(a.watch_namespace(), Some("ml"));
        assert!(Args::try_parse_from(["kinfer-operator", "--concurrency", "0"]).is_err());
        assert!(Args::try_parse_from(["kinfer-operator", "--lease-duration", "x"]).is_err());
    }
}
