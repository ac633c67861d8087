//! Reconciles one ModelVersion: creates its verification Job once, reads the two containers'
//! termination messages (the pod contract's JSON results) and writes `Verified` / `Validated`,
//! the summary `Ready` and kstatus's `Reconciling` / `Stalled` ([`summarize`]), `digest`,
//! `signer` and `validationResult` into its status. A decided ModelVersion is never
//! verified again (its spec is immutable).

use std::sync::Arc;

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ContainerStatus, Pod},
};
use kinfer_api::{
    ModelVersion, ModelVersionStatus,
    conditions::{self, Progress, READY, Status, VALIDATED, VERIFIED},
    model_version::ValidationResult,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
    runtime::controller::Action,
};
use serde_json::json;
use tracing::info;

use super::{Context, now};
use crate::{
    Error, FIELD_MANAGER,
    objects::job::{
        MODEL_VERSION_LABEL, VALIDATE_CONTAINER, VERIFY_CONTAINER, job_name, verification_job,
    },
    owned,
    trust::{TRUST_POLICY_VIOLATION, Violation},
};

/// Kind label for metrics.
pub const KIND: &str = "ModelVersion";

/// The two containers' results (their termination messages), the types their producers write.
pub use kinfer_contract::check::{ValidateResult, VerifyResult};

/// What the Job produced so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobOutcome {
    /// The init container's result.
    pub verify: Option<VerifyResult>,
    /// The main container's result.
    pub validate: Option<ValidateResult>,
    /// The Job failed (backoff limit or deadline) with this message.
    pub failed: Option<String>,
    /// The ModelVersion has a golden set.
    pub has_golden_set: bool,
}

/// Whether both conditions are decided (True or False).
pub fn decided(s: &ModelVersionStatus) -> bool {
    [VERIFIED, VALIDATED]
        .iter()
        .all(|t| conditions::find(&s.conditions, t).is_some_and(|c| c.status != "Unknown"))
}

