//! Reconciles one InferenceService: read (its ModelVersions and Pods) → validate → build → apply
//! (server-side apply of every owned object) → rollout decision → status (written only when it
//! changed) → pod marks, Events, alerts and metrics.

use std::sync::Arc;

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::{ConfigMap, Pod, Service, ServiceAccount},
    policy::v1::PodDisruptionBudget,
    rbac::v1::{Role, RoleBinding},
};
use kinfer_api::{
    ANALYSIS_ANNOTATION, InferenceService, ModelVersion, RETRY_ANNOTATION,
    SERVING_VERSION_ANNOTATION, TARGET_VERSION_ANNOTATION,
    conditions::{self, ALERTS_CONFIGURED, VALIDATED, VERIFIED},
    inference_service::{InferenceServiceStatus, RolloutPhase},
    report::{AnalysisReport, INFERENCE_SERVICE_LABEL},
};
use kinfer_contract::telemetry::TARGET;
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType},
    },
};
use serde_json::{Value, json};
use tracing::{Instrument, info, info_span, warn};

use super::{Context, apply, echo, now, optional};
use crate::{
    Error, FIELD_MANAGER,
    alerts::{self, Alert, Job},
    objects::{self, policy_name, rbac::Readable},
    owned,
    rollout::{self, Decision, PodView, Severity, VersionState},
    status::{self, Findings},
    validate::{self, Invalid},
};

/// Kind label for metrics.
pub const KIND: &str = "InferenceService";

/// The reconcile entry point (metrics and backoff bookkeeping around [`reconcile_inner`]).
pub async fn reconcile(isvc: Arc<InferenceService>, ctx: Arc<Context>) -> Result<Action, Error> {
    super::traced(KIND, isvc.as_ref(), &ctx, reconcile_inner(&isvc, &ctx)).await
}

/// The state of a ModelVersion for a rollout.
pub fn version_state(mv: Option<&ModelVersion>) -> VersionState {
    let Some(mv) = mv else {
        return VersionState::Missing;
    };
    let cs = mv
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    for t in [VERIFIED, VALIDATED] {
        if let Some(c) = conditions::find(cs, t)
            && c.status == "False"
        {
            return VersionState::Rejected {
                reason: c.reason.clone(),
                message: c.message.clone(),
            };
        }
    }
    if conditions::is_true(cs, VERIFIED) && conditions::is_true(cs, VALIDATED) {
        VersionState::Ready
    } else {
        VersionState::Verifying
    }
}

/// What the operator reads from a Pod.
pub fn pod_view(p: &Pod) -> PodView {
    let ann = p.annotations();
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    PodView {
        name: p.name_any(),
        created: p.metadata.creation_timestamp.as_ref().map(|t| t.0),
        target: ann.get(TARGET_VERSION_ANNOTATION).cloned(),
        serving: ann.get(SERVING_VERSION_ANNOTATION).cloned(),
        report: AnalysisReport::from_annotation(ann.get(ANALYSIS_ANNOTATION).map(String::as_str)),
        terminating: p.metadata.deletion_timestamp.is_some()
            || matches!(phase, Some("Failed" | "Succeeded")),
        resource_version: p.metadata.resource_version.clone(),
    }
}

