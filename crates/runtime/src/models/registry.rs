//! The versions of the served model and which one serves. The request path reads the serving
//! version with one atomic load (`arc-swap`) and holds an `Arc` to it for the request's life, so
//! a swap never waits for requests and an in-flight request finishes on the version it started
//! on. Writes (stage, promote, rollback, unload) come from the admin API and are serialised by a
//! mutex that the request path never takes.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
};

use arc_swap::{ArcSwap, ArcSwapOption};

use super::{stats::Histogram, version::LoadedVersion};
use crate::error::InferError;

/// Why an admin operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// No such version is loaded.
    #[error("version '{0}' is not loaded; stage it first")]
    NotLoaded(String),
    /// The version is loaded already.
    #[error(
        "version '{0}' is already loaded; unload it first to load other bytes under that label"
    )]
    AlreadyLoaded(String),
    /// The version serves and cannot be unloaded.
    #[error("version '{0}' is serving; promote another version before unloading it")]
    Serving(String),
    /// Nothing to roll back to.
    #[error("no previous version to roll back to")]
    NoPrevious,
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

    /// A JSON summary.
    pub fn summary(&self) -> serde_json::Value {
        let compared = self.compared.load(Relaxed);
        serde_json::json!({
            "version": self.version.info.version,
            "sampleRate": self.rate,
            "mirrored": self.mirrored.load(Relaxed),
            "compared": compared,
            "agreed": self.agreed.load(Relaxed),
            "agreement": if compared == 0 { serde_json::Value::Null } else { (self.agreed.load(Relaxed) as f64 / compared as f64).into() },
            "errors": self.errors.load(Relaxed),
            "latency": super::stats::percentiles(&self.latency.snapshot()),
        })
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
            write: Mutex::new(()),
            swaps: AtomicU64::new(0),
            rollbacks: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A poisoned lock only means an admin call panicked; the maps are swapped whole.
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a loaded (not serving) version.
    pub fn stage(&self, v: Arc<LoadedVersion>) -> Result<(), RegistryError> {
        let _g = self.lock();
        let cur = self.versions.load_full();
        if cur.contains_key(&v.info.version) {
            return Err(RegistryError::AlreadyLoaded(v.info.version.clone()));
        }
        let mut next = (*cur).clone();
        next.insert(v.info.version.clone(), v);
        self.versions.store(Arc::new(next));
        Ok(())
    }

    /// Makes `version` serve; the one serving before becomes `previous` and stays loaded.
    /// Promoting the serving version again is a no-op. Returns the previous version's label.
    pub fn promote(&self, version: &str) -> Result<Option<String>, RegistryError> {
        let _g = self.lock();
        let v = self
            .versions
            .load()
            .get(version)
            .cloned()
            .ok_or_else(|| RegistryError::NotLoaded(version.into()))?;
        let old = self.serving.load_full();
        if old.as_ref().is_some_and(|o| Arc::ptr_eq(o, &v)) {
            return Ok(self
                .previous
                .load()
                .as_ref()
                .map(|p| p.info.version.clone()));
        }
        v.stats.reset();
        self.serving.store(Some(v));
        let prev_label = old.as_ref().map(|o| o.info.version.clone());
        if old.is_some() {
            self.previous.store(old);
        }
        self.swaps.fetch_add(1, Relaxed);
        Ok(prev_label)
    }

    /// Swaps back to the previous version at once. Returns (now serving, rolled back).
    pub fn rollback(&self) -> Result<(String, String), RegistryError> {
        let _g = self.lock();
        let prev = self.previous.load_full().ok_or(RegistryError::NoPrevious)?;
        let cur = self.serving.load_full();
        self.serving.store(Some(prev.clone()));
        self.previous.store(cur.clone());
        self.swaps.fetch_add(1, Relaxed);
        self.rollbacks.fetch_add(1, Relaxed);
        Ok((
            prev.info.version.clone(),
            cur.map(|c| c.info.version.clone()).unwrap_or_default(),
        ))
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
    ) -> Result<Option<serde_json::Value>, RegistryError> {
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
