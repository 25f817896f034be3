//! The pools' controller: keeps `spec.size` warm pods per [`SessionLivedBackendPool`], Ready and
//! waiting, and replaces those made from an older template.
//!
//! A warm pod is a backend's pod made from the pool's pod-shaping fields (the same
//! [`build_pod`](super::pod::build_pod)), named `<pool>-<5 random characters>`, controlled by
//! the pool and labelled with it and with a hash of what it was made from. It has no backend
//! label, so no backend's Service selects it, and no backend owner, so the sweeper never follows
//! it: an unclaimed warm pod is never swept. With token auth each warm pod gets a token Secret of
//! its own, owned by the pod (gone with it). Warm pods carry the pool's `egress` label and are
//! isolated by the namespace's NetworkPolicies, applied before the first one is created.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use rand::Rng;
use tracing::{debug, info};

use crate::controllers::context::Config;
use crate::controllers::context::Context;
use crate::controllers::status::{self, Cause};
use crate::controllers::{Error, network_policy, pod, secret};
use crate::crd::{
    AuthMode, ConditionType, FIELD_MANAGER, SessionLivedBackend, SessionLivedBackendPool, SessionLivedBackendPoolStatus,
};
use crate::names;

pub use crate::names::POOL_LABEL;
/// Label with the hash of the pod-shaping fields (and sidecar image) a warm pod was made from.
pub const TEMPLATE_LABEL: &str = "spawner.dev/pool-template";

/// Event reasons on a pool.
pub mod reason {
    pub const WARM_PODS_CREATED: &str = "WarmPodsCreated";
    pub const WARM_PODS_REPLACED: &str = "WarmPodsReplaced";
}

/// Brings the pool's warm pods to `spec.size` of the current template. Idempotent: what exists
/// is read from the API server (never from a cache), so a restarted controller neither doubles
/// nor loses pods.
pub async fn reconcile(pool: Arc<SessionLivedBackendPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = pool.namespace().ok_or_else(|| Error::NotNamespaced(pool.name_any()))?;
    let id = format!("{namespace}/{}", pool.name_any());
    if pool.metadata.deletion_timestamp.is_some() {
        // Garbage collection removes the warm pods.
        return Ok(Action::await_change());
    }
    network_policy::ensure(&ctx, &namespace, &id).await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let listed = pods
        .list(&ListParams::default().labels(&format!("{POOL_LABEL}={}", pool.name_any())))
        .await
        .map_err(|e| Error::api("list", "Pod", &id, e))?;
    let hash = template_hash(&pool, &ctx.config);
    let plan = plan(&pool, listed.items, &hash);

    for pod in plan.delete.iter() {
        match pods.delete(&pod.name_any(), &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(Error::api("delete", "Pod", &id, e)),
        }
    }
    // Every create runs to its end (`join_all`, not `try_join_all`): one failure would drop
    // the others in flight, and a warm pod created without its token Secret would wait for
    // that Secret's volume forever.
    let results = futures::future::join_all((0..plan.create).map(|_| create_warm_pod(&ctx, &pool, &hash, &id))).await;
    let created = match results.into_iter().collect::<Result<Vec<()>, Error>>() {
        // Pods deleted with their namespace trigger this reconcile again and again: quietly
        // wait for the pool to go the same way.
        Err(e) if e.namespace_terminating() => {
            debug!(pool = %id, "the namespace is being deleted, and the pool with it");
            return Ok(Action::await_change());
        }
        created => created?.len(),
    };

    let status = SessionLivedBackendPoolStatus {
        ready: plan.ready,
        starting: plan.starting + i32::try_from(created).unwrap_or(i32::MAX),
        claimed: plan.claimed,
        conditions: vec![ready_condition(&pool, plan.ready, &ctx)],
        observed_generation: pool.metadata.generation,
    };
    if pool.status.as_ref() != Some(&status) {
        ctx.apply_status(&*pool, "SessionLivedBackendPool", &status, &id).await?;
    }
    if plan.stale > 0 {
        let note = format!("replacing {} warm pods made from an older template", plan.stale);
        ctx.publish(&*pool, EventType::Normal, reason::WARM_PODS_REPLACED, note).await;
    }
    if created > 0 {
        info!(pool = %id, created, "started warm pods");
        ctx.publish(&*pool, EventType::Normal, reason::WARM_PODS_CREATED, format!("started {created} warm pods")).await;
    }
    Ok(Action::await_change())
}

