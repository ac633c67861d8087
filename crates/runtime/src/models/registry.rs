//! The versions of the served model and which one serves. The request path reads the serving
//! version with one atomic load (`arc-swap`) and holds an `Arc` to it for the request's life, so
//! a swap never waits for requests and an in-flight request finishes on the version it started
//! on. Writes (stage, serve, rollback, unload) come from the admin API and are serialised by a
//! mutex that the request path never takes. Every write states the end state it wants (serve
//! *this* version, roll back *to* that one), so repeating a call whose answer was lost is harmless.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
};

use arc_swap::{ArcSwap, ArcSwapOption};

use kinfer_contract::admin::{BaselineSummary, ServeAnswer, ShadowSummary};

use super::{
    baseline::Baseline,
    ring::Ring,
    stats::{Histogram, percentiles},
    version::LoadedVersion,
};
use crate::error::InferError;

/// Why an admin operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such version is loaded.
    #[error("version '{0}' is not loaded; stage it first")]
    NotLoaded(String),
    /// The version is loaded already with the same bytes (or no digest to tell).
    #[error("version '{version}' is already loaded (digest {digest:?}); nothing to do")]
    AlreadyLoaded {
        /// The label.
        version: String,
        /// Its digest.
        digest: Option<String>,
    },
    /// The label serves (or is kept for rollback) with other bytes.
    #[error(
        "version '{version}' serves or is kept for rollback with other bytes (digest {loaded:?}); a ModelVersion re-created under the same name needs its pods to stop serving the old one first"
    )]
    OtherBytes {
        /// The label.
        version: String,
        /// The digest loaded now.
        loaded: Option<String>,
    },
    /// A paired baseline needs a serving version to compare with.
    #[error("no version serves yet; a baseline needs a serving version to compare with")]
    NothingServes,
    /// The baseline asked for is the serving version.
    #[error("version '{0}' is serving; the baseline must be another loaded version")]
    BaselineServes(String),
    /// The version serves and cannot be unloaded.
    #[error("version '{0}' is serving; serve another version before unloading it")]
    Serving(String),
}

/// A staged version receiving a mirrored sample of live traffic, off the request path.
pub struct Shadow {
    /// The staged version.
    pub version: Arc<LoadedVersion>,
    /// Fraction of live requests mirrored.
    pub rate: f64,
    counter: AtomicU64,
    /// Requests mirrored.
    pub mirrored: AtomicU64,
    /// Mirrored requests whose answer came back and was compared.
    pub compared: AtomicU64,
    /// Compared requests whose decision (arg-max / score >= 0.5 of the first output) matched.
    pub agreed: AtomicU64,
    /// Mirrored requests the shadow failed (queue full, error).
    pub errors: AtomicU64,
    /// Shadow latency.
    pub latency: Histogram,
}

impl Shadow {
    /// Whether the next live request is mirrored (every 1/rate-th, deterministic).
    pub fn sample(&self) -> bool {
        let n = self.counter.fetch_add(1, Relaxed) as f64;
        (n * self.rate).floor() != ((n + 1.0) * self.rate).floor()
    }

    /// The shadow's figures.
    pub fn summary(&self) -> ShadowSummary {
        let compared = self.compared.load(Relaxed);
        let agreed = self.agreed.load(Relaxed);
        ShadowSummary {
            version: self.version.info.version.clone(),
            sample_rate: self.rate,
            mirrored: self.mirrored.load(Relaxed),
            compared,
            agreed,
            agreement: (compared > 0).then(|| agreed as f64 / compared as f64),
            errors: self.errors.load(Relaxed),
            latency: percentiles(&self.latency.snapshot()),
        }
    }
}

/// The model's versions.
pub struct Registry {
    /// Model name served at `/v2/models/{name}`.
    pub name: String,
    versions: ArcSwap<BTreeMap<String, Arc<LoadedVersion>>>,
    serving: ArcSwapOption<LoadedVersion>,
    previous: ArcSwapOption<LoadedVersion>,
    shadow: ArcSwapOption<Shadow>,
    baseline: ArcSwapOption<Baseline>,
    ring: Option<Ring>,
    write: Mutex<()>,
    /// Promotions and rollbacks.
    pub swaps: AtomicU64,
    /// Rollbacks.
    pub rollbacks: AtomicU64,
    /// Set on SIGTERM: readiness goes false, new requests are refused.
    pub draining: AtomicBool,
}

