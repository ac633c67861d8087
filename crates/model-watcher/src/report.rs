//! Where the watcher's findings go: in a cluster, its own Pod (the `kinfer.dev/analysis` and
//! `kinfer.dev/serving-version` annotations, the `kinfer.dev/ModelReady` condition that gates
//! readiness, the `kinfer.dev/CpuPinned` condition of a pinned runtime) and Events on the Pod and
//! the InferenceService; standalone, JSON lines on stdout.
//! Reporting never fails a rollout: an API error is logged, and what could not be written (the
//! last report, the serving annotation, the condition: state, not history) is kept and written
//! by [`Reporter::flush`], which the cluster loop calls on every tick, so a verdict reached while
//! the API server was away reaches the operator once it is back. Events are best effort.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kinfer_api::{
    ANALYSIS_ANNOTATION, MODEL_READY_CONDITION, SERVING_VERSION_ANNOTATION, report::AnalysisReport,
};
use kinfer_contract::{
    admin::CpuPinning,
    pod::{CPU_PINNED_CONDITION, EXCLUSIVE_CPUS_REASON, SHARED_CPUS_REASON},
};
use kube::{
    Api,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder},
};
use serde_json::json;

/// The reporter of one watcher.
pub enum Reporter {
    /// JSON lines on stdout (`{"report": …}`, `{"event": …}`, `{"serving": …}`).
    Stdout,
    /// The watcher's own Pod and its InferenceService.
    Pod(Box<PodReporter>),
}

/// Reports onto a Pod through the API server.
pub struct PodReporter {
    /// Pods of the namespace.
    pub pods: Api<Pod>,
    /// The pod's name.
    pub name: String,
    /// Event recorder (events.k8s.io/v1).
    pub recorder: Recorder,
    /// The Pod, for Events.
    pub pod_ref: ObjectReference,
    /// The InferenceService, for Events (also seen by `kubectl describe infsvc`).
    pub service_ref: Option<ObjectReference>,
    /// What the API server did not take yet (see the module docs).
    pub unsent: std::sync::Mutex<Unsent>,
}

/// The latest state of each kind that could not be written; a later successful write of the
/// same kind supersedes it.
#[derive(Debug, Default)]
pub struct Unsent {
    /// The `kinfer.dev/analysis` annotation.
    report: Option<String>,
    /// The `kinfer.dev/serving-version` annotation.
    serving: Option<String>,
    /// The `kinfer.dev/ModelReady` condition: (ready, reason, message).
    condition: Option<(bool, String, String)>,
}

impl PodReporter {
    fn unsent(&self) -> std::sync::MutexGuard<'_, Unsent> {
        self.unsent.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn annotate(&self, key: &str, value: &str) -> Result<(), kube::Error> {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        self.pods
            .patch(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }

    async fn write_report(&self, body: String) {
        match self.annotate(ANALYSIS_ANNOTATION, &body).await {
            Ok(()) => self.unsent().report = None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the analysis annotation; kept for the next try");
                self.unsent().report = Some(body);
            }
        }
    }

    async fn write_serving(&self, version: String) {
        match self.annotate(SERVING_VERSION_ANNOTATION, &version).await {
            Ok(()) => self.unsent().serving = None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the serving-version annotation; kept for the next try");
                self.unsent().serving = Some(version);
            }
        }
    }

    async fn write_condition(&self, ready: bool, reason: String, message: String) {
        match set_condition(
            &self.pods,
            &self.name,
            MODEL_READY_CONDITION,
            ready,
            &reason,
            &message,
        )
        .await
        {
            Ok(()) => self.unsent().condition = None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot set the ModelReady pod condition; kept for the next try");
                self.unsent().condition = Some((ready, reason, message));
            }
        }
    }
}

impl Reporter {
    /// Publishes the analysis report.
    pub async fn report(&self, r: &AnalysisReport) {
        let body = serde_json::to_string(r).unwrap_or_default();
        match self {
            Reporter::Stdout => println!("{}", json!({"report": r})),
            Reporter::Pod(p) => p.write_report(body).await,
        }
    }