/// Backs off per pool like the backends' error policy.
pub fn error_policy(pool: Arc<SessionLivedBackendPool>, error: &Error, ctx: Arc<Context>) -> Action {
    let id = format!("pool {}/{}", pool.namespace().unwrap_or_default(), pool.name_any());
    super::reconcile::back_off(&id, error, &ctx)
}

/// What to do with a pool's pods.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    /// Pods to delete: of an older template, finished, or beyond `size`.
    delete: Vec<Pod>,
    /// How many of those were of an older template.
    stale: usize,
    /// Warm pods to create.
    create: usize,
    /// Kept warm pods that are Ready, and still starting.
    ready: i32,
    starting: i32,
    /// Pods taken from the pool by backends, still live.
    claimed: i32,
}

/// Decides, from the pods labelled with the pool (pure, unit tested). Only pods the pool
/// controls count: a claimed pod belongs to its backend and is never touched.
fn plan(pool: &SessionLivedBackendPool, pods: Vec<Pod>, hash: &str) -> Plan {
    let uid = pool.metadata.uid.as_deref();
    let mut plan = Plan::default();
    let mut keep = Vec::new();
    for pod in pods {
        let controlled =
            pod.owner_references().iter().any(|r| r.controller == Some(true) && Some(r.uid.as_str()) == uid);
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if !controlled {
            // A claimed pod keeps the pool's label; its backend controls it now.
            plan.claimed += 1;
            continue;
        }
        let finished = matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"));
        if pod.labels().get(TEMPLATE_LABEL).map(String::as_str) != Some(hash) {
            plan.stale += 1;
            plan.delete.push(pod);
        } else if finished {
            plan.delete.push(pod);
        } else {
            keep.push(pod);
        }
    }
    // Beyond size: let the ones still starting go first.
    let size = usize::try_from(pool.spec.size).unwrap_or(0);
    keep.sort_by_key(|p| !is_ready(p));
    if keep.len() > size {
        plan.delete.extend(keep.drain(size..));
    }
    plan.create = size - keep.len();
    plan.ready = count(keep.iter().filter(|p| is_ready(p)));
    plan.starting = count(keep.iter()) - plan.ready;
    plan
}

fn count<'a>(pods: impl Iterator<Item = &'a Pod>) -> i32 {
    i32::try_from(pods.count()).unwrap_or(i32::MAX)
}

pub fn is_ready(pod: &Pod) -> bool {
    crate::controllers::status::pod_condition_true(pod.status.as_ref().and_then(|s| s.conditions.as_deref()), "Ready")
}

/// A hash of everything a warm pod is made from: the pool's pod-shaping fields, the sidecar
/// image (so a controller upgrade also replaces the warm pods) and the id of the key its claim
/// key is derived from (a pod this controller cannot claim is stale). FNV-1a: stable across
/// builds and Rust versions, unlike std's `DefaultHasher`.
pub fn template_hash(pool: &SessionLivedBackendPool, config: &Config) -> String {
    let mut spec = pool.spec.backend_spec();
    // The Service is the claiming backend's, made at the claim: not part of the warm pod.
    spec.shape.service = Default::default();
    let spec = serde_json::to_vec(&spec).expect("a spec serializes");
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let made_by = [config.sidecar.image.as_bytes(), config.claim_keys.id().as_bytes()];
    for byte in spec.iter().chain(b"\0").chain(made_by.join(&b'\0').iter()) {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The warm pod (and its token Secret, with token auth) named `name`.
fn warm_pod(pool: &SessionLivedBackendPool, config: &Config, name: &str, hash: &str) -> (Pod, Option<Secret>) {
    // Built as the pod of a backend named like the pod, then relabelled and re-owned: the pod
    // is exactly what a cold backend of the same spec would get.
    let mut stand_in = SessionLivedBackend {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: pool.namespace(),
            ..Default::default()
        },
        spec: pool.spec.backend_spec(),
        status: None,
    };
    // Every warm pod with a sidecar waits for its claim, auth or not: it mounts a Secret (with
    // the claim key in the token's place), as a token-auth pod would.
    let claimable = stand_in.spec.shape.sidecar.inject;
    if claimable {
        stand_in.spec.shape.auth.mode = AuthMode::Token;
    }
    let mut pod = pod::build_pod(&stand_in, &config.sidecar);
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.remove(names::BACKEND_LABEL);
    labels.insert(POOL_LABEL.to_string(), pool.name_any());
    labels.insert(TEMPLATE_LABEL.to_string(), hash.to_string());
    pod.metadata.owner_references =
        pool.controller_owner_ref(&()).map(|r| vec![OwnerReference { block_owner_deletion: Some(true), ..r }]);
    let secret = claimable.then(|| {
        pod::expect_claim(&mut pod);
        let claim_key = config.claim_keys.for_pod(&pool.namespace().unwrap_or_default(), name);
        let mut secret = secret::build_secret(&stand_in);
        secret.data = Some(BTreeMap::from([(secret::CLAIM_KEY.to_string(), ByteString(claim_key.into_bytes()))]));
        secret.metadata.labels = Some(BTreeMap::from([
            (names::MANAGED_BY_LABEL.to_string(), names::MANAGED_BY_VALUE.to_string()),
            (POOL_LABEL.to_string(), pool.name_any()),
        ]));
        secret.metadata.owner_references = None;
        secret
    });
    (pod, secret)
}

/// Creates one warm pod, then its token Secret owned by it (the kubelet waits for a Secret
/// volume to appear, and the Secret goes with the pod).
async fn create_warm_pod(ctx: &Context, pool: &SessionLivedBackendPool, hash: &str, id: &str) -> Result<(), Error> {
    let namespace = pool.namespace().unwrap_or_default();
    let name = format!("{}-{}", pool.name_any(), suffix());
    let (pod, secret) = warm_pod(pool, &ctx.config, &name, hash);
    let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
    let created = Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
        .create(&params, &pod)
        .await
        .map_err(|e| Error::api("create", "Pod", id, e))?;
    if let Some(mut secret) = secret {
        secret.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: created.name_any(),
            uid: created.metadata.uid.clone().unwrap_or_default(),
            ..OwnerReference::default()
        }]);
        Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
            .create(&params, &secret)
            .await
            .map_err(|e| Error::api("create", "Secret", id, e))?;
    }
    Ok(())
}

