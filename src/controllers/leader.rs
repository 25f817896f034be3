//! Leader election through a `coordination.k8s.io` Lease, with get/create/update only.
//!
//! `kube-lease-manager` 0.13 builds against kube 5 but renews with PATCH; Spawner's RBAC
//! (src/rbac.rs) grants the controller get/create/update on Leases, and an update carrying the
//! resourceVersion is exactly the compare-and-swap leader election needs. The algorithm is
//! client-go's: expiry is judged by *this* process's clock since it last saw the Lease change
//! (never by comparing timestamps written by another node), a holder stops leading when it could
//! not renew for `renew_deadline` (shorter than the lease duration), and a clean shutdown
//! releases the Lease so a standby takes over at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// A Lease API call that failed for a reason other than losing a race.
#[derive(Debug, thiserror::Error)]
#[error("failed to {action} Lease {name}: {source}")]
pub struct Error {
    action: &'static str,
    name: String,
    #[source]
    source: kube::Error,
}

/// Leader election timings (client-go's defaults).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How long a Lease holds without renewal before others may take it.
    pub lease_duration: Duration,
    /// How long the leader keeps leading while renewals fail.
    pub renew_deadline: Duration,
    /// How often to renew (leader) or retry (standby).
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// One candidate for the Lease.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The Lease's resourceVersion as last seen, and when (local clock).
    observed: Option<(String, Instant)>,
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timing: Timing) -> Self {
        Self { api, name: name.to_string(), identity: identity.to_string(), timing, observed: None }
    }

    /// Waits until this candidate holds the Lease (`true`) or `stop` is cancelled (`false`).
    /// API errors are retried: a standby must survive API server restarts.
    pub async fn acquire(&mut self, stop: &CancellationToken) -> Result<bool, Error> {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "leader election attempt failed"),
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(false),
                () = tokio::time::sleep(self.timing.retry_period) => {}
            }
        }
    }

    /// Renews the Lease every retry period until `stop` is cancelled (then releases it) or
    /// renewals fail for `renew_deadline` (then cancels `lost`).
    pub async fn hold(mut self, stop: CancellationToken, lost: CancellationToken) {
        let mut last_renewal = Instant::now();
        loop {
            tokio::select! {
                () = stop.cancelled() => {
                    self.release().await;
                    return;
                }
                () = tokio::time::sleep(self.timing.retry_period) => {}
            }
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "another replica took the Lease");
                    lost.cancel();
                    return;
                }
                Err(e) => warn!(error = %e, "failed to renew the Lease"),
            }
            if last_renewal.elapsed() >= self.timing.renew_deadline {
                warn!(lease = %self.name, "could not renew the Lease in time");
                lost.cancel();
                return;
            }
        }
    }

    /// One round: take the Lease if it is free, expired or ours, renewing it if ours.
    /// `Ok(false)` when another replica holds it or won the race.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let now = Timestamp::now();
        let Some(lease) = self.api.get_opt(&self.name).await.map_err(|e| self.error("get", e))? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(self.spec(None, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    info!(lease = %self.name, "created the Lease");
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(false),
                Err(e) => Err(self.error("create", e)),
            };
        };
        self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        if holder.is_some_and(|h| h != self.identity) && !self.expired(&spec) {
            debug!(lease = %self.name, holder = ?holder, "Lease held by another replica");
            return Ok(false);
        }
        let mut updated = lease.clone();
        updated.spec = Some(self.spec(Some(&spec), now));
        match self.api.replace(&self.name, &PostParams::default(), &updated).await {
            Ok(renewed) => {
                self.observe(&renewed);
                Ok(true)
            }
            // Someone else updated it since we read it: they won this round.
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(self.error("update", e)),
        }
    }

    /// Gives the Lease up (holder cleared, 1 s duration) so a standby takes over at once.
    pub async fn release(&mut self) {
        let result = async {
            let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(()) };
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            self.api.replace(&self.name, &PostParams::default(), &lease).await.map(|_| ())
        }
        .await;
        match result {
            Ok(()) => info!(lease = %self.name, "released the Lease"),
            Err(e) => warn!(lease = %self.name, error = %e, "failed to release the Lease; it expires on its own"),
        }
    }

    fn spec(&self, old: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let ours = old.and_then(|s| s.holder_identity.as_deref()) == Some(self.identity.as_str());
        let transitions = old.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease_duration.as_secs().try_into().unwrap_or(15)),
            acquire_time: if ours { old.and_then(|s| s.acquire_time.clone()) } else { Some(MicroTime(now)) },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if ours || old.is_none() { transitions } else { transitions + 1 }),
            ..LeaseSpec::default()
        }
    }

    fn observe(&mut self, lease: &Lease) {
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().map(|(seen, _)| seen) != Some(&rv) {
            self.observed = Some((rv, Instant::now()));
        }
    }

    /// Whether the holder has not renewed for its lease duration, by our own clock.
    fn expired(&self, spec: &LeaseSpec) -> bool {
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.timing.lease_duration, Duration::from_secs);
        self.observed.as_ref().is_some_and(|(_, at)| at.elapsed() >= duration)
    }

    fn error(&self, action: &'static str, source: kube::Error) -> Error {
        Error { action, name: self.name.clone(), source }
    }
}