impl Registry {
    /// An empty registry for `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            versions: ArcSwap::from_pointee(BTreeMap::new()),
            serving: ArcSwapOption::empty(),
            previous: ArcSwapOption::empty(),
            shadow: ArcSwapOption::empty(),
            baseline: ArcSwapOption::empty(),
            ring: None,
            write: Mutex::new(()),
            swaps: AtomicU64::new(0),
            rollbacks: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        }
    }

    /// The same registry keeping recent requests in `ring` for replay.
    pub fn with_ring(mut self, ring: Ring) -> Self {
        self.ring = Some(ring);
        self
    }

    /// The replay ring (`--replay-requests`), if kept.
    pub fn ring(&self) -> Option<&Ring> {
        self.ring.as_ref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A poisoned lock only means an admin call panicked; the maps are swapped whole.
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether staging `version` with `digest` has anything to do: `Ok(())` when it is not
    /// loaded or may be replaced (other bytes, not serving); otherwise why not.
    pub fn check_stage(&self, version: &str, digest: Option<&str>) -> Result<(), RegistryError> {
        let Some(cur) = self.get(version) else {
            return Ok(());
        };
        if digest.is_none() || cur.digest.as_deref() == digest {
            return Err(RegistryError::AlreadyLoaded {
                version: version.into(),
                digest: cur.digest.clone(),
            });
        }
        let kept = |slot: &ArcSwapOption<LoadedVersion>| {
            slot.load().as_ref().is_some_and(|s| Arc::ptr_eq(s, &cur))
        };
        if kept(&self.serving) || kept(&self.previous) {
            return Err(RegistryError::OtherBytes {
                version: version.into(),
                loaded: cur.digest.clone(),
            });
        }
        Ok(())
    }

    /// Adds a loaded (not serving) version, replacing a loaded one with other bytes that does
    /// not serve (see [`Registry::check_stage`]).
    pub fn stage(&self, v: Arc<LoadedVersion>) -> Result<(), RegistryError> {
        let _g = self.lock();
        self.check_stage(&v.info.version, v.digest.as_deref())?;
        let mut next = (*self.versions.load_full()).clone();
        next.insert(v.info.version.clone(), v);
        self.versions.store(Arc::new(next));
        Ok(())
    }

    /// Makes `version` serve; the one serving before becomes `previous` and stays loaded.
    /// Serving the version that serves already changes nothing (`changed: false`): a repeated
    /// call is harmless. A promotion starts the version's "since promotion" statistics afresh; a
    /// `rollback` keeps them (they are what the version did before, the next analysis's
    /// baseline) and counts the change as a rollback.
    pub fn serve(&self, version: &str, rollback: bool) -> Result<ServeAnswer, RegistryError> {
        let _g = self.lock();
        let v = self
            .get(version)
            .ok_or_else(|| RegistryError::NotLoaded(version.into()))?;
        let old = self.serving.load_full();
        let changed = !old.as_ref().is_some_and(|o| Arc::ptr_eq(o, &v));
        if changed {
            if !rollback {
                v.stats.reset();
            }
            // A split compares the serving version with another: it ends with this change.
            self.baseline.store(None);
            self.serving.store(Some(v));
            if old.is_some() {
                self.previous.store(old);
            }
            self.swaps.fetch_add(1, Relaxed);
            if rollback {
                self.rollbacks.fetch_add(1, Relaxed);
            }
        }
        Ok(ServeAnswer {
            serving: version.to_owned(),
            previous: self.previous().map(|p| p.info.version.clone()),
            changed,
        })
    }

    /// Drops a version that does not serve. Requests already on it finish first.
    pub fn unload(&self, version: &str) -> Result<(), RegistryError> {
        let _g = self.lock();
        let cur = self.versions.load_full();
        let v = cur
            .get(version)
            .ok_or_else(|| RegistryError::NotLoaded(version.into()))?;
        if self
            .serving
            .load()
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, v))
        {
            return Err(RegistryError::Serving(version.into()));
        }
        if self
            .previous
            .load()
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, v))
        {
            self.previous.store(None);
        }
        if self
            .baseline
            .load()
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(&b.baseline.version, v))
        {
            self.baseline.store(None);
        }
        let mut next = (*cur).clone();
        next.remove(version);
        self.versions.store(Arc::new(next));
        Ok(())
    }

    /// Starts mirroring `rate` of live traffic to `version` (replacing any shadow); a rate of 0
    /// stops it. Returns the previous shadow's summary.
    pub fn set_shadow(
        &self,
        version: &str,
        rate: f64,
    ) -> Result<Option<ShadowSummary>, RegistryError> {
        let _g = self.lock();
        let old = self.shadow.load_full().map(|s| s.summary());
        if rate <= 0.0 {
            self.shadow.store(None);
            return Ok(old);
        }
        let v = self
            .get(version)
            .ok_or_else(|| RegistryError::NotLoaded(version.into()))?;
        self.shadow.store(Some(Arc::new(Shadow {
            version: v,
            rate: rate.min(1.0),
            counter: AtomicU64::new(0),
            mirrored: AtomicU64::new(0),
            compared: AtomicU64::new(0),
            agreed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: Histogram::default(),
        })));
        Ok(old)
    }

    /// Starts answering `fraction` of the serving version's live requests with `version`
    /// (replacing any split; its figures start afresh), comparing `pair_rate` of requests on
    /// both; a fraction of 0 stops. Returns the replaced split's final figures.
    pub fn set_baseline(
        &self,
        version: &str,
        fraction: f64,
        pair_rate: f64,
    ) -> Result<Option<BaselineSummary>, RegistryError> {
        let _g = self.lock();
        let old = self.baseline.load_full().map(|b| b.summary());
        if fraction <= 0.0 {
            self.baseline.store(None);
            return Ok(old);
        }
        let candidate = self.serving().ok_or(RegistryError::NothingServes)?;
        let v = self
            .get(version)
            .ok_or_else(|| RegistryError::NotLoaded(version.into()))?;
        if Arc::ptr_eq(&v, &candidate) {
            return Err(RegistryError::BaselineServes(version.into()));
        }
        self.baseline.store(Some(Arc::new(Baseline::new(
            candidate, v, fraction, pair_rate,
        ))));
        Ok(old)
    }

    /// The split, when `v` is the candidate it splits (a live request on the serving version).
    pub fn split_for(&self, v: &Arc<LoadedVersion>) -> Option<Arc<Baseline>> {
        let guard = self.baseline.load();
        let b = guard.as_ref()?;
        Arc::ptr_eq(&b.candidate.version, v).then(|| b.clone())
    }

    /// The current split.
    pub fn baseline(&self) -> Option<Arc<Baseline>> {
        self.baseline.load_full()
    }

    /// The shadow, when this live request is to be mirrored.
    pub fn shadow_sample(&self) -> Option<Arc<Shadow>> {
        let guard = self.shadow.load();
        let s = guard.as_ref()?;
        s.sample().then(|| s.clone())
    }

    /// The current shadow.
    pub fn shadow(&self) -> Option<Arc<Shadow>> {
        self.shadow.load_full()
    }

    /// The serving version.
    pub fn serving(&self) -> Option<Arc<LoadedVersion>> {
        self.serving.load_full()
    }

    /// The previous version.
    pub fn previous(&self) -> Option<Arc<LoadedVersion>> {
        self.previous.load_full()
    }

    /// A loaded version by label.
    pub fn get(&self, version: &str) -> Option<Arc<LoadedVersion>> {
        self.versions.load().get(version).cloned()
    }

    /// Every loaded version.
    pub fn all(&self) -> Vec<Arc<LoadedVersion>> {
        self.versions.load().values().cloned().collect()
    }

    /// Ready: a version serves and the server is not draining.
    pub fn ready(&self) -> bool {
        !self.draining.load(Relaxed) && self.serving.load().is_some()
    }

    /// Resolves the version a request asks for: the serving one when `version` is empty.
    pub fn resolve(
        &self,
        model: &str,
        version: Option<&str>,
    ) -> Result<Arc<LoadedVersion>, InferError> {
        if model != self.name {
            return Err(InferError::NotFound(format!(
                "unknown model '{model}'; this server serves '{}'",
                self.name
            )));
        }
        if self.draining.load(Relaxed) {
            return Err(InferError::Unavailable("server is shutting down".into()));
        }
        match version.filter(|v| !v.is_empty()) {
            None => self.serving().ok_or_else(|| {
                InferError::Unavailable(format!("model '{model}' has no serving version yet"))
            }),
            Some(v) => self.get(v).ok_or_else(|| {
                let known: Vec<String> = self.versions.load().keys().cloned().collect();
                InferError::NotFound(format!(
                    "model '{model}' has no version '{v}'; loaded: {known:?}"
                ))
            }),
        }
    }
}