/// Five random lowercase letters and digits, as the API server's `generateName` makes.
fn suffix() -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect()
}

fn ready_condition(pool: &SessionLivedBackendPool, ready: i32, ctx: &Context) -> Condition {
    let full = ready >= pool.spec.size;
    let cause = Cause {
        reason: if full { "Full" } else { "Filling" }.into(),
        message: format!("{ready} of {} warm pods Ready", pool.spec.size),
    };
    let old = pool.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    status::condition(old, ConditionType::Ready, full, cause, pool.metadata.generation, ctx.now())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use serde_json::json;

    use super::*;
    use crate::crd::SessionLivedBackendPoolSpec;

    /// The API server's answer to a create in a namespace being deleted, as it sends it.
    fn refused(code: u16, cause: &str) -> Error {
        let status: kube::core::Status = serde_json::from_value(json!({
            "status": "Failure", "code": code, "reason": "Forbidden",
            "message": "pods \"p\" is forbidden: unable to create new content in namespace n because it is being terminated",
            "details": {"name": "p", "kind": "pods", "causes": [{"reason": cause, "message": "namespace n is being terminated", "field": "metadata.namespace"}]},
        }))
        .unwrap();
        Error::api("create", "Pod", "n/pool", kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn a_create_refused_because_the_namespace_goes_is_told_apart_from_other_refusals() {
        assert!(refused(403, "NamespaceTerminating").namespace_terminating());
        assert!(!refused(403, "SomethingElse").namespace_terminating());
        assert!(!refused(409, "NamespaceTerminating").namespace_terminating());
    }

    fn pool(size: i32) -> SessionLivedBackendPool {
        let spec: SessionLivedBackendPoolSpec = serde_json::from_value(json!({
            "size": size,
            "template": {"containers": [{"name": "app", "image": "app:1"}]},
        }))
        .unwrap();
        let mut pool = SessionLivedBackendPool::new("lobby", spec);
        pool.metadata.namespace = Some("games".into());
        pool.metadata.uid = Some("pool-uid".into());
        pool
    }

    fn pod(name: &str, hash: &str, owner: &str, ready: bool) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(TEMPLATE_LABEL.to_string(), hash.to_string())])),
                owner_references: Some(vec![OwnerReference {
                    controller: Some(true),
                    uid: owner.into(),
                    ..OwnerReference::default()
                }]),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec { containers: vec![Container::default()], ..PodSpec::default() }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
    }

    fn names(pods: &[Pod]) -> Vec<String> {
        pods.iter().map(|p| p.name_any()).collect()
    }

    #[test]
    fn an_empty_pool_is_filled_to_size() {
        let plan = plan(&pool(3), vec![], "h1");
        assert_eq!((plan.create, plan.ready, plan.starting), (3, 0, 0));
        assert!(plan.delete.is_empty());
    }

    #[test]
    fn pods_of_an_older_template_are_replaced_and_counted_as_stale() {
        let pods = vec![pod("a", "h0", "pool-uid", true), pod("b", "h1", "pool-uid", false)];
        let plan = plan(&pool(2), pods, "h1");
        assert_eq!(names(&plan.delete), ["a"]);
        assert_eq!((plan.stale, plan.create, plan.ready, plan.starting), (1, 1, 0, 1));
    }

    #[test]
    fn claimed_pods_and_pods_being_deleted_are_left_alone() {
        let claimed = pod("claimed", "h1", "backend-uid", true);
        let mut going = pod("going", "h1", "pool-uid", true);
        going.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let plan = plan(&pool(1), vec![claimed, going], "h1");
        assert!(plan.delete.is_empty());
        assert_eq!((plan.create, plan.claimed), (1, 1));
    }

    #[test]
    fn beyond_size_the_starting_pods_go_first_and_finished_ones_are_replaced() {
        let mut failed = pod("failed", "h1", "pool-uid", false);
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        let pods = vec![pod("starting", "h1", "pool-uid", false), pod("ready", "h1", "pool-uid", true), failed];
        let plan = plan(&pool(1), pods, "h1");
        assert_eq!(names(&plan.delete), ["failed", "starting"]);
        assert_eq!((plan.stale, plan.create, plan.ready, plan.starting), (0, 0, 1, 0));
    }

    #[test]
    fn a_warm_pod_is_the_backend_pod_owned_by_the_pool_without_a_backend_label() {
        let config = Config::default();
        let (pod, secret) = warm_pod(&pool(1), &config, "lobby-x2b4c", "h1");
        let labels = pod.labels();
        assert_eq!(labels.get(POOL_LABEL).map(String::as_str), Some("lobby"));
        assert_eq!(labels.get(TEMPLATE_LABEL).map(String::as_str), Some("h1"));
        assert!(!labels.contains_key(names::BACKEND_LABEL), "no backend's Service may select a warm pod");
        let owner = &pod.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("SessionLivedBackendPool", "pool-uid", Some(true))
        );
        let spec = pod.spec.as_ref().unwrap();
        assert!(spec.containers.iter().any(|c| c.name == names::SIDECAR_CONTAINER));
        let volume = spec.volumes.as_ref().unwrap().iter().find_map(|v| v.secret.as_ref()).unwrap();
        assert_eq!(volume.secret_name.as_deref(), Some("lobby-x2b4c"));
        let secret = secret.expect("token auth: a Secret per warm pod");
        assert_eq!(secret.metadata.name.as_deref(), Some("lobby-x2b4c"));
        // No token yet: the claim key, which only this controller can derive.
        let data = secret.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), [secret::CLAIM_KEY]);
        assert_eq!(data[secret::CLAIM_KEY].0, config.claim_keys.for_pod("games", "lobby-x2b4c").into_bytes());
        let sidecar = spec.containers.iter().find(|c| c.name == names::SIDECAR_CONTAINER).unwrap();
        let env: Vec<&str> = sidecar.env.iter().flatten().map(|e| e.name.as_str()).collect();
        assert!(env.contains(&"SPAWNER_CLAIM_KEY_FILE") && !env.contains(&"SPAWNER_TOKEN_FILE"), "{env:?}");
    }

    #[test]
    fn the_template_hash_changes_with_the_pod_the_sidecar_image_and_the_controller_key_only() {
        let mut config = Config::default();
        let base = template_hash(&pool(1), &config);
        assert_eq!(base, template_hash(&pool(5), &config), "the size is not part of the template");
        let mut without_service = pool(1);
        without_service.spec.shape.service.enabled = false;
        assert_eq!(base, template_hash(&without_service, &config), "nor is the claiming backend's Service");
        let mut other = pool(1);
        other.spec.template.containers[0].image = Some("app:2".into());
        assert_ne!(base, template_hash(&other, &config));
        config.sidecar.image = "sidecar:2".into();
        let other_image = template_hash(&pool(1), &config);
        assert_ne!(base, other_image);
        config.claim_keys = Default::default();
        assert_ne!(other_image, template_hash(&pool(1), &config), "another controller key");
    }
}
