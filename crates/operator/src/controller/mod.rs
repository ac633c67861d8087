//! The two controllers (InferenceService and ModelVersion), their shared [`Context`], the error
//! policy (per-object exponential backoff), the trace of each reconcile and [`run`], which
//! drives both until shutdown; [`trust`] reads what a ModelVersion's trust decision needs;
//! [`optional`] applies or removes the owned objects a spec may not ask for; [`echo`] keeps the
//! operator's own writes from triggering the reconcile that made them; [`version_events`] passes
//! on only the ModelVersion changes a service's reconcile can see.

pub mod echo;
pub mod inference_service;
pub mod model_version;
pub mod optional;
pub mod trust;
pub mod version_events;

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        autoscaling::v2::HorizontalPodAutoscaler,
        batch::v1::Job,
        core::v1::{ConfigMap, Pod, Service, ServiceAccount},
        policy::v1::PodDisruptionBudget,
        rbac::v1::{Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kinfer_api::{InferenceService, ModelVersion, report::INFERENCE_SERVICE_LABEL};
use kinfer_contract::backoff::Backoff;
use kinfer_contract::telemetry::TARGET;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::{Action, Config},
        events::{Recorder, Reporter},
        reflector::{self, ObjectRef, reflector},
        watcher::{self, watcher},
    },
};
use serde::{Serialize, de::DeserializeOwned};
use tracing::{Instrument, field::Empty, info_span, warn};

use crate::{
    Error, FIELD_MANAGER, alerts::Alerter, metrics::Metrics, objects::Defaults,
    objects::job::MODEL_VERSION_LABEL,
};

/// What every reconcile shares.
pub struct Context {
    /// API client.
    pub client: Client,
    /// Images and pull policy.
    pub defaults: Defaults,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Event recorder (reporting controller `kinfer-operator`).
    pub recorder: Recorder,
    /// Alert delivery actor.
    pub alerter: Alerter,
    /// Consecutive failures per object, for the error policy's backoff.
    /// std `Mutex`: held for a map update only, never across an await.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context; `instance` names this replica in Events.
    pub fn new(
        client: Client,
        defaults: Defaults,
        metrics: Arc<Metrics>,
        alerter: Alerter,
        instance: String,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(instance),
            },
        );
        Self {
            client,
            defaults,
            metrics,
            recorder,
            alerter,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    fn failed(&self, key: &str) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_owned()).or_default();
        *n += 1;
        *n
    }
}

/// Runs one reconcile of `obj` as a trace of its own (root span `reconcile <Kind>` with the
/// object's namespace and name, an error status when it fails), counts it in the metrics and
/// resets the object's backoff when it succeeds.
pub(crate) async fn traced<K: Resource<DynamicType = ()>>(
    kind: &'static str,
    obj: &K,
    ctx: &Context,
    work: impl Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    let span = info_span!(target: TARGET, parent: None, "reconcile",
        otel.name = %format_args!("reconcile {kind}"),
        otel.kind = "internal",
        otel.status_code = Empty,
        error = Empty,
        k8s.namespace.name = obj.meta().namespace.as_deref().unwrap_or(""),
        kinfer.object = obj.meta().name.as_deref().unwrap_or(""),
        kinfer.generation = obj.meta().generation.unwrap_or(0),
    );
    let started = std::time::Instant::now();
    let r = work.instrument(span.clone()).await;
    let label = r.as_ref().err().map(Error::metric_label);
    if let Err(e) = &r {
        span.record("otel.status_code", "ERROR");
        span.record("error", tracing::field::display(e));
    }
    ctx.metrics
        .reconciled(kind, started.elapsed(), label.as_deref());
    if r.is_ok() {
        ctx.succeeded(&key(obj));
    }
    r
}

/// When a service is looked at again without an event: a rollout in progress after 2 min, an
/// idle service after 10 min, each plus up to a fifth more, spread by the object's uid so that
/// services reconciled together (a cold start) do not all come back together. Every change that
/// moves a rollout (its pods and their annotations, its ModelVersions, its owned objects)
/// triggers a reconcile at once; this is only the net under a lost event. A shorter net (30 s)
/// once had 1,000 services in rollout re-reconciled faster than the operator reached the ones
/// not yet reconciled at all (docs/operator.md, "Scale").
pub fn resync_after(busy: bool, uid: &str) -> Duration {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let base = if busy { RESYNC_BUSY } else { RESYNC_IDLE };
    let mut h = DefaultHasher::new();
    uid.hash(&mut h);
    let spread = (h.finish() % 1_000) as u32;
    base + base / 5 * spread / 1_000
}

/// The net under a rollout in progress (see [`resync_after`]).
pub const RESYNC_BUSY: Duration = Duration::from_secs(120);
/// The net under an idle service (see [`resync_after`]).
pub const RESYNC_IDLE: Duration = Duration::from_secs(600);

/// Requeue after consecutive failures of one object: 1s, 2s, 4s … capped at 5 minutes.
pub const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));

fn key<K: Resource<DynamicType = ()>>(o: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        o.meta().namespace.as_deref().unwrap_or(""),
        o.meta().name.as_deref().unwrap_or("")
    )
}

fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    let n = ctx.failed(&key(obj.as_ref()));
    let wait = BACKOFF.delay(n);
    warn!(object = %key(obj.as_ref()), error = %err, failures = n, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// The current time, whole seconds (what the API server stores for conditions).
pub fn now() -> Time {
    let s = Timestamp::now().as_second();
    Time(Timestamp::from_second(s).unwrap_or_else(|_| Timestamp::now()))
}

/// Server-side applies `obj` with the operator's field manager, forcing ownership.
pub async fn apply<K>(api: Api<K>, obj: &K) -> Result<K, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .inspect(echo::record)
    .map_err(|e| {
        Error::kube(
            format!(
                "applying {} {name}",
                std::any::type_name::<K>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("object")
            ),
            e,
        )
    })
}

fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        Some(n) => Api::namespaced(client.clone(), n),
        None => Api::all(client.clone()),
    }
}

/// `ctrl` also reconciles the InferenceService that controls an object of kind `K` (selected by
/// `owned`) when that object changes, except for the operator's own writes
/// ([`echo::owner_unless_echo`]).
fn watch_owned<K>(
    ctrl: Controller<InferenceService>,
    client: &Client,
    ns: Option<&str>,
    owned: &watcher::Config,
) -> Controller<InferenceService>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    ctrl.watches(api::<K>(client, ns), owned.clone(), echo::owner_unless_echo)
}

/// Runs both controllers until `shutdown` resolves; in-flight reconciles finish first.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let c = &ctx.client;
    let ns = namespace.as_deref();
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    let cfg = Config::default().concurrency(concurrency);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let shutdown_both = {
        let tx = tx.clone();
        async move {
            shutdown.await;
            let _ = tx.send(true);
        }
    };
    tokio::spawn(shutdown_both);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };

    // As Controller::new builds it, except that the echo of a status write this operator made
    // triggers nothing (the store still takes it).
    let (reader, writer) = reflector::store();
    let isvc_trigger = reflector(
        writer,
        watcher(
            api::<InferenceService>(c, ns),
            watcher::Config::default().any_semantic(),
        ),
    )
    .applied_objects()
    .try_filter(|isvc| std::future::ready(!echo::is_own_status_echo(isvc)));
    let mut isvc_ctrl = Controller::for_stream(isvc_trigger, reader);
    let store = isvc_ctrl.store();
    isvc_ctrl = watch_owned::<Deployment>(isvc_ctrl, c, ns, &owned);
    isvc_ctrl = watch_owned::<Service>(isvc_ctrl, c, ns, &owned);
    isvc_ctrl = watch_owned::<PodDisruptionBudget>(isvc_ctrl, c, ns, &owned);
    isvc_ctrl = watch_owned::<ServiceAccount>(isvc_ctrl, c, ns, &owned);
    isvc_ctrl = watch_owned::<Role>(isvc_ctrl, c, ns, &owned);
    isvc_ctrl = watch_owned::<RoleBinding>(isvc_ctrl, c, ns, &owned);
    isvc_ctrl = watch_owned::<HorizontalPodAutoscaler>(isvc_ctrl, c, ns, &owned);
    isvc_ctrl = watch_owned::<ConfigMap>(isvc_ctrl, c, ns, &owned);
    let isvcs = isvc_ctrl
        .watches(
            api::<Pod>(c, ns),
            watcher::Config::default().labels(INFERENCE_SERVICE_LABEL),
            |pod: Pod| {
                let ns = pod.namespace();
                pod.labels()
                    .get(INFERENCE_SERVICE_LABEL)
                    .map(|n| ObjectRef::new(n).within(ns.as_deref().unwrap_or_default()))
            },
        )
        .watches_stream(
            version_events::relevant(watcher(
                api::<ModelVersion>(c, ns),
                watcher::Config::default(),
            )),
            move |mv: ModelVersion| {
                let name = mv.name_any();
                let ns = mv.namespace();
                store
                    .state()
                    .into_iter()
                    .filter(|i| {
                        i.namespace() == ns
                            && (i.spec.model_version == name
                                || i.status.as_ref().and_then(|s| s.serving_version.as_deref())
                                    == Some(name.as_str()))
                    })
                    .map(|i| ObjectRef::from_obj(i.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .with_config(cfg.clone())
        .graceful_shutdown_on(wait(rx.clone()))
        .run(
            inference_service::reconcile,
            error_policy::<InferenceService>,
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "InferenceService controller event");
            }
        })
        .instrument(info_span!("inferenceservice_controller"));

    let mvs = Controller::new(
        api::<ModelVersion>(c, ns),
        watcher::Config::default().any_semantic(),
    )
    .owns(api::<Job>(c, ns), owned.clone())
    .watches(
        api::<Pod>(c, ns),
        watcher::Config::default().labels(MODEL_VERSION_LABEL),
        |pod: Pod| {
            let ns = pod.namespace();
            pod.labels()
                .get(MODEL_VERSION_LABEL)
                .map(|n| ObjectRef::new(n).within(ns.as_deref().unwrap_or_default()))
        },
    )
    .with_config(cfg)
    .graceful_shutdown_on(wait(rx))
    .run(
        model_version::reconcile,
        error_policy::<ModelVersion>,
        ctx.clone(),
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "ModelVersion controller event");
        }
    })
    .instrument(info_span!("modelversion_controller"));

    futures::join!(isvcs, mvs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resync_is_spread_by_uid_within_a_fifth_above_its_base() {
        for (busy, base) in [(true, RESYNC_BUSY), (false, RESYNC_IDLE)] {
            let waits: Vec<Duration> = (0..200)
                .map(|i| resync_after(busy, &format!("uid-{i}")))
                .collect();
            assert!(waits.iter().all(|w| *w >= base && *w <= base + base / 5));
            let (lo, hi) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
            assert!(*hi - *lo > base / 10, "spread: {lo:?}..{hi:?}");
            assert_eq!(
                resync_after(busy, "uid-7"),
                waits[7],
                "the same uid, the same wait"
            );
        }
        assert!(resync_after(true, "u") < resync_after(false, "u"));
    }
}
