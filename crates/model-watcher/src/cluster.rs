//! The watcher inside a cluster: which version this pod should serve (its own
//! `kinfer.dev/target-version` annotation, else the InferenceService's `status.servingVersion`,
//! else its `spec.modelVersion`), and the [`Plan`] for it read from the ModelVersion, its
//! credentials Secret, its trusted-keys ConfigMap or Secret and the InferenceService's rollout
//! rules. The main loop is [`run`]: it wakes on changes of the Pod or the InferenceService
//! (watches) and every two seconds to check on the runtime.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, ObjectReference, Pod, Secret},
};
use kinfer_api::{
    ANALYSIS_ANNOTATION, InferenceService, ModelVersion, TARGET_VERSION_ANNOTATION,
    model_version::TrustedKeys,
    report::{AnalysisPhase, AnalysisReport},
};
use kinfer_contract::admin::CpuPinning;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        events::{Recorder, Reporter as EventReporter},
        watcher,
    },
};
use tokio::sync::Notify;

use crate::{
    report::{PodReporter, Reporter},
    rollout::{Plan, Watcher},
    signature::TrustedKey,
};

/// Where this watcher runs.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The InferenceService the pod belongs to.
    pub service: String,
}

/// Reads what the pod should serve and everything needed to bring it in.
pub struct Cluster {
    id: Identity,
    pods: Api<Pod>,
    services: Api<InferenceService>,
    versions: Api<ModelVersion>,
    secrets: Api<Secret>,
    config_maps: Api<ConfigMap>,
}

impl Cluster {
    /// Clients for `id`'s namespace.
    pub fn new(client: Client, id: Identity) -> Self {
        let ns = id.namespace.as_str();
        Self {
            pods: Api::namespaced(client.clone(), ns),
            services: Api::namespaced(client.clone(), ns),
            versions: Api::namespaced(client.clone(), ns),
            secrets: Api::namespaced(client.clone(), ns),
            config_maps: Api::namespaced(client, ns),
            id,
        }
    }

    /// The report this pod carries from an earlier run of the watcher (its
    /// `kinfer.dev/analysis` annotation), if any.
    pub async fn last_report(&self) -> Option<AnalysisReport> {
        let pod = self.pods.get(&self.id.pod).await.ok()?;
        AnalysisReport::from_annotation(
            pod.annotations()
                .get(ANALYSIS_ANNOTATION)
                .map(String::as_str),
        )
    }

    /// The ModelVersion name this pod should serve, or why none can be named.
    pub async fn target(&self) -> Result<String, String> {
        let pod = self
            .pods
            .get(&self.id.pod)
            .await
            .map_err(|e| format!("cannot read pod {}: {e}", self.id.pod))?;
        if let Some(t) = pod
            .annotations()
            .get(TARGET_VERSION_ANNOTATION)
            .filter(|t| !t.is_empty())
        {
            return Ok(t.clone());
        }
        let svc = self
            .services
            .get(&self.id.service)
            .await
            .map_err(|e| format!("cannot read InferenceService {}: {e}", self.id.service))?;
        Ok(svc
            .status
            .as_ref()
            .and_then(|s| s.serving_version.clone())
            .unwrap_or(svc.spec.model_version))
    }

