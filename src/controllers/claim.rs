//! A backend of a pool (`spec.poolRef`) takes one of its warm pods.
//!
//! 1. [`take`]: one merge patch, conditional on the pod's resourceVersion, makes the pod the
//!    backend's (controller owner reference and backend label, so its Service selects it). Two
//!    backends racing for a pod: one patch wins, the other gets 409 and tries the next pod. The
//!    pod never goes back: the pool controller only counts pods it controls. With token auth,
//!    the backend's Secret is written with a new token at the same time.
//! 2. [`hand_over`]: the controller claims the pod's sidecar (`POST /claim` on its admin port,
//!    with the pod's claim key), handing it that token and the session's settings.
//! 3. [`Mark`]: the pod is marked as handed over, in the same round trip as the backend's Ready
//!    status. The sidecar counts idle time from the claim, and the sweeper follows the pod only
//!    once it is marked.
//!
//! Interrupted before the Ready status, the next reconcile hands over again with a new token:
//! no client can have seen the old one. A pod found taken but not marked is therefore pushed to
//! again unless the backend's status, read afresh from the API server, is Ready on that pod (the
//! status is only written after a push): then it is only marked.
//!
//! A claimed pod is found again by its backend label and owner ([`claimed_pod`]): its name is
//! the warm pod's, not the backend's, and the backend's `status.podName` says it.

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use rand::seq::SliceRandom;
use serde_json::json;

use crate::controllers::children::{self, id};
use crate::controllers::context::Context;
use crate::controllers::pool::{self, POOL_LABEL, TEMPLATE_LABEL};
use crate::controllers::{Error, secret};
use crate::crd::{AuthMode, FIELD_MANAGER, Phase, SessionLivedBackend, SessionLivedBackendPool};
use crate::names;

pub use crate::names::HANDED_OVER_ANNOTATION;
use crate::sidecar::session::Session;
/// How long the sidecar gets to answer a claim.
const PUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// The backend as its pod is made: the pool's pod-shaping fields, the backend's own lifetime
/// limits.
pub fn effective(backend: &SessionLivedBackend, pool: &SessionLivedBackendPool) -> SessionLivedBackend {
    let mut shaped = backend.clone();
    let own = &backend.spec;
    shaped.spec = crate::crd::SessionLivedBackendSpec {
        startup_timeout_seconds: own.startup_timeout_seconds,
        max_lifetime_seconds: own.max_lifetime_seconds,
        pool_ref: own.pool_ref.clone(),
        values: own.values.clone(),
        ..pool.spec.backend_spec()
    };
    shaped
}

/// The backend's pod among the pods labelled with it: claimed from the pool, or made cold. A
/// claimed pod that is going away before it was ever handed over served no session and is
/// ignored (the backend then starts cold).
pub async fn claimed_pod(ctx: &Context, backend: &SessionLivedBackend, namespace: &str) -> Result<Option<Pod>, Error> {
    let name = backend.name_any();
    let mine = |pod: &Pod| {
        pod.labels().get(names::BACKEND_LABEL) == Some(&name)
            && pod.namespace().as_deref() == Some(namespace)
            && children::owned_by(pod, backend)
            && (pod.metadata.deletion_timestamp.is_none() || handed_over(pod, backend))
    };
    // A cached pod that still waits for its hand-over is read again from the API server: the
    // reconciliation before this one may have finished the hand-over (and made the backend
    // Ready) a moment before the cache saw the mark, and handing over again would draw a new
    // token after clients read the old one.
    // Keyed by the status's podName once a status named it; found by a scan of the cache only
    // in the moment between a take and the status that follows it (and for backends whose
    // status predates the field).
    let cached = ctx.caches.get::<Pod>().and_then(|cache| {
        let named = backend.status.as_ref().and_then(|s| s.pod_name.as_deref());
        named
            .and_then(|pod| cache.get(&ObjectRef::new(pod).within(namespace)))
            .filter(|pod| mine(pod))
            .or_else(|| cache.find(|pod| mine(pod)))
    });
    if let Some(pod) = cached
        && (!is_warm(&pod) || handed_over(&pod, backend))
    {
        return Ok(Some((*pod).clone()));
    }
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let listed = api
        .list(&ListParams::default().labels(&format!("{}={name}", names::BACKEND_LABEL)))
        .await
        .map_err(|e| Error::api("list", "Pod", &id(backend), e))?;
    Ok(listed.items.into_iter().find(mine))
}

