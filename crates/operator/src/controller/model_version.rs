//! Reconciles one ModelVersion: creates its verification Job once, reads the two containers'
//! termination messages (the pod contract's JSON results) and writes `Verified` / `Validated`,
//! `digest`, `signer` and `validationResult` into its status. A decided ModelVersion is never
//! verified again (its spec is immutable).

use std::{sync::Arc, time::Instant};

use k8s_openapi::api::{
    batch::v1::Job,
    core::v1::{ContainerStatus, Pod},
};
use kinfer_api::{
    ModelVersion, ModelVersionStatus,
    conditions::{self, Status, VALIDATED, VERIFIED},
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
    s
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
    let started = Instant::now();
    let r = reconcile_inner(&mv, &ctx).await;
    let label = r.as_ref().err().map(Error::metric_label);
    ctx.metrics
        .reconciled(KIND, started.elapsed(), label.as_deref());
    if r.is_ok() {
        ctx.succeeded(&super::key(mv.as_ref()));
    }
    r
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
mod tests {
    use super::*;
    use k8s_openapi::{
        api::{
            batch::v1::{JobCondition, JobStatus},
            core::v1::{ContainerState, ContainerStateTerminated, PodStatus},
        },
        apimachinery::pkg::apis::meta::v1::Time,
        jiff::Timestamp,
    };

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn terminated(name: &str, msg: &str) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    message: Some(msg.into()),
                    exit_code: 0,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn pod(created: i64, verify: Option<&str>, validate: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.creation_timestamp = Some(at(created));
        p.status = Some(PodStatus {
            init_container_statuses: verify.map(|m| vec![terminated(VERIFY_CONTAINER, m)]),
            container_statuses: validate.map(|m| vec![terminated(VALIDATE_CONTAINER, m)]),
            ..Default::default()
        });
        p
    }

    fn cond<'a>(s: &'a ModelVersionStatus, t: &str) -> (&'a str, &'a str) {
        let c = conditions::find(&s.conditions, t).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn copies_both_results_into_status() {
        let pods = [pod(
            10,
            Some(
                r#"{"ok":true,"digest":"sha256:ab","signer":"release.pem sha256:cd","reason":null,"message":"ok"}"#,
            ),
            Some(
                r#"{"ok":true,"samples":64,"maxAbsError":1e-7,"maxRelError":2e-6,"agreement":1.0,"reason":null,"message":"ok"}"#,
            ),
        )];
        let o = outcome(None, &pods, true);
        let s = compose(&Default::default(), Some(1), "v8-verify", &o, at(20));
        assert_eq!(cond(&s, VERIFIED), ("True", "SignatureValid"));
        assert_eq!(cond(&s, VALIDATED), ("True", "GoldenSetMatched"));
        assert_eq!(s.digest.as_deref(), Some("sha256:ab"));
        assert_eq!(s.signer.as_deref(), Some("release.pem sha256:cd"));
        let r = s.validation_result.as_ref().unwrap();
        assert_eq!((r.samples, r.agreement), (64, 1.0));
        assert!(decided(&s));
        assert!(
            conditions::find(&s.conditions, VALIDATED)
                .unwrap()
                .message
                .contains("64 samples")
        );
        // Same findings later: no change.
        assert_eq!(compose(&s, Some(1), "v8-verify", &o, at(99)), s);
    }

    #[test]
    fn signature_failure_rejects() {
        let pods = [pod(
            10,
            Some(
                r#"{"ok":false,"reason":"SignatureInvalid","message":"no trusted key verifies model.sig"}"#,
            ),
            None,
        )];
        let s = compose(
            &Default::default(),
            Some(1),
            "j",
            &outcome(None, &pods, true),
            at(1),
        );
        assert_eq!(cond(&s, VERIFIED), ("False", "SignatureInvalid"));
        assert!(!decided(&s), "Validated stays Unknown");
        let st = crate::controller::inference_service::version_state(Some(&{
            let mut m = crate::objects::job::tests::mv(
                "v8",
                r#"{"model":"f","version":"v8","source":{"uri":"s3://bucket/x/"}}"#,
            );
            m.status = Some(s);
            m
        }));
        assert!(matches!(st, crate::rollout::VersionState::Rejected { .. }));
    }

    #[test]
    fn golden_set_mismatch_rejects_with_figures() {
        let pods = [pod(
            10,
            Some(r#"{"ok":true,"digest":"sha256:ab","signer":"k"}"#),
            Some(
                r#"{"ok":false,"samples":64,"maxAbsError":0.5,"maxRelError":0.9,"agreement":0.5,"reason":"NumericalMismatch","message":"32 of 64 samples disagree"}"#,
            ),
        )];
        let s = compose(
            &Default::default(),
            Some(1),
            "j",
            &outcome(None, &pods, true),
            at(1),
        );
        assert_eq!(cond(&s, VALIDATED), ("False", "NumericalMismatch"));
        assert!(
            conditions::find(&s.conditions, VALIDATED)
                .unwrap()
                .message
                .contains("agreement 0.5000")
        );
        assert_eq!(s.validation_result.unwrap().agreement, 0.5);
    }

    #[test]
    fn a_success_without_digest_is_not_verified() {
        // Pods serve only the recorded digest, so a result that records none verifies nothing.
        let pods = [pod(
            10,
            Some(r#"{"ok":true,"signer":"k"}"#),
            Some(r#"{"ok":true}"#),
        )];
        let s = compose(
            &Default::default(),
            Some(1),
            "j",
            &outcome(None, &pods, false),
            at(1),
        );
        assert_eq!(cond(&s, VERIFIED), ("False", "VerificationFailed"));
        assert!(s.digest.is_none());
    }

    #[test]
    fn running_then_transient_fetch_failure_waits() {
        let s = compose(
            &Default::default(),
            Some(1),
            "j",
            &outcome(None, &[], true),
            at(1),
        );
        assert_eq!(cond(&s, VERIFIED), ("Unknown", "Verifying"));
        let pods = [pod(
            10,
            Some(r#"{"ok":false,"reason":"FetchFailed","message":"503"}"#),
            None,
        )];
        let o = outcome(None, &pods, true);
        assert!(o.verify.is_none());
        // The newest pod's answer wins.
        let pods = [
            pod(10, Some(r#"{"ok":false,"reason":"FetchFailed"}"#), None),
            pod(
                20,
                Some(r#"{"ok":true,"signer":"k","digest":"d"}"#),
                Some(r#"{"ok":true}"#),
            ),
        ];
        let o = outcome(None, &pods, false);
        let s = compose(&Default::default(), Some(1), "j", &o, at(1));
        assert_eq!(cond(&s, VALIDATED), ("True", "Loaded"));
        assert!(s.validation_result.is_none());
    }

    #[test]
    fn failed_job_without_results_rejects() {
        let job = Job {
            status: Some(JobStatus {
                conditions: Some(vec![JobCondition {
                    type_: "Failed".into(),
                    status: "True".into(),
                    reason: Some("BackoffLimitExceeded".into()),
                    message: Some("Job has reached the specified backoff limit".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let o = outcome(Some(&job), &[], true);
        let s = compose(&Default::default(), Some(1), "v8-verify", &o, at(1));
        assert_eq!(cond(&s, VERIFIED), ("False", "VerificationJobFailed"));
        assert!(
            conditions::find(&s.conditions, VERIFIED)
                .unwrap()
                .message
                .contains("backoff limit")
        );
    }
}