    /// The plan for ModelVersion `name`.
    pub async fn plan(&self, name: &str) -> Result<Plan, String> {
        let mv = self
            .versions
            .get(name)
            .await
            .map_err(|e| format!("cannot read ModelVersion {name}: {e}"))?;
        // Only the bytes the verification Job checked may serve (digest pinning); `run` waits
        // while there is none.
        let digest = mv.status.as_ref().and_then(|s| s.digest.clone());
        let svc = self
            .services
            .get(&self.id.service)
            .await
            .map_err(|e| format!("cannot read InferenceService {}: {e}", self.id.service))?;
        let credentials = match &mv.spec.source.credentials_secret {
            None => None,
            Some(s) => {
                let secret = self.secrets.get(s).await.map_err(|e| {
                    format!("cannot read the S3 credentials Secret {s} named by ModelVersion {name}: {e}")
                })?;
                let data = secret.data.unwrap_or_default();
                let key = |k: &str| {
                    data.get(k)
                        .map(|b| String::from_utf8_lossy(&b.0).trim().to_owned())
                        .ok_or_else(|| format!("Secret {s} has no key {k} (it needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"))
                };
                Some((key("AWS_ACCESS_KEY_ID")?, key("AWS_SECRET_ACCESS_KEY")?))
            }
        };
        // A trust policy's keys, as the operator recorded them for the verification, take the
        // place of the ModelVersion's own (which a namespace user can edit).
        let applied = mv.status.as_ref().and_then(|s| s.trust.as_ref());
        let keys = match (applied, &mv.spec.signature.trusted_keys) {
            (Some(t), _) => t
                .public_keys
                .iter()
                .map(|k| {
                    TrustedKey::from_pem(&k.pem, std::path::Path::new(&k.name)).map_err(|e| {
                        format!(
                            "ModelVersion {name}: key {} of its trust policy: {e}",
                            k.name
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
            (None, None) => Vec::new(),
            (None, Some(tk)) => self.trusted_keys(tk).await?,
        };
        Ok(Plan {
            name: name.to_owned(),
            spec: mv.spec,
            credentials,
            keys,
            rollout: svc.spec.rollout,
            digest,
        })
    }

    async fn trusted_keys(&self, tk: &TrustedKeys) -> Result<Vec<TrustedKey>, String> {
        let (origin, values): (String, BTreeMap<String, String>) =
            match (&tk.config_map, &tk.secret) {
                (Some(cm), _) => {
                    let m =
                        self.config_maps.get(cm).await.map_err(|e| {
                            format!("cannot read the trusted-keys ConfigMap {cm}: {e}")
                        })?;
                    (format!("ConfigMap {cm}"), m.data.unwrap_or_default())
                }
                (None, Some(s)) => {
                    let m = self
                        .secrets
                        .get(s)
                        .await
                        .map_err(|e| format!("cannot read the trusted-keys Secret {s}: {e}"))?;
                    let data: BTreeMap<String, ByteString> = m.data.unwrap_or_default();
                    (
                        format!("Secret {s}"),
                        data.into_iter()
                            .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                            .collect(),
                    )
                }
                (None, None) => return Ok(Vec::new()),
            };
        let keys: Vec<TrustedKey> = values
            .iter()
            .filter(|(_, v)| v.contains("-----BEGIN PUBLIC KEY-----"))
            .map(|(k, v)| TrustedKey::from_pem(v, Path::new(&format!("{origin}/{k}"))))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        if keys.is_empty() {
            return Err(format!(
                "{origin} holds no PEM public key (-----BEGIN PUBLIC KEY-----)"
            ));
        }
        Ok(keys)
    }

    /// The reporter for this pod.
    pub async fn reporter(&self, client: Client) -> Result<PodReporter, String> {
        let pod = self
            .pods
            .get(&self.id.pod)
            .await
            .map_err(|e| format!("cannot read pod {}: {e}", self.id.pod))?;
        let service_ref = self
            .services
            .get(&self.id.service)
            .await
            .ok()
            .map(|s| s.object_ref(&()));
        let recorder = Recorder::new(
            client,
            EventReporter {
                controller: "kinfer-watcher".into(),
                instance: Some(self.id.pod.clone()),
            },
        );
        Ok(PodReporter {
            pods: self.pods.clone(),
            name: self.id.pod.clone(),
            recorder,
            pod_ref: pod_ref(&pod),
            service_ref,
            unsent: Default::default(),
        })
    }
}

fn pod_ref(pod: &Pod) -> ObjectReference {
    pod.object_ref(&())
}

/// Wakes `notify` on every change of the pod or the InferenceService.
fn spawn_watches(client: Client, id: &Identity, notify: Arc<Notify>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &id.namespace);
    let svcs: Api<InferenceService> = Api::namespaced(client, &id.namespace);
    let pod_cfg = watcher::Config::default().fields(&format!("metadata.name={}", id.pod));
    let svc_cfg = watcher::Config::default().fields(&format!("metadata.name={}", id.service));
    let n = notify.clone();
    tokio::spawn(async move {
        let mut s = watcher(pods, pod_cfg).boxed();
        while let Some(ev) = s.next().await {
            if let Err(e) = ev {
                tracing::debug!(error = %e, "pod watch error (retried)");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            n.notify_one();
        }
    });
    tokio::spawn(async move {
        let mut s = watcher(svcs, svc_cfg).boxed();
        while let Some(ev) = s.next().await {
            if let Err(e) = ev {
                tracing::debug!(error = %e, "InferenceService watch error (retried)");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            notify.notify_one();
        }
    });
}

/// The sidecar's main loop; returns only on SIGTERM.
pub async fn run(client: Client, id: Identity, mut watcher: Watcher) -> anyhow::Result<()> {
    let cluster = Cluster::new(client.clone(), id.clone());
    let reporter = loop {
        match cluster.reporter(client.clone()).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, "waiting for the pod to be readable");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    // A restart (the container was killed): take over what the last run left unfinished.
    if let Some(last) = cluster.last_report().await {
        tracing::info!(version = %last.version, phase = ?last.phase, "resuming from the pod's last report");
        watcher.resume_from(last);
    }
    watcher.reporter = Reporter::Pod(Box::new(reporter));
    watcher
        .reporter
        .serving(
            None,
            false,
            "Loading",
            "no verified model version serves yet",
        )
        .await;
    let notify = Arc::new(Notify::new());
    spawn_watches(client, &id, notify.clone());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // The version whose verdict is in: not applied again until the target names another.
    let mut decided: Option<String> = None;
    let mut last_problem = String::new();
    // The runtime's CPU placement as written on the pod (it changes only when the runtime
    // restarts, so it is written when it differs, not on every tick).
    let mut pinning_written: Option<CpuPinning> = None;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = notify.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        // What the API server did not take while it was away (a verdict, the condition).
        watcher.reporter.flush().await;
        // The runtime restarted empty (its container was killed): serve the version again.
        let synced = watcher.sync().await;
        if let Some(p) = watcher.cpu_pinning().cloned()
            && pinning_written.as_ref() != Some(&p)
            && watcher.reporter.cpu_pinning(&p).await
        {
            pinning_written = Some(p);
        }
        if let Ok(serving) = synced
            && serving.is_none()
            && watcher.serving().is_some()
        {
            match watcher.restore().await {
                Ok(true) => {}
                Ok(false) => decided = None,
                Err(e) => tracing::warn!(error = %e, "cannot restore the serving version yet"),
            }
        }
        let target = match cluster.target().await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot resolve the target version");
                continue;
            }
        };
        if decided.as_deref() == Some(target.as_str()) {
            continue;
        }
        let plan = match cluster.plan(&target).await {
            Ok(p) => p,
            Err(e) => {
                if e != last_problem {
                    let r = AnalysisReport {
                        version: target.clone(),
                        phase: AnalysisPhase::Pending,
                        message: Some(e.clone()),
                        ..Default::default()
                    };
                    watcher.reporter.report(&r).await;
                    watcher
                        .reporter
                        .event(true, "ModelVersionUnavailable", &e)
                        .await;
                    last_problem = e;
                }
                continue;
            }
        };
        // Digest pinning: nothing is brought in before its verification recorded the digest
        // (the normal state of a new ModelVersion for a few seconds, so no Warning).
        if plan.digest.is_none() {
            let msg = format!(
                "waiting for the verification of ModelVersion {target} to record its digest \
                 (status.digest; kubectl get mv {target} -o wide)"
            );
            if msg != last_problem {
                let r = AnalysisReport {
                    version: target.clone(),
                    phase: AnalysisPhase::Pending,
                    message: Some(msg.clone()),
                    ..Default::default()
                };
                watcher.reporter.report(&r).await;
                last_problem = msg;
            }
            continue;
        }
        last_problem.clear();
        // What this pod serves is about to change: the last verdict no longer describes it (an
        // apply abandoned below leaves the new version serving, and the next target — maybe
        // the version decided before — must be applied, not skipped as decided).
        decided = None;
        // Apply, but give up on it when the target changes underneath (an aborted rollout).
        let changed = async {
            loop {
                notify.notified().await;
                if cluster.target().await.is_ok_and(|t| t != target) {
                    return;
                }
            }
        };
        let outcome = tokio::select! {
            r = watcher.apply(&plan) => Some(r),
            _ = changed => None,
            _ = term.recv() => return Ok(()),
        };
        match outcome {
            Some(r) if r.phase == AnalysisPhase::Done => {
                tracing::info!(version = %r.version, verdict = ?r.verdict, reason = ?r.reason, "verdict");
                decided = Some(target);
                if watcher.serving().is_none() {
                    watcher
                        .reporter
                        .serving(
                            None,
                            false,
                            "NoVerifiedModel",
                            r.message.as_deref().unwrap_or(""),
                        )
                        .await;
                }
            }
            Some(_) => {} // the runtime was not reachable: try again on the next tick
            None => {
                tracing::info!(version = %target, "target changed during the rollout; following the new one");
                notify.notify_one();
            }
        }
    }
}