async fn reconcile_inner(isvc: &InferenceService, ctx: &Context) -> Result<Action, Error> {
    if isvc.meta().deletion_timestamp.is_some() {
        // Owned objects go with it (owner references); nothing to clean up by hand.
        return Ok(Action::await_change());
    }
    if echo::predates_own_status_write(isvc) {
        // The watch has not yet delivered the status this operator wrote: acting on this copy
        // would end in a refused status write. The written version's arrival triggers again.
        return Ok(Action::requeue(echo::STATUS_CATCH_UP));
    }
    let ns = isvc
        .namespace()
        .ok_or_else(|| Error::NoNamespace(isvc.name_any()))?;
    let name = isvc.name_any();
    let client = ctx.client.clone();
    let current = isvc.status.clone().unwrap_or_default();
    let spec_version = isvc.spec.model_version.as_str();

    // Read.
    let mvs: Api<ModelVersion> = Api::namespaced(client.clone(), &ns);
    let target_mv = mvs
        .get_opt(spec_version)
        .await
        .map_err(|e| Error::kube(format!("reading ModelVersion {spec_version}"), e))?;
    let serving_mv = match current.serving_version.as_deref() {
        Some(s) if s != spec_version => mvs
            .get_opt(s)
            .await
            .map_err(|e| Error::kube(format!("reading ModelVersion {s}"), e))?,
        _ => None,
    };
    let model = serving_mv
        .as_ref()
        .or(target_mv.as_ref())
        .map(|m| m.spec.model.clone());

    // Validate.
    let validated =
        validate::validate(isvc, model.clone()).and_then(|v| v.with_defaults(&ctx.defaults));
    let v = match validated {
        Ok(v) => v,
        Err(invalid) => return refuse_spec(isvc, ctx, &ns, &current, &invalid).await,
    };

    // Build and apply.
    // The watcher may read exactly the Secrets and ConfigMaps these versions name.
    let readable = Readable::of(target_mv.iter().chain(serving_mv.iter()));
    let objs = objects::build(&v, &ctx.defaults, &readable);
    // Owned-object events that beat their apply's answer wait for the end of this reconcile.
    let flight = echo::take_off(isvc);
    // Every owned object at once (only the Role must exist before its binding), and the pods
    // beside them: a reconcile costs the slowest chain of calls, not their sum.
    let apply_all = async {
        let rbac = async {
            // Binding a Role that does not exist yet is refused (NotFound).
            apply(Api::<Role>::namespaced(client.clone(), &ns), &objs.role).await?;
            apply(
                Api::<RoleBinding>::namespaced(client.clone(), &ns),
                &objs.role_binding,
            )
            .await
        };
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let policy = policy_name(&name);
        let (deployment, ..) = futures::try_join!(
            apply(
                Api::<Deployment>::namespaced(client.clone(), &ns),
                &objs.deployment
            ),
            apply(
                Api::<Service>::namespaced(client.clone(), &ns),
                &objs.service
            ),
            apply(
                Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns),
                &objs.pdb
            ),
            apply(
                Api::<ServiceAccount>::namespaced(client.clone(), &ns),
                &objs.service_account
            ),
            rbac,
            optional::apply_scaler(&client, &ns, isvc, &objs.scaler, &ctx.defaults),
            optional::apply_or_delete(&cms, &policy, objs.policy.as_ref(), isvc),
        )?;
        Ok::<_, Error>(deployment)
    };
    let apply_all = apply_all
        .instrument(info_span!(target: TARGET, "apply", otel.name = "apply owned objects"));

    // Pods and the rollout decision. Only the pods its Deployment made speak for the service; a
    // look-alike with the same labels is ignored.
    let by_service = ListParams::default().labels(&format!("{INFERENCE_SERVICE_LABEL}={name}"));
    let list_pods = async {
        Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&by_service)
            .await
            .map_err(|e| Error::kube("listing pods", e))
    };
    let list_replica_sets = async {
        Api::<ReplicaSet>::namespaced(client.clone(), &ns)
            .list(&by_service)
            .await
            .map_err(|e| Error::kube("listing replica sets", e))
    };
    let (deployment, pod_list, replica_sets) =
        futures::try_join!(apply_all, list_pods, list_replica_sets)?;
    let (pod_list, replica_sets) = (pod_list.items, replica_sets.items);
    let deployment_uid = deployment.metadata.uid.clone().unwrap_or_default();
    let owned = owned::serving_pods(&pod_list, &replica_sets, &deployment_uid);
    if owned.len() < pod_list.len() {
        warn!(
            inferenceservice = %name,
            ignored = pod_list.len() - owned.len(),
            "pods with this service's label that its Deployment did not make are ignored"
        );
    }
    let cpu_placement = status::cpu_placement(&owned, isvc.spec.resources.cpu_pinning);
    let views: Vec<PodView> = owned.into_iter().map(pod_view).collect();
    let target_uid = target_mv.as_ref().and_then(|m| m.metadata.uid.as_deref());
    let version_recreated = rollout::version_recreated(&current, spec_version, target_uid);
    let decision = rollout::decide(&rollout::Input {
        spec_version,
        status: &current,
        target: version_state(target_mv.as_ref()),
        pods: &views,
        canary_replicas: isvc.spec.rollout.canary.replicas,
        auto_rollback: isvc.spec.rollout.auto_rollback,
        retry: isvc.annotations().contains_key(RETRY_ANNOTATION),
        version_recreated,
        target_uid,
    });

    // Status.
    let webhook_tokens = match &isvc.spec.alerts {
        Some(a) => alerts::check_tokens(client.clone(), &ns, &a.webhooks).await,
        None => None,
    };
    let dep_status = deployment.status.clone().unwrap_or_default();
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(isvc.spec.replicas);
    let findings = Findings {
        name: &name,
        namespace: &ns,
        generation: isvc.meta().generation,
        invalid: None,
        decision: Some(&decision),
        desired,
        replicas: dep_status.replicas.unwrap_or(0),
        ready: dep_status.ready_replicas.unwrap_or(0),
        unschedulable: status::unschedulable(&pod_list),
        webhook_tokens,
        cpu_placement,
    };
    let next = status::compose(&current, &findings, now());
    let written = write_status(isvc, ctx, &ns, &current, &next)
        .instrument(info_span!(target: TARGET, "status", otel.name = "write status"))
        .await?;
    if written == Written::Stale {
        // Someone wrote a newer status (a newer decision) since this reconcile read the
        // object: acting on this one could undo it. Start over from what is stored.
        info!(inferenceservice = %name, "status changed underneath; reconciling again");
        return Ok(Action::requeue(std::time::Duration::from_millis(500)));
    }
    if let Some(refused) =
        conditions::find(&next.conditions, ALERTS_CONFIGURED).filter(|c| c.status == "False")
        && conditions::find(&current.conditions, ALERTS_CONFIGURED)
            .is_none_or(|c| c.status != "False" || c.message != refused.message)
    {
        publish(
            ctx,
            isvc,
            Severity::Warning,
            status::WEBHOOK_TOKEN_REFUSED,
            &refused.message,
            "Alert",
        )
        .await;
    }

    // Act on the decision.
    act(isvc, ctx, &ns, &decision, model)
        .instrument(
            info_span!(target: TARGET, "act", otel.name = "act on the decision",
            kinfer.phase = ?decision.rollout.phase),
        )
        .await?;

    let busy = matches!(
        decision.rollout.phase,
        RolloutPhase::Verifying
            | RolloutPhase::Canary
            | RolloutPhase::Promoting
            | RolloutPhase::RollingBack
    );
    if flight.land() {
        // Someone else changed an owned object while it was being applied.
        return Ok(Action::requeue(std::time::Duration::ZERO));
    }
    Ok(Action::requeue(super::resync_after(
        busy,
        isvc.meta().uid.as_deref().unwrap_or(&name),
    )))
}

