//! The sweep itself: deleting a `SessionLivedBackend` through the API with a UID precondition,
//! and the Event that tells users why it went away.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};

use super::ErrorChain;
use super::follower::{Sweep, SweepError, SweepOutcome, Sweeper};
use crate::crd::SessionLivedBackend;

/// Errors of reading or deleting a backend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read SessionLivedBackend {namespace}/{name}")]
    Get {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("failed to delete SessionLivedBackend {namespace}/{name} (uid {uid})")]
    Delete {
        namespace: String,
        name: String,
        uid: String,
        #[source]
        source: kube::Error,
    },
}

/// The backend a pod belongs to, from the pod's controller owner reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl BackendRef {
    fn object_reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some(SessionLivedBackend::api_version(&()).into_owned()),
            kind: Some(SessionLivedBackend::kind(&()).into_owned()),
            namespace: Some(self.namespace.clone()),
            name: Some(self.name.clone()),
            uid: Some(self.uid.clone()),
            ..ObjectReference::default()
        }
    }
}

/// Deletes backends through the API and records Events, for every follower on this node.
#[derive(Clone)]
pub struct ApiSweeper {
    client: Client,
    recorder: Recorder,
    node: String,
}

impl ApiSweeper {
    pub fn new(client: Client, node: String) -> Self {
        let reporter = Reporter { controller: crate::names::SWEEPER.into(), instance: Some(node.clone()) };
        Self { recorder: Recorder::new(client.clone(), reporter), client, node }
    }

    /// The sweeper for one backend, handed to its follower.
    pub fn for_backend(&self, backend: BackendRef) -> Arc<dyn Sweeper> {
        Arc::new(BackendSweeper { api: self.clone(), backend })
    }

    /// The backend's grace period, or `None` when the backend is gone or has been replaced by
    /// a new one of the same name (this pod is then an orphan the garbage collector removes).
    pub async fn grace_period(&self, backend: &BackendRef) -> Result<Option<Duration>, Error> {
        let api: Api<SessionLivedBackend> = Api::namespaced(self.client.clone(), &backend.namespace);
        match api.get_opt(&backend.name).await {
            Ok(Some(found)) if found.metadata.uid.as_deref() == Some(backend.uid.as_str()) => {
                Ok(Some(Duration::from_secs(found.spec.grace_period_seconds.max(0) as u64)))
            }
            Ok(_) => Ok(None),
            Err(source) => Err(Error::Get { namespace: backend.namespace.clone(), name: backend.name.clone(), source }),
        }
    }

    async fn delete(&self, backend: &BackendRef, sweep: &Sweep) -> Result<SweepOutcome, Error> {
        let api: Api<SessionLivedBackend> = Api::namespaced(self.client.clone(), &backend.namespace);
        let params = DeleteParams {
            // Only the backend this pod belongs to: a new backend with the same name, created
            // since, is someone else's session.
            preconditions: Some(Preconditions { uid: Some(backend.uid.clone()), resource_version: None }),
            ..DeleteParams::default()
        };
        match api.delete(&backend.name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() || status.is_conflict() => {
                tracing::info!(
                    backend = %backend.name,
                    namespace = %backend.namespace,
                    reason = %status.reason,
                    "backend already gone or replaced; nothing to sweep"
                );
                return Ok(SweepOutcome::AlreadyGone);
            }
            Err(source) => {
                return Err(Error::Delete {
                    namespace: backend.namespace.clone(),
                    name: backend.name.clone(),
                    uid: backend.uid.clone(),
                    source,
                });
            }
        }
        let event = Event {
            type_: EventType::Normal,
            reason: "IdleTimeout".into(),
            note: Some(format!(
                "No live connection for {}s (gracePeriodSeconds {}): swept by {} on node {}",
                sweep.idle.as_secs(),
                sweep.grace.as_secs(),
                crate::names::SWEEPER,
                self.node
            )),
            action: "Sweep".into(),
            secondary: None,
        };
        // The backend is gone either way; a lost Event is worth a log line, not a retry.
        if let Err(err) = self.recorder.publish(&event, &backend.object_reference()).await {
            tracing::warn!(
                backend = %backend.name,
                namespace = %backend.namespace,
                error = %ErrorChain(&err),
                "failed to record the IdleTimeout Event"
            );
        }
        Ok(SweepOutcome::Swept)
    }
}

struct BackendSweeper {
    api: ApiSweeper,
    backend: BackendRef,
}

impl Sweeper for BackendSweeper {
    fn sweep(&self, sweep: Sweep) -> BoxFuture<'_, Result<SweepOutcome, SweepError>> {
        Box::pin(async move { self.api.delete(&self.backend, &sweep).await.map_err(SweepError::from) })
    }
}
