//! One reconciliation of one backend, as named steps: expire → read children → create what is
//! missing → derive status → write status → announce → requeue for the next deadline.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::{debug, info, warn};

use crate::controllers::children::{self, Found};
use crate::controllers::claim;
use crate::controllers::context::Context;
use crate::controllers::status::{PodView, derive_status, reason};
use crate::controllers::{Error, lifetime, network_policy};
use crate::crd::{Phase, SessionLivedBackend, SessionLivedBackendPool};

/// How soon to look again while an old child of the same name (from a deleted backend) is
/// being garbage-collected.
const FOREIGN_CHILD_RETRY: Duration = Duration::from_secs(1);
/// How soon to look again for a backend's pool that does not exist.
const POOL_RETRY: Duration = Duration::from_secs(2);

/// Brings the cluster in line with one backend. Idempotent: every step reads what exists and
/// only writes what is missing or changed, so a restarted controller picks up where it stopped.
pub async fn reconcile(backend: Arc<SessionLivedBackend>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_started();
    let namespace = backend.namespace().ok_or_else(|| Error::NotNamespaced(backend.name_any()))?;
    let name = backend.name_any();
    let id = format!("{namespace}/{name}");
    let now = ctx.now();
    let deleting = backend.metadata.deletion_timestamp.is_some();
    let old_phase = backend.status.as_ref().and_then(|s| s.phase);
    ctx.caches.listed().await;

    if !deleting && let Some(expiry) = lifetime::expiry(&backend, now, ctx.config.failed_retention) {
        info!(backend = %id, reason = expiry.reason, "deleting backend");
        ctx.publish(&*backend, EventType::Normal, expiry.reason, expiry.message).await;
        delete_backend(&ctx, &backend, &namespace).await?;
        ctx.succeeded(&id);
        return Ok(Action::await_change());
    }

    let mut waiting_for_gc = false;
    let mut outcome = PodOutcome::Gone;
    let over = deleting || old_phase == Some(Phase::Failed);

    if !over {
        network_policy::ensure(&ctx, &namespace, &id).await?;
    }

    // A backend of a pool: its pod is made from the pool's spec, claimed warm when one is left.
    let pool = match &backend.spec.pool_ref {
        Some(pool_ref) => match find_pool(&ctx, &namespace, &pool_ref.name, &id).await? {
            Some(pool) => Some(pool),
            None if over || had_pod(&backend) => None,
            None => return wait_for_pool(&ctx, &backend, &namespace, &pool_ref.name, &id).await,
        },
        None => None,
    };
    let shaped = pool.as_ref().map(|pool| claim::effective(&backend, pool));
    let shaped = shaped.as_ref().unwrap_or(&backend);
    // A backend of a pool: claim a warm pod, and meanwhile make its Service (which does not
    // depend on the pod). The Service is for clients inside the cluster — nothing of Spawner's
    // routes through it — so a claimed backend's Ready does not wait for it: the task is
    // awaited after the status is written (before, when no warm pod was taken and the children
    // are made below).
    let mut service_made = false;
    let mut service_task = None;
    // The hand-over's mark, written with the status.
    let mut mark = None;
    if !over && backend.spec.pool_ref.is_some() {
        let claiming = async {
            Ok::<_, Error>(match claim::claimed_pod(&ctx, &backend, &namespace).await? {
                Some(pod) => {
                    let mark = claim::hand_over(&ctx, shaped, &pod, None, &namespace).await?;
                    (PodOutcome::Existing(pod), mark)
                }
                None if had_pod(&backend) => (PodOutcome::Gone, None),
                None => {
                    let started = std::time::Instant::now();
                    match &pool {
                        Some(pool) => match claim::take(&ctx, shaped, pool, &namespace).await? {
                            Some(taken) => {
                                info!(backend = %id, pod = %taken.pod.name_any(), "claimed a warm pod");
                                let mark = claim::hand_over(&ctx, shaped, &taken.pod, Some(&taken), &namespace).await?;
                                ctx.metrics.claim_duration.observe(started.elapsed().as_secs_f64());
                                (PodOutcome::Claimed(taken.pod), mark)
                            }
                            None => (PodOutcome::Gone, None),
                        },
                        None => (PodOutcome::Gone, None),
                    }
                }
            })
        };
        // A claimed backend is reconciled again on every change of its pod: its Service, in
        // the cache by then, needs no task.
        let service = (shaped.spec.shape.service.enabled && !children::cached::<Service>(&ctx, shaped, &namespace))
            .then(|| {
                let (ctx, shaped, namespace) = (ctx.clone(), shaped.clone(), namespace.clone());
                tokio::spawn(async move { ensure_service(&ctx, &shaped, &namespace).await })
            });
        (outcome, mark) = claiming.await?;
        service_made = true;
        match (&outcome, service) {
            (PodOutcome::Gone, Some(service)) => joined(service).await?,
            (_, service) => service_task = service,
        }
    }

    // A backend never reconciled has, in all likelihood, no children yet: create them straight
    // away, saving two reads per backend in a burst. Anything unexpected (an old namesake's pod,
    // a refusal) falls through to the careful path below, which reads first. A pod in the cache
    // means a reconcile made the children already and its status write is not seen yet (the
    // pod's creation triggers the next reconcile): creating again would only cost three refused
    // writes (0.4 per backend at 50/s, measured by `cargo xtask bench scale`).
    if !over
        && backend.status.is_none()
        && matches!(outcome, PodOutcome::Gone)
        && !children::cached::<Pod>(&ctx, &backend, &namespace)
    {
        match create_children(&ctx, shaped, &namespace, !service_made).await {
            Ok(pod) => outcome = PodOutcome::Created(pod),
            Err(e) => debug!(backend = %id, error = %e, "creating children directly failed; checking what exists"),
        }
    }

    if !over && matches!(outcome, PodOutcome::Gone) {
        let (found_pod, found_service) = futures::try_join!(
            children::find::<Pod>(&ctx, shaped, &namespace),
            find_service(&ctx, shaped, &namespace),
        )?;
        waiting_for_gc = found_pod.is_foreign() || found_service.as_ref().is_some_and(Found::is_foreign);

        if !waiting_for_gc {
            // Service and pod are independent: create them concurrently.
            let service_step = async {
                match found_service {
                    Some(Found::Missing) => children::create::<Service>(&ctx, shaped, &namespace).await.map(drop),
                    _ => Ok(()),
                }
            };
            let pod_step = async {
                match found_pod {
                    Found::Mine(found) => Ok(PodOutcome::Existing(found)),
                    _ if had_pod(&backend) => Ok(PodOutcome::Gone),
                    _ => create_pod(&ctx, shaped, &namespace, &id).await,
                }
            };
            // Both to their end, as in `create_children`: no create dropped in flight.
            let (service, pod) = futures::join!(service_step, pod_step);
            outcome = pod?;
            service?;
        }
    }

    let view = match &outcome {
        PodOutcome::Existing(pod) | PodOutcome::Created(pod) | PodOutcome::Claimed(pod) => PodView::Exists(pod),
        PodOutcome::Rejected(message) => PodView::Rejected(message),
        PodOutcome::Gone if !over && !waiting_for_gc && had_pod(&backend) => PodView::Lost,
        PodOutcome::Gone => PodView::NotCreated,
    };
    let (status, transitions) = derive_status(shaped, view, now, &ctx.config.base_url);

    // The mark and the status in one round trip: a mark that does not land is written by the
    // next reconcile, which finds the status Ready on the pod and does not push again.
    let write_status = async {
        match backend.status.as_ref() != Some(&status) {
            true => ctx.apply_status(&*backend, "SessionLivedBackend", &status, &id).await,
            false => Ok(()),
        }
    };
    let write_mark = async {
        match &mark {
            Some(mark) => mark.write(&ctx, &namespace).await,
            None => Ok(()),
        }
    };
    futures::try_join!(write_status, write_mark)?;
    match (&outcome, &backend.spec.pool_ref) {
        (PodOutcome::Created(_), None) => {
            let message = format!("created pod {name}");
            ctx.publish(&*backend, EventType::Normal, reason::POD_CREATED, message).await;
        }
        (PodOutcome::Created(_), Some(pool_ref)) => {
            ctx.metrics.pool_empty.inc();
            let message = format!("no warm pod left in pool {}: started pod {name} from its template", pool_ref.name);
            ctx.publish(&*backend, EventType::Normal, reason::COLD_START, message).await;
            if let Some(pool) = &pool {
                let note = format!("backend {name} found no warm pod and started cold; consider a larger spec.size");
                ctx.publish(pool, EventType::Warning, reason::POOL_EMPTY, note).await;
            }
        }
        (PodOutcome::Claimed(pod), Some(pool)) => {
            let message = format!("took warm pod {} from pool {}", pod.name_any(), pool.name);
            ctx.publish(&*backend, EventType::Normal, reason::CLAIMED, message).await;
        }
        _ => {}
    }
    for t in transitions {
        debug!(backend = %id, reason = t.reason, "transition");
        if t.reason == reason::READY
            && let Some(created_at) = &backend.metadata.creation_timestamp
            && let Ok(after) = Duration::try_from(now.duration_since(created_at.0))
        {
            ctx.metrics.backend_ready(after);
        }
        ctx.publish(&*backend, t.type_, t.reason, t.message).await;
    }

    if let Some(service) = service_task {
        joined(service).await?;
    }
    ctx.succeeded(&id);
    if waiting_for_gc {
        debug!(backend = %id, "an old Pod or Service of the same name is still being deleted");
        return Ok(Action::requeue(FOREIGN_CHILD_RETRY));
    }
    Ok(match lifetime::next_deadline(&backend, &status, now, ctx.config.failed_retention) {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

/// What became of the backend's pod in this reconciliation.
enum PodOutcome {
    /// It was there already.
    Existing(Pod),
    /// Created just now.
    Created(Pod),
    /// Taken from the backend's pool just now.
    Claimed(Pod),
    /// The API server refused it for good: the spec cannot make an acceptable pod.
    Rejected(String),
    /// Not there, and not created (it existed once, or the backend is over).
    Gone,
}

/// The pool `name`: from the pool controller's cache, or from the API server when the cache
/// does not have it.
async fn find_pool(
    ctx: &Context,
    namespace: &str,
    name: &str,
    id: &str,
) -> Result<Option<SessionLivedBackendPool>, Error> {
    if let Some(cached) = ctx.pools.as_ref().and_then(|pools| pools.get(&ObjectRef::new(name).within(namespace))) {
        return Ok(Some((*cached).clone()));
    }
    let api: Api<SessionLivedBackendPool> = Api::namespaced(ctx.client.clone(), namespace);
    api.get_opt(name).await.map_err(|e| Error::api("get", "SessionLivedBackendPool", id, e))
}

/// A backend whose pool does not exist (yet): Pending with reason `PoolNotFound`, looked at
/// again shortly (and whenever the backend changes); its startup timeout runs meanwhile.
async fn wait_for_pool(
    ctx: &Context,
    backend: &SessionLivedBackend,
    namespace: &str,
    pool: &str,
    id: &str,
) -> Result<Action, Error> {
    let message = format!("pool {pool} does not exist in namespace {namespace}");
    let view = PodView::Waiting { reason: reason::POOL_NOT_FOUND, message: &message };
    let (status, transitions) = derive_status(backend, view, ctx.now(), &ctx.config.base_url);
    if backend.status.as_ref() != Some(&status) {
        ctx.apply_status(backend, "SessionLivedBackend", &status, id).await?;
    }
    for t in transitions {
        ctx.publish(backend, t.type_, t.reason, t.message).await;
    }
    ctx.succeeded(id);
    Ok(Action::requeue(POOL_RETRY))
}

/// The backend's Service as found, or `None` when the backend has none (`spec.service`): then
/// there is nothing to look up.
async fn find_service(
    ctx: &Context,
    backend: &SessionLivedBackend,
    namespace: &str,
) -> Result<Option<Found<Service>>, Error> {
    match backend.spec.shape.service.enabled {
        true => children::find::<Service>(ctx, backend, namespace).await.map(Some),
        false => Ok(None),
    }
}

/// The result of a task of this reconcile; its panic is this reconcile's. One cancelled (the
/// runtime shutting down) reports nothing: the next reconcile does its work again.
async fn joined(task: tokio::task::JoinHandle<Result<(), Error>>) -> Result<(), Error> {
    match task.await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Ok(()),
    }
}

/// Creates the backend's Service unless it exists (or the backend has none).
async fn ensure_service(ctx: &Context, backend: &SessionLivedBackend, namespace: &str) -> Result<(), Error> {
    match find_service(ctx, backend, namespace).await? {
        Some(Found::Missing) => children::create::<Service>(ctx, backend, namespace).await.map(drop),
        _ => Ok(()),
    }
}

/// Creates the Service (unless made already), and the Secret then the pod, concurrently.
async fn create_children(
    ctx: &Context,
    backend: &SessionLivedBackend,
    namespace: &str,
    with_service: bool,
) -> Result<Pod, Error> {
    let service_step = async {
        match with_service {
            true => children::create::<Service>(ctx, backend, namespace).await.map(drop),
            false => Ok(()),
        }
    };
    let pod_step = async {
        children::ensure::<Secret>(ctx, backend, namespace).await?;
        children::create::<Pod>(ctx, backend, namespace).await
    };
    // Both requests run to their end, not `try_join!`: a refused pod would drop the Service's
    // create in flight, and the careful path that follows could read no Service, then create it
    // a second time and fail with AlreadyExists (seen in CI: a reconcile error for a backend
    // whose pod the API server refused).
    let (service, pod) = futures::join!(service_step, pod_step);
    let pod = pod?;
    service?;
    Ok(pod.expect("every backend needs a pod"))
}

/// Creates the Secret (when auth needs one), then the pod.
async fn create_pod(
    ctx: &Context,
    backend: &SessionLivedBackend,
    namespace: &str,
    id: &str,
) -> Result<PodOutcome, Error> {
    children::ensure::<Secret>(ctx, backend, namespace).await?;
    match children::create::<Pod>(ctx, backend, namespace).await {
        Ok(pod) => Ok(PodOutcome::Created(pod.expect("every backend needs a pod"))),
        Err(Error::Api { source: kube::Error::Api(status), .. }) if refused_for_good(&status) => {
            warn!(backend = %id, message = %status.message, "the API server refused the pod");
            Ok(PodOutcome::Rejected(status.message))
        }
        Err(e) => Err(e),
    }
}

/// Whether the API server refused a pod for a reason retrying cannot fix: invalid (400, 422)
/// or against the namespace's Pod Security level. Other refusals (quota, RBAC, a terminating
/// namespace) may pass later and are retried with backoff.
fn refused_for_good(status: &kube::core::Status) -> bool {
    status.code == 400 || status.code == 422 || (status.code == 403 && status.message.contains("violates PodSecurity"))
}

/// Backs off per backend: 0.5 s, 1 s, 2 s ... up to 5 minutes, reset by the next success.
pub fn error_policy(backend: Arc<SessionLivedBackend>, error: &Error, ctx: Arc<Context>) -> Action {
    back_off(&children::id(&backend), error, &ctx)
}

/// The retry after the `n`th failure in a row of the object `id`: 0.5 s doubling to 5 minutes.
pub fn back_off(id: &str, error: &Error, ctx: &Context) -> Action {
    ctx.metrics.reconcile_failed(error.metric_label());
    let attempt = ctx.failed(id);
    let delay =
        Duration::from_millis(500).saturating_mul(1 << attempt.min(10).saturating_sub(1)).min(Duration::from_secs(300));
    warn!(object = %id, error = %error, attempt, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// What the backends' cache keeps of a backend: not its managed fields (nothing reads them), and
/// not its template once its application's start is recorded (`status.startedAt`). The template
/// is read only to build the pod, which is never rebuilt once it existed ([`had_pod`]), and to
/// find when the application started; after that nothing reads it, and at 10,000 backends the
/// templates are memory (`cargo xtask bench scale`). Nothing sends a cached backend's spec back
/// to the API server: status writes patch the status alone.
pub(crate) fn trim_backend(backend: &mut SessionLivedBackend) {
    children::trim(backend);
    if backend.status.as_ref().is_some_and(|s| s.started_at.is_some()) {
        backend.spec.template = None;
    }
}

/// Whether the backend's pod existed before (the pod is the session: it is never recreated).
fn had_pod(backend: &SessionLivedBackend) -> bool {
    backend.status.as_ref().is_some_and(|s| {
        s.started_at.is_some() || matches!(s.phase, Some(Phase::Scheduled | Phase::Running | Phase::Ready))
    })
}

async fn delete_backend(ctx: &Context, backend: &SessionLivedBackend, namespace: &str) -> Result<(), Error> {
    let api: Api<SessionLivedBackend> = Api::namespaced(ctx.client.clone(), namespace);
    // The uid precondition keeps a new backend that reuses the name safe from an old deadline.
    let params = DeleteParams {
        preconditions: Some(Preconditions { uid: backend.metadata.uid.clone(), resource_version: None }),
        ..DeleteParams::background()
    };
    match api.delete(&backend.name_any(), &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(()),
        Err(e) => Err(Error::api("delete", "SessionLivedBackend", &format!("{namespace}/{}", backend.name_any()), e)),
    }
}