async fn act(
    isvc: &InferenceService,
    ctx: &Context,
    ns: &str,
    d: &Decision,
    model: Option<String>,
) -> Result<(), Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    for p in &d.patches {
        let mut body = json!({"metadata": {"annotations": {TARGET_VERSION_ANNOTATION: p.version}}});
        if p.clear_report {
            body["metadata"]["annotations"][ANALYSIS_ANNOTATION] = Value::Null;
            if let Some(rv) = &p.if_unchanged {
                body["metadata"]["resourceVersion"] = json!(rv);
            }
        }
        match pods.patch(&p.pod, &pp, &Patch::Merge(&body)).await {
            Ok(_) => {
                info!(pod = %p.pod, version = %p.version, cleared_report = p.clear_report, "marked pod")
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            // The pod changed since it was read (its watcher wrote): that change triggers the
            // next reconcile, which decides again from what the pod says now.
            Err(kube::Error::Api(e)) if e.code == 409 && p.clear_report => {
                info!(pod = %p.pod, "pod changed since it was read; deciding again");
            }
            Err(e) => return Err(Error::kube(format!("marking pod {}", p.pod), e)),
        }
    }
    if d.consume_retry {
        let api: Api<InferenceService> = Api::namespaced(ctx.client.clone(), ns);
        let body = json!({"metadata": {"annotations": {RETRY_ANNOTATION: null}}});
        api.patch(&isvc.name_any(), &pp, &Patch::Merge(&body))
            .await
            .map_err(|e| Error::kube("removing the retry annotation", e))?;
    }
    if let Some(n) = &d.notice {
        publish(
            ctx,
            isvc,
            n.severity,
            &n.reason,
            &n.message,
            &format!("Rollout {}", n.version),
        )
        .await;
    }
    if let Some(o) = d.outcome {
        ctx.metrics.rollout(o.label());
        info!(outcome = o.label(), serving = ?d.serving, rejected = ?d.rejected, "rollout finished");
    }
    if let Some(a) = &d.alert {
        ctx.alerter.send(Job {
            alert: Alert {
                namespace: ns.to_owned(),
                inference_service: isvc.name_any(),
                model,
                info: a.clone(),
                at: k8s_openapi::jiff::Timestamp::now(),
            },
            webhooks: isvc
                .spec
                .alerts
                .as_ref()
                .map(|a| a.webhooks.clone())
                .unwrap_or_default(),
        });
    }
    Ok(())
}

async fn refuse_spec(
    isvc: &InferenceService,
    ctx: &Context,
    ns: &str,
    current: &InferenceServiceStatus,
    invalid: &Invalid,
) -> Result<Action, Error> {
    let name = isvc.name_any();
    let findings = Findings {
        name: &name,
        namespace: ns,
        generation: isvc.meta().generation,
        invalid: Some(invalid),
        desired: current
            .ready
            .as_deref()
            .and_then(|r| r.split('/').nth(1)?.parse().ok())
            .unwrap_or(0),
        replicas: current.replicas,
        ready: current.ready_replicas,
        ..Default::default()
    };
    let next = status::compose(current, &findings, now());
    if write_status(isvc, ctx, ns, current, &next).await? == Written::Yes {
        publish(
            ctx,
            isvc,
            Severity::Warning,
            "InvalidSpec",
            &format!("{}: {}", invalid.reason, invalid.message),
            "Validate",
        )
        .await;
    }
    // Not retried until the spec changes.
    Ok(Action::await_change())
}