/// Whether `pod` is a warm pod (made by a pool) rather than the backend's own.
pub fn is_warm(pod: &Pod) -> bool {
    pod.labels().contains_key(POOL_LABEL)
}

fn handed_over(pod: &Pod, backend: &SessionLivedBackend) -> bool {
    pod.annotations().get(HANDED_OVER_ANNOTATION).map(String::as_str) == backend.metadata.uid.as_deref()
}

/// A warm pod taken for a backend, and the token its Secret holds for it (token auth only).
pub struct Taken {
    pub pod: Pod,
    token: Option<String>,
}

/// Takes a Ready warm pod of the current template from `pool` for the backend (`shaped`: as its
/// pod is made), writing its Secret with a new token meanwhile; `None` when the pool has none
/// left (the Secret then serves the cold start, whose pod mounts it).
pub async fn take(
    ctx: &Context,
    shaped: &SessionLivedBackend,
    pool: &SessionLivedBackendPool,
    namespace: &str,
) -> Result<Option<Taken>, Error> {
    let token = needs_token(shaped).then(secret::new_token);
    // Both run to their end (`join!`, not `try_join!`): a failed Secret write would otherwise
    // drop a take in flight, which may land unseen (the claim's safety read finds it, a
    // reconcile later); a failed take leaves the Secret written for the reconcile's retry.
    let (pod, written) = futures::join!(
        take_pod(ctx, shaped, pool, namespace),
        write_token(ctx, shaped, namespace, token.as_deref())
    );
    let pod = pod?;
    written?;
    Ok(pod.map(|pod| Taken { pod, token }))
}

/// Whether the backend's sidecar gets a token at the claim (and its Secret holds it).
fn needs_token(shaped: &SessionLivedBackend) -> bool {
    shaped.spec.shape.sidecar.inject && shaped.spec.shape.auth.mode == AuthMode::Token
}

async fn take_pod(
    ctx: &Context,
    backend: &SessionLivedBackend,
    pool: &SessionLivedBackendPool,
    namespace: &str,
) -> Result<Option<Pod>, Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    // The controller's cache first: no round trip, and a stale entry only costs a 409 (every
    // take is conditional on the pod's resourceVersion). The API server's list when the cache
    // offers nothing that could be taken (a cache still filling, a warm pod just made Ready).
    let in_pool =
        |p: &Pod| p.namespace().as_deref() == Some(namespace) && p.labels().get(POOL_LABEL) == Some(&pool.name_any());
    let cached: Vec<Pod> = ctx
        .caches
        .get::<Pod>()
        .map(|store| store.state().iter().filter(|p| in_pool(p)).map(|p| (**p).clone()).collect())
        .unwrap_or_default();
    if let Some(pod) = take_one(&api, backend, pool, ctx, cached).await? {
        return Ok(Some(pod));
    }
    let listed = api
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}={}", pool.name_any())))
        .await
        .map_err(|e| Error::api("list", "Pod", &id(backend), e))?;
    take_one(&api, backend, pool, ctx, listed.items).await
}