    /// Publishes an Event (`warning` or Normal) with a greppable reason.
    pub async fn event(&self, warning: bool, reason: &str, message: &str) {
        if warning {
            tracing::warn!(%reason, %message, "event");
        } else {
            tracing::info!(%reason, %message, "event");
        }
        match self {
            Reporter::Stdout => println!(
                "{}",
                json!({"event": {"type": if warning { "Warning" } else { "Normal" }, "reason": reason, "message": message}})
            ),
            Reporter::Pod(p) => {
                let ev = Event {
                    type_: if warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: reason.to_owned(),
                    note: Some(message.chars().take(1000).collect()),
                    action: "ModelRollout".into(),
                    secondary: None,
                };
                for r in std::iter::once(&p.pod_ref).chain(p.service_ref.as_ref()) {
                    if let Err(e) = p.recorder.publish(&ev, r).await {
                        tracing::warn!(error = %e, "cannot publish an Event");
                    }
                }
            }
        }
    }

    /// Records what serves now and whether the pod may receive traffic (`ModelReady`).
    pub async fn serving(&self, version: Option<&str>, ready: bool, reason: &str, message: &str) {
        match self {
            Reporter::Stdout => println!(
                "{}",
                json!({"serving": {"version": version, "ready": ready, "reason": reason, "message": message}})
            ),
            Reporter::Pod(p) => {
                if let Some(v) = version {
                    p.write_serving(v.to_owned()).await;
                }
                p.write_condition(ready, reason.to_owned(), message.to_owned())
                    .await;
            }
        }
    }

    /// Records where the runtime's inference threads run (`kinfer.dev/CpuPinned`); `false` when
    /// the API server did not take it (the caller tries again on its next tick).
    pub async fn cpu_pinning(&self, p: &CpuPinning) -> bool {
        match self {
            Reporter::Stdout => {
                println!("{}", json!({"cpuPinning": p}));
                true
            }
            Reporter::Pod(pod) => {
                let reason = if p.exclusive {
                    EXCLUSIVE_CPUS_REASON
                } else {
                    SHARED_CPUS_REASON
                };
                let r = set_condition(
                    &pod.pods,
                    &pod.name,
                    CPU_PINNED_CONDITION,
                    p.exclusive,
                    reason,
                    &p.message,
                )
                .await;
                if let Err(e) = &r {
                    tracing::warn!(error = %e, "cannot set the CpuPinned pod condition; tried again on the next tick");
                }
                r.is_ok()
            }
        }
    }

    /// Writes again what the API server did not take (a no-op standalone or when all was
    /// written).
    pub async fn flush(&self) {
        let Reporter::Pod(p) = self else {
            return;
        };
        let (report, serving, condition) = {
            let mut u = p.unsent();
            (u.report.take(), u.serving.take(), u.condition.take())
        };
        if let Some(body) = report {
            p.write_report(body).await;
        }
        if let Some(v) = serving {
            p.write_serving(v).await;
        }
        if let Some((ready, reason, message)) = condition {
            p.write_condition(ready, reason, message).await;
        }
    }
}

/// Sets a pod condition of the watcher's (`kinfer.dev/ModelReady`, the readiness gate, or
/// `kinfer.dev/CpuPinned`). The transition time moves only when the status changes.
async fn set_condition(
    pods: &Api<Pod>,
    name: &str,
    type_: &str,
    ready: bool,
    reason: &str,
    message: &str,
) -> Result<(), kube::Error> {
    let status = if ready { "True" } else { "False" };
    let current = pods.get(name).await?;
    let unchanged = current
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == type_))
        .is_some_and(|c| {
            c.status == status
                && c.reason.as_deref() == Some(reason)
                && c.message.as_deref() == Some(message)
        });
    if unchanged {
        return Ok(());
    }
    let transition_kept = current
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone());
    let when = transition_kept
        .map(|t| serde_json::to_value(t).unwrap_or_default())
        .unwrap_or_else(|| {
            json!(
                k8s_openapi::jiff::Timestamp::now()
                    .strftime("%Y-%m-%dT%H:%M:%SZ")
                    .to_string()
            )
        });
    let patch = json!({"status": {"conditions": [{
        "type": type_, "status": status, "reason": reason,
        "message": message, "lastTransitionTime": when,
    }]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map(|_| ())
}
