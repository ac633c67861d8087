//! Where the watcher's findings go: in a cluster, its own Pod (the `kinfer.dev/analysis` and
//! `kinfer.dev/serving-version` annotations, the `kinfer.dev/ModelReady` condition that gates
//! readiness) and Events on the Pod and the InferenceService; standalone, JSON lines on stdout.
//! Reporting never fails a rollout: an API error is logged and the next report tries again.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kinfer_api::{
    ANALYSIS_ANNOTATION, MODEL_READY_CONDITION, SERVING_VERSION_ANNOTATION, report::AnalysisReport,
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
}

impl Reporter {
    /// Publishes the analysis report.
    pub async fn report(&self, r: &AnalysisReport) {
        let body = serde_json::to_string(r).unwrap_or_default();
        match self {
            Reporter::Stdout => println!("{}", json!({"report": r})),
            Reporter::Pod(p) => {
                let patch = json!({"metadata": {"annotations": {ANALYSIS_ANNOTATION: body}}});
                if let Err(e) = p
                    .pods
                    .patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(error = %e, "cannot write the analysis annotation");
                }
            }
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
                    let patch =
                        json!({"metadata": {"annotations": {SERVING_VERSION_ANNOTATION: v}}});
                    if let Err(e) = p
                        .pods
                        .patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        tracing::warn!(error = %e, "cannot write the serving-version annotation");
                    }
                }
                if let Err(e) = set_condition(&p.pods, &p.name, ready, reason, message).await {
                    tracing::warn!(error = %e, "cannot set the ModelReady pod condition");
                }
            }
        }
    }
}

/// Sets the `kinfer.dev/ModelReady` pod condition (the readiness gate). The transition time
/// moves only when the status changes.
async fn set_condition(
    pods: &Api<Pod>,
    name: &str,
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
        .and_then(|c| c.iter().find(|c| c.type_ == MODEL_READY_CONDITION))
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
        .and_then(|c| c.iter().find(|c| c.type_ == MODEL_READY_CONDITION))
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
        "type": MODEL_READY_CONDITION, "status": status, "reason": reason,
        "message": message, "lastTransitionTime": when,
    }]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map(|_| ())
}