/// Tries `pods` (those that are Ready warm pods of the current template) in random order.
async fn take_one(
    api: &Api<Pod>,
    backend: &SessionLivedBackend,
    pool: &SessionLivedBackendPool,
    ctx: &Context,
    pods: Vec<Pod>,
) -> Result<Option<Pod>, Error> {
    let hash = pool::template_hash(pool, &ctx.config);
    let pool_uid = pool.metadata.uid.as_deref();
    let mut warm: Vec<Pod> = pods
        .into_iter()
        .filter(|p| {
            let controlled =
                p.owner_references().iter().any(|r| r.controller == Some(true) && Some(r.uid.as_str()) == pool_uid);
            controlled
                && p.labels().get(TEMPLATE_LABEL) == Some(&hash)
                && p.metadata.deletion_timestamp.is_none()
                && pool::is_ready(p)
        })
        .collect();
    // Concurrent claims spread over the pods instead of all racing for the first.
    warm.shuffle(&mut rand::rng());
    let owner = backend.controller_owner_ref(&()).map(|r| OwnerReference { block_owner_deletion: Some(true), ..r });
    for pod in warm {
        let patch = json!({"metadata": {
            "resourceVersion": pod.resource_version(),
            "labels": {names::BACKEND_LABEL: backend.name_any()},
            "ownerReferences": [owner],
        }});
        match api.patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(claimed) => return Ok(Some(claimed)),
            // Taken by another backend, or gone: the next one.
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_not_found() => continue,
            Err(e) => return Err(Error::api("claim", "Pod", &id(backend), e)),
        }
    }
    Ok(None)
}

/// Claims the pod's sidecar for the backend: hands it the token of `taken` (or, for a pod found
/// taken but never marked, a new one, written to the Secret meanwhile) and the session's
/// settings. Returns the [`Mark`] to write with the Ready status; `None` for a pod already
/// marked, a pod made cold, or a pod without a sidecar (`shaped` is the backend as its pod is
/// made).
pub async fn hand_over(
    ctx: &Context,
    shaped: &SessionLivedBackend,
    pod: &Pod,
    taken: Option<&Taken>,
    namespace: &str,
) -> Result<Option<Mark>, Error> {
    if !shaped.spec.shape.sidecar.inject || !is_warm(pod) || handed_over(pod, shaped) {
        return Ok(None);
    }
    let backend_id = id(shaped);
    let uid = shaped.metadata.uid.clone().unwrap_or_default();
    let mark = Mark { pod: pod.name_any(), backend_uid: uid.clone(), backend: backend_id.clone() };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).ok_or_else(|| Error::Claim {
        backend: backend_id.clone(),
        pod: pod.name_any(),
        message: "the pod has no IP".into(),
    })?;
    if taken.is_none() && ready_on(ctx, shaped, &ip, namespace).await? {
        // Pushed and announced Ready by a reconcile whose mark did not land: clients may hold
        // the token, so it stays.
        return Ok(Some(mark));
    }
    let token = match taken {
        Some(taken) => taken.token.clone(),
        None => needs_token(shaped).then(secret::new_token),
    };
    let key = ctx.config.claim_keys.for_pod(namespace, &pod.name_any());
    let session = crate::controllers::pod::session_of(shaped);
    // A taken pod's Secret holds its token already; a pod handed over again gets a new one in
    // the Secret at once with the push: both are done before the Ready status, in either order.
    // A hand-over cut short is redone with a new token, and no client has seen the old one (the
    // backend was never Ready); a pod the sidecar refuses leaves the Secret to the cold start,
    // whose pod mounts it.
    let pushed = async {
        match push(&ip, &key, &uid, token.as_deref(), &session).await {
            Ok(()) => Ok(()),
            Err(Push::Refused(401)) => {
                // A pod this process cannot claim (made with another controller key): it has
                // served nobody; delete it so that the backend starts cold.
                let params = DeleteParams {
                    preconditions: Some(Preconditions { uid: pod.metadata.uid.clone(), resource_version: None }),
                    ..DeleteParams::background()
                };
                let _ = pods.delete(&pod.name_any(), &params).await;
                Err(Error::Claim {
                    backend: backend_id.clone(),
                    pod: pod.name_any(),
                    message: "its sidecar refused the claim key (made by a controller with another key); deleted it"
                        .into(),
                })
            }
            Err(e) => Err(Error::Claim { backend: backend_id.clone(), pod: pod.name_any(), message: e.to_string() }),
        }
    };
    let written = async {
        match taken {
            Some(_) => Ok(()),
            None => write_token(ctx, shaped, namespace, token.as_deref()).await,
        }
    };
    // As in `take`: both run to their end, the push's error first.
    let (pushed, written) = futures::join!(pushed, written);
    pushed?;
    written?;
    Ok(Some(mark))
}