/// The next status, pure.
pub fn compose(
    current: &ModelVersionStatus,
    generation: Option<i64>,
    job: &str,
    o: &JobOutcome,
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> ModelVersionStatus {
    let mut s = current.clone();
    s.observed_generation = generation;
    let mut set = |t: &str, st: Status, reason: &str, msg: String| {
        conditions::upsert(
            &mut s.conditions,
            conditions::new(t, st, reason, msg, generation, now.clone()),
        );
    };
    match &o.verify {
        None if o.failed.is_some() => {
            set(
                VERIFIED,
                Status::False,
                "VerificationJobFailed",
                format!(
                    "verification Job {job} failed without a result: {}; see `kubectl logs job/{job} -c verify`",
                    o.failed.as_deref().unwrap_or_default()
                ),
            );
            set(
                VALIDATED,
                Status::Unknown,
                "NotRun",
                "the artifact was not verified".into(),
            );
        }
        None => {
            set(
                VERIFIED,
                Status::Unknown,
                "Verifying",
                format!("verification Job {job} is running"),
            );
            set(
                VALIDATED,
                Status::Unknown,
                "Pending",
                "waiting for verification".into(),
            );
        }
        Some(v) if !v.ok => {
            set(
                VERIFIED,
                Status::False,
                v.reason.as_deref().unwrap_or("VerificationFailed"),
                v.message
                    .clone()
                    .unwrap_or_else(|| "verification failed".into()),
            );
            set(
                VALIDATED,
                Status::Unknown,
                "NotRun",
                "the artifact was not verified".into(),
            );
        }
        // Pods serve only the digest recorded here: a success without one pins nothing.
        Some(v) if v.digest.is_none() => {
            set(
                VERIFIED,
                Status::False,
                "VerificationFailed",
                "the verification Job reported success without the artifact's digest; \
                 its model-watcher image is older than the operator's"
                    .into(),
            );
            set(
                VALIDATED,
                Status::Unknown,
                "NotRun",
                "the artifact was not verified".into(),
            );
        }
        Some(v) => {
            let (reason, msg) = match &v.signer {
                Some(signer) => (
                    "SignatureValid",
                    format!(
                        "signed by {signer}; digest {}",
                        v.digest.as_deref().unwrap_or("unknown")
                    ),
                ),
                None => (
                    "Unsigned",
                    v.message.clone().unwrap_or_else(|| {
                        "not signed; allowed by signature.required: false".into()
                    }),
                ),
            };
            set(VERIFIED, Status::True, reason, msg);
            s.digest = v.digest.clone();
            s.signer = v.signer.clone();
            match &o.validate {
                Some(r) => {
                    let figures = format!(
                        "{} samples, max abs error {:e}, max rel error {:e}, agreement {:.4}",
                        r.samples, r.max_abs_error, r.max_rel_error, r.agreement
                    );
                    if o.has_golden_set {
                        s.validation_result = Some(ValidationResult {
                            samples: r.samples,
                            max_abs_error: r.max_abs_error,
                            max_rel_error: r.max_rel_error,
                            agreement: r.agreement,
                        });
                    }
                    let (st, reason, msg) = match (r.ok, o.has_golden_set) {
                        (true, true) => (Status::True, "GoldenSetMatched", figures),
                        (true, false) => (
                            Status::True,
                            "Loaded",
                            "no golden set; the model loads in the runtime".into(),
                        ),
                        (false, _) => (
                            Status::False,
                            r.reason.as_deref().unwrap_or("NumericalMismatch"),
                            match &r.message {
                                Some(m) if o.has_golden_set => format!("{m} ({figures})"),
                                Some(m) => m.clone(),
                                None => figures,
                            },
                        ),
                    };
                    set(VALIDATED, st, reason, msg);
                }
                None if o.failed.is_some() => set(
                    VALIDATED,
                    Status::False,
                    "ValidationJobFailed",
                    format!(
                        "verification Job {job} failed without a validation result: {}",
                        o.failed.as_deref().unwrap_or_default()
                    ),
                ),
                None => set(
                    VALIDATED,
                    Status::Unknown,
                    "Validating",
                    format!("verification Job {job} is running the golden set"),
                ),
            }
        }
    }
    summarize(&mut s, generation, &now);
    s
}

/// The status of a ModelVersion a ModelTrustPolicy refuses, pure: `Verified=False` with the
/// policy's sentence; no Job is made for it.
pub fn refuse(
    current: &ModelVersionStatus,
    generation: Option<i64>,
    v: &Violation,
    now: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) -> ModelVersionStatus {
    let mut s = current.clone();
    s.observed_generation = generation;
    s.trust = None;
    for (t, st, reason, msg) in [
        (
            VERIFIED,
            Status::False,
            TRUST_POLICY_VIOLATION,
            v.message.clone(),
        ),
        (
            VALIDATED,
            Status::Unknown,
            "NotRun",
            "the artifact was not verified".to_owned(),
        ),
    ] {
        conditions::upsert(
            &mut s.conditions,
            conditions::new(t, st, reason, msg, generation, now.clone()),
        );
    }
    summarize(&mut s, generation, &now);
    s
}

/// `Ready` and kstatus's `Reconciling` / `Stalled` from `Verified` and `Validated`: both True is
/// Ready; one False is Stalled with its reason (a refused artifact stays refused: its spec is
/// immutable); otherwise the Job is still at work and the ModelVersion is Reconciling.
fn summarize(
    s: &mut ModelVersionStatus,
    generation: Option<i64>,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
) {
    let found = |t| conditions::find(&s.conditions, t).cloned();
    let (verified, validated) = (found(VERIFIED), found(VALIDATED));
    let both = [verified, validated]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
    let progress = if let Some(c) = both.iter().find(|c| c.status == "False") {
        Progress::Stalled(c.reason.clone(), format!("{}: {}", c.type_, c.message))
    } else if both.len() == 2 && both.iter().all(|c| c.status == "True") {
        Progress::Settled
    } else {
        let c = both.iter().find(|c| c.status != "True");
        Progress::Reconciling(
            c.map_or("Verifying".into(), |c| c.reason.clone()),
            c.map_or(String::new(), |c| c.message.clone()),
        )
    };
    let ready = match &progress {
        Progress::Settled => (
            Status::True,
            "Validated".to_owned(),
            "verified and validated; rollouts may use it".to_owned(),
        ),
        Progress::Stalled(r, m) | Progress::Reconciling(r, m) => {
            (Status::False, r.clone(), m.clone())
        }
    };
    conditions::upsert(
        &mut s.conditions,
        conditions::new(READY, ready.0, &ready.1, ready.2, generation, now.clone()),
    );
    conditions::set_progress(&mut s.conditions, &progress, generation, now);
}

async fn write_status(
    ctx: &Context,
    ns: &str,
    name: &str,
    next: &ModelVersionStatus,
) -> Result<(), Error> {
    let api: Api<ModelVersion> = Api::namespaced(ctx.client.clone(), ns);
    let body = json!({"apiVersion": "kinfer.dev/v1alpha1", "kind": "ModelVersion", "status": next});
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|e| Error::kube("writing ModelVersion status", e))?;
    Ok(())
}