/// What [`write_status`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The status was already `next`.
    Unchanged,
    /// Written.
    Yes,
    /// Not written: the object changed since it was read (its resourceVersion moved on).
    Stale,
}

async fn write_status(
    isvc: &InferenceService,
    ctx: &Context,
    ns: &str,
    current: &InferenceServiceStatus,
    next: &InferenceServiceStatus,
) -> Result<Written, Error> {
    if isvc.status.is_some() && current == next {
        return Ok(Written::Unchanged);
    }
    let api: Api<InferenceService> = Api::namespaced(ctx.client.clone(), ns);
    apply_status(&api, isvc, next).await
}

/// Writes `next` as the status of `read` with server-side apply, on the condition that the object
/// is still the one that was read: its `resourceVersion` is the apply's precondition, so a status
/// composed from a stale read (a reconcile that raced a newer one, an old leader) never replaces
/// a newer rollout decision — it comes back [`Written::Stale`] and the caller reads again.
pub async fn apply_status(
    api: &Api<InferenceService>,
    read: &InferenceService,
    next: &InferenceServiceStatus,
) -> Result<Written, Error> {
    let body = json!({
        "apiVersion": "kinfer.dev/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"resourceVersion": read.resource_version()},
        "status": next,
    });
    echo::intend_status(read, next);
    let written = api
        .patch_status(
            &read.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await;
    match written {
        Ok(written) => {
            echo::record_status(&written);
            Ok(Written::Yes)
        }
        Err(e) => {
            echo::abandon_status(read);
            match e {
                kube::Error::Api(e) if e.code == 409 => Ok(Written::Stale),
                e => Err(Error::kube("writing InferenceService status", e)),
            }
        }
    }
}

/// Publishes an Event on the InferenceService (a failure to publish is logged, not fatal).
async fn publish(
    ctx: &Context,
    isvc: &InferenceService,
    sev: Severity,
    reason: &str,
    msg: &str,
    action: &str,
) {
    let ev = Event {
        type_: match sev {
            Severity::Normal => EventType::Normal,
            Severity::Warning => EventType::Warning,
        },
        reason: reason.into(),
        note: Some(msg.chars().take(1000).collect()),
        action: action.chars().take(128).collect(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &isvc.object_ref(&())).await {
        warn!(error = %e, reason, "cannot publish an Event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::job::tests::mv;
    use kinfer_api::conditions::Status;

    fn with(mut m: ModelVersion, conds: &[(&str, Status)]) -> ModelVersion {
        let mut st = kinfer_api::ModelVersionStatus::default();
        for (t, s) in conds {
            st.conditions
                .push(conditions::new(t, *s, "R", "m", Some(1), now()));
        }
        m.status = Some(st);
        m
    }

    #[test]
    fn version_states() {
        let m = mv(
            "v8",
            r#"{"model":"f","version":"v8","source":{"uri":"s3://bucket/x/"}}"#,
        );
        assert_eq!(version_state(None), VersionState::Missing);
        assert_eq!(version_state(Some(&m)), VersionState::Verifying);
        let ok = with(
            m.clone(),
            &[(VERIFIED, Status::True), (VALIDATED, Status::True)],
        );
        assert_eq!(version_state(Some(&ok)), VersionState::Ready);
        let half = with(
            m.clone(),
            &[(VERIFIED, Status::True), (VALIDATED, Status::Unknown)],
        );
        assert_eq!(version_state(Some(&half)), VersionState::Verifying);
        let bad = with(m, &[(VERIFIED, Status::True), (VALIDATED, Status::False)]);
        assert!(matches!(
            version_state(Some(&bad)),
            VersionState::Rejected { .. }
        ));
    }

    #[test]
    fn pod_view_reads_the_contract_annotations() {
        let mut p = Pod::default();
        p.metadata.name = Some("fraud-0".into());
        p.metadata.annotations = Some(
            [
                (TARGET_VERSION_ANNOTATION.to_string(), "v8".to_string()),
                (SERVING_VERSION_ANNOTATION.to_string(), "v7".to_string()),
                (
                    ANALYSIS_ANNOTATION.to_string(),
                    r#"{"version":"v8","phase":"Done","verdict":"Passed"}"#.to_string(),
                ),
            ]
            .into(),
        );
        let v = pod_view(&p);
        assert_eq!(v.target.as_deref(), Some("v8"));
        assert_eq!(v.serving.as_deref(), Some("v7"));
        assert_eq!(
            v.report.unwrap().decided("v8"),
            Some(kinfer_api::report::Verdict::Passed)
        );
        assert!(!v.terminating);
    }
}
