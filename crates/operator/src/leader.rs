//! Leader election on a `coordination.k8s.io/v1` Lease, written directly with `Api<Lease>`:
//! every write is a `replace` guarded by the `resourceVersion` that was read, so two replicas
//! racing for the Lease cannot both win (the loser gets 409 Conflict).
//!
//! A Lease is free when it has no holder or when its record has not changed for a whole lease
//! duration as seen by this replica's own clock — client-go's rule ([`lease_is_free`]). The
//! holder's `renewTime` is never compared with this replica's clock, so clock skew between nodes
//! cannot hand over a live lease. The leader renews every third of the duration and gives
//! leadership up when it could not renew within the renew deadline (two thirds of the duration,
//! so it has stopped before any follower may take over); every call to the API server has a
//! timeout of a third of the duration. On shutdown it releases the Lease (clears the holder) so a
//! follower takes over at once.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::sync::watch;
use tracing::{info, warn};

/// Settings of an elector.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (pod name + a random suffix).
    pub identity: String,
    /// Lease duration.
    pub duration: Duration,
}

/// Competes for one Lease.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    observed: Option<(String, Instant)>,
    last_renew: Option<Instant>,
}

impl Elector {
    /// An elector for `cfg`.
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            observed: None,
            last_renew: None,
        }
    }

    /// The identity this elector writes as holder.
    pub fn identity(&self) -> &str {
        &self.cfg.identity
    }

    /// One round: acquire or renew the Lease. Returns whether this replica holds it now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let dur = self.cfg.duration;
        let Some(current) = self.api.get_opt(&self.cfg.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.cfg.name.clone()),
                    namespace: Some(self.cfg.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.last_renew = Some(Instant::now());
                    Ok(true)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let rv = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let mine = holder.as_deref() == Some(self.cfg.identity.as_str());
        if !mine {
            // Track how long the record has stayed the same on our own clock.
            let fresh = !matches!(&self.observed, Some((r, _)) if *r == rv);
            if fresh {
                self.observed = Some((rv.clone(), Instant::now()));
            }
            let unchanged_for = self
                .observed
                .as_ref()
                .map(|(_, t)| t.elapsed())
                .unwrap_or_default();
            let lease_secs = spec
                .lease_duration_seconds
                .map(|s| Duration::from_secs(s.max(1) as u64))
                .unwrap_or(dur);
            if !lease_is_free(holder.as_deref(), unchanged_for, lease_secs) {
                return Ok(false);
            }
        }
        let acquire = if mine {
            spec.acquire_time.clone().map(|t| t.0).unwrap_or(now)
        } else {
            now
        };
        let mut next = current.clone();
        next.spec = Some(self.spec(
            acquire,
            now,
            if mine { transitions } else { transitions + 1 },
        ));
        match self
            .api
            .replace(&self.cfg.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => {
                if !mine {
                    info!(identity = %self.cfg.identity, previous = ?holder, "acquired the leader Lease");
                }
                self.last_renew = Some(Instant::now());
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the last successful renewal is older than the renew deadline (leadership lost).
    pub fn expired(&self) -> bool {
        self.last_renew
            .is_none_or(|t| t.elapsed() >= renew_deadline(self.cfg.duration))
    }

    /// Gives the Lease up if this replica holds it: clears the holder so a follower takes over at
    /// its next try instead of waiting for the lease to expire.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut l) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(());
        };
        let spec = l.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.cfg.name, &PostParams::default(), &l)
            .await?;
        self.last_renew = None;
        info!(identity = %self.cfg.identity, "released the leader Lease");
        Ok(())
    }

    fn spec(&self, acquire: Timestamp, renew: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.duration.as_secs().max(1) as i32),
            acquire_time: Some(MicroTime(acquire)),
            renew_time: Some(MicroTime(renew)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }
}

/// Runs the election until `shutdown` fires: publishes `true` on `leader` while this replica
/// holds the Lease, `false` when it loses it. Releases the Lease on shutdown.
pub async fn run(
    mut elector: Elector,
    leader: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let period = (elector.cfg.duration / 3).max(Duration::from_millis(200));
    loop {
        let round = tokio::time::timeout(period, elector.try_acquire_or_renew()).await;
        let holds = match round {
            Ok(Ok(h)) => h,
            failed => {
                match failed {
                    Ok(Err(e)) => warn!(error = %e, "leader election round failed"),
                    _ => warn!(timeout = ?period, "leader election round timed out"),
                }
                // Keep leading only while the last renewal is within the renew deadline.
                *leader.borrow() && !elector.expired()
            }
        };
        if *leader.borrow() != holds {
            if !holds {
                warn!(identity = %elector.identity(), "lost the leader Lease");
            }
            let _ = leader.send(holds);
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
    match tokio::time::timeout(period, elector.release()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(error = %e, "could not release the leader Lease; a follower takes over when it expires")
        }
        Err(_) => {
            warn!("releasing the leader Lease timed out; a follower takes over when it expires")
        }
    }
    let _ = leader.send(false);
}

/// Whether a Lease held by `holder` may be taken: no holder, or its record (`resourceVersion`)
/// unchanged for `lease` on this replica's own clock. The holder's `renewTime` does not count:
/// it was written by another node's clock.
pub fn lease_is_free(holder: Option<&str>, unchanged_for: Duration, lease: Duration) -> bool {
    holder.is_none() || unchanged_for >= lease
}

/// How long a leader keeps leading without a successful renewal: two thirds of the lease, so it
/// has stopped before a follower, which waits a whole lease, takes over.
pub fn renew_deadline(lease: Duration) -> Duration {
    lease.mul_f64(2.0 / 3.0)
}

/// An identity for this replica: `$POD_NAME` (or the hostname) plus a random-enough suffix, so
/// that a restarted pod with the same name does not think it already holds the Lease.
pub fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "kinfer-operator".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{base}_{:08x}", nanos ^ std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_free_only_when_unheld_or_unchanged_for_a_whole_lease() {
        let lease = Duration::from_secs(15);
        assert!(lease_is_free(None, Duration::ZERO, lease));
        assert!(!lease_is_free(Some("a"), Duration::from_secs(14), lease));
        assert!(lease_is_free(Some("a"), lease, lease));
        assert!(renew_deadline(lease) < lease);
        assert!(
            renew_deadline(lease) > lease / 3,
            "more than one renewal period"
        );
    }
}