/// Reads the results from the Job's pods (newest first) and the Job's own status.
pub fn outcome(job: Option<&Job>, pods: &[Pod], has_golden_set: bool) -> JobOutcome {
    let mut pods: Vec<&Pod> = pods.iter().collect();
    pods.sort_by(|a, b| {
        b.metadata
            .creation_timestamp
            .cmp(&a.metadata.creation_timestamp)
    });
    let message = |statuses: Option<&Vec<ContainerStatus>>, name: &str| {
        statuses?
            .iter()
            .find(|c| c.name == name)?
            .state
            .as_ref()?
            .terminated
            .as_ref()?
            .message
            .clone()
    };
    let mut o = JobOutcome {
        has_golden_set,
        ..Default::default()
    };
    for p in pods {
        let Some(st) = p.status.as_ref() else {
            continue;
        };
        let verify = message(st.init_container_statuses.as_ref(), VERIFY_CONTAINER)
            .and_then(|m| serde_json::from_str::<VerifyResult>(m.trim()).ok());
        let Some(verify) = verify else { continue };
        // A fetch failure is transient: the Job retries; wait for a later pod's answer.
        if !verify.ok && verify.reason.as_deref() == Some("FetchFailed") {
            continue;
        }
        o.validate = message(st.container_statuses.as_ref(), VALIDATE_CONTAINER)
            .and_then(|m| serde_json::from_str::<ValidateResult>(m.trim()).ok());
        o.verify = Some(verify);
        break;
    }
    o.failed = job.and_then(|j| {
        j.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Failed" && c.status == "True")
            .map(|c| {
                c.message
                    .clone()
                    .or(c.reason.clone())
                    .unwrap_or_else(|| "failed".into())
            })
    });
    o
}

/// The reconcile entry point.
pub async fn reconcile(mv: Arc<ModelVersion>, ctx: Arc<Context>) -> Result<Action, Error> {
    super::traced(KIND, mv.as_ref(), &ctx, reconcile_inner(&mv, &ctx)).await
}

async fn reconcile_inner(mv: &ModelVersion, ctx: &Context) -> Result<Action, Error> {
    if mv.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = mv
        .namespace()
        .ok_or_else(|| Error::NoNamespace(mv.name_any()))?;
    let name = mv.name_any();
    let current = mv.status.clone().unwrap_or_default();
    let generation = mv.meta().generation;
    if decided(&current) && current.observed_generation == generation {
        return Ok(Action::await_change());
    }
    // The cluster's trust policies decide which keys verify it, or refuse it outright.
    let trust = match super::trust::applied(&ctx.client, mv, &ns).await? {
        Ok(t) => t,
        Err(v) => {
            let next = refuse(&current, generation, &v, now());
            if mv.status.is_none() || next != current {
                info!(modelversion = %name, policy = %v.policy, "refused by a ModelTrustPolicy");
                write_status(ctx, &ns, &name, &next).await?;
            }
            return Ok(Action::await_change());
        }
    };
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let jname = job_name(&name);
    let mut job = jobs
        .get_opt(&jname)
        .await
        .map_err(|e| Error::kube(format!("reading Job {jname}"), e))?;
    if job.is_none()
        && let Some(j) = verification_job(mv, &ctx.defaults, trust.as_ref())
    {
        match jobs
            .create(
                &PostParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &j,
            )
            .await
        {
            Ok(created) => {
                info!(job = %jname, modelversion = %name, "created the verification Job");
                job = Some(created);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(Error::kube(format!("creating Job {jname}"), e)),
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod_list = pods
        .list(&ListParams::default().labels(&format!("{MODEL_VERSION_LABEL}={name}")))
        .await
        .map_err(|e| Error::kube("listing verification pods", e))?
        .items;
    // Only the Job's own pods carry its results; a look-alike with the label is ignored.
    let pod_list: Vec<Pod> = match job.as_ref().and_then(|j| j.metadata.uid.as_deref()) {
        Some(uid) => owned::job_pods(&pod_list, uid)
            .into_iter()
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    let o = outcome(job.as_ref(), &pod_list, mv.spec.validation.is_some());
    let mut next = compose(&current, generation, &jname, &o, now());
    next.trust = trust;
    if mv.status.is_none() || next != current {
        write_status(ctx, &ns, &name, &next).await?;
    }
    Ok(if decided(&next) {
        Action::await_change()
    } else {
        Action::requeue(std::time::Duration::from_secs(15))
    })
}

#[cfg(test)]
mod tests;