/// Whether the backend's status, read from the API server (not the cache, which may lag behind
/// a status this process wrote a moment ago), says it is Ready on the pod at `ip`.
async fn ready_on(ctx: &Context, backend: &SessionLivedBackend, ip: &str, namespace: &str) -> Result<bool, Error> {
    let api: Api<SessionLivedBackend> = Api::namespaced(ctx.client.clone(), namespace);
    let fresh = api
        .get_opt(&backend.name_any())
        .await
        .map_err(|e| Error::api("get", "SessionLivedBackend", &id(backend), e))?;
    Ok(fresh.and_then(|b| b.status).is_some_and(|s| s.phase == Some(Phase::Ready) && s.pod_ip.as_deref() == Some(ip)))
}

/// Writes the backend's Secret with `token` (nothing without one). Replaced if an interrupted
/// hand-over wrote one before: so not immutable.
async fn write_token(
    ctx: &Context,
    shaped: &SessionLivedBackend,
    namespace: &str,
    token: Option<&str>,
) -> Result<(), Error> {
    let Some(token) = token else { return Ok(()) };
    let mut secret = secret::build_secret(shaped);
    secret.data = Some(BTreeMap::from([(secret::TOKEN_KEY.to_string(), ByteString(token.as_bytes().to_vec()))]));
    secret.immutable = None;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    secrets
        .patch(&shaped.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&secret))
        .await
        .map(drop)
        .map_err(|e| Error::api("apply", "Secret", &id(shaped), e))
}

/// The hand-over's last step: the pod marked as its backend's, which has the sweeper follow it.
/// Written in the same round trip as the backend's Ready status.
pub struct Mark {
    pod: String,
    backend_uid: String,
    backend: String,
}

impl Mark {
    pub async fn write(&self, ctx: &Context, namespace: &str) -> Result<(), Error> {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
        let mark = json!({"metadata": {"annotations": {HANDED_OVER_ANNOTATION: self.backend_uid}}});
        pods.patch(&self.pod, &PatchParams::default(), &Patch::Merge(&mark))
            .await
            .map(drop)
            .map_err(|e| Error::api("patch", "Pod", &self.backend, e))
    }
}

/// Why the sidecar did not take the claim.
#[derive(Debug, thiserror::Error)]
enum Push {
    #[error("the sidecar answered {0}")]
    Refused(u16),
    #[error("could not reach the sidecar's admin port: {0}")]
    Unreachable(String),
}

/// `POST /claim` to the sidecar's admin port at `ip`, with the backend's token (if it has
/// auth) and its session's settings.
async fn push(ip: &str, key: &str, backend_uid: &str, token: Option<&str>, session: &Session) -> Result<(), Push> {
    let addr = format!("{ip}:{}", names::SIDECAR_ADMIN_PORT);
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(&addr).await.map_err(|e| Push::Unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| Push::Unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let body =
            serde_json::to_vec(&json!({"backend": backend_uid, "token": token, "session": session})).expect("JSON");
        let request = http::Request::post(crate::sidecar::claim::CLAIM_PATH)
            .header(http::header::HOST, &addr)
            .header(http::header::AUTHORIZATION, format!("Bearer {key}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes::Bytes::from(body)))
            .expect("a valid request");
        let response = sender.send_request(request).await.map_err(|e| Push::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        if status == 200 { Ok(()) } else { Err(Push::Refused(status)) }
    };
    tokio::time::timeout(PUSH_TIMEOUT, attempt)
        .await
        .map_err(|_| Push::Unreachable(format!("no answer within {PUSH_TIMEOUT:?}")))?
}
