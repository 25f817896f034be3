//! The Kubernetes API access each binary needs, declared once.
//!
//! `cargo xtask manifests` turns these tables into ClusterRoles, Roles and bindings, and the
//! RBAC integration test impersonates each ServiceAccount to prove every listed verb is allowed
//! and an unlisted one is refused. Change a binary's API use here, nowhere else.

/// Where a permission applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// In every namespace (a ClusterRole bound by a ClusterRoleBinding).
    Cluster,
    /// Only in Spawner's own namespace (a Role bound by a RoleBinding).
    SystemNamespace,
    /// Only in the namespaces it is granted one by one: a ClusterRole `<name>-served` that
    /// [`served_binding`] binds in each (`spawner api-key create` does, for its namespaces).
    ServedNamespace,
}

/// Some verbs on one resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    /// API group; "" is the core group.
    pub group: &'static str,
    /// Plural resource name, with `/subresource` where it applies.
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub scope: Scope,
    /// Only these objects (empty: all). List and watch then need a `metadata.name` field
    /// selector.
    pub resource_names: &'static [&'static str],
}

const fn cluster(group: &'static str, resource: &'static str, verbs: &'static [&'static str]) -> Permission {
    Permission { group, resource, verbs, scope: Scope::Cluster, resource_names: &[] }
}

const fn served(group: &'static str, resource: &'static str, verbs: &'static [&'static str]) -> Permission {
    Permission { group, resource, verbs, scope: Scope::ServedNamespace, resource_names: &[] }
}

/// The controller: reconciles backends into Pods, Services and token Secrets, writes status and
/// Events, deletes backends past their lifetime, and holds the leader Lease.
pub const CONTROLLER: &[Permission] = &[
    // `get`: a claimed pod found without its hand-over mark is pushed to again only if the
    // backend, read afresh (the cache may trail a status just written), is not Ready on it.
    cluster("spawner.dev", "sessionlivedbackends", &["get", "list", "watch", "delete"]),
    cluster("spawner.dev", "sessionlivedbackends/status", &["patch"]),
    cluster("spawner.dev", "sessionlivedbackendpools", &["get", "list", "watch"]),
    cluster("spawner.dev", "sessionlivedbackendpools/status", &["patch"]),
    // Pods and Services are read from the watch caches; `get` is the fallback before they fill.
    // A backend's children are deleted by owner-reference garbage collection; `delete` is for
    // the warm pods a pool replaces.
    cluster("", "pods", &["get", "list", "watch", "create", "patch", "delete"]),
    cluster("", "services", &["get", "list", "watch", "create", "patch"]),
    // Token Secrets are written, never read: the controller cannot read any Secret. `patch`
    // writes the token of a backend that claimed a warm pod (again, if a hand-over was
    // interrupted).
    cluster("", "secrets", &["create", "patch"]),
    cluster("events.k8s.io", "events", &["create", "patch"]),
    // Each namespace's NetworkPolicies, by server-side apply (an apply that creates the object
    // is authorized as `create` too).
    cluster("networking.k8s.io", "networkpolicies", &["create", "patch"]),
    Permission {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        scope: Scope::SystemNamespace,
        resource_names: &[],
    },
];

/// The sweeper: watches the backend pods on its node and deletes idle backends.
pub const SWEEPER: &[Permission] = &[
    cluster("", "pods", &["list", "watch"]),
    cluster("spawner.dev", "sessionlivedbackends", &["get", "delete"]),
    cluster("events.k8s.io", "events", &["create", "patch"]),
];

/// The router, beside nginx in the proxy's pod: reads backends (their status has the pod's
/// address), nothing else.
pub const ROUTER: &[Permission] = &[cluster("spawner.dev", "sessionlivedbackends", &["list", "watch"])];

/// spawner-api: reads every backend (its status streams and limits), and in the namespaces it
/// is granted makes backends from pools, deletes them and reads their tokens. In Spawner's
/// namespace it reads the keys Secret and no other.
pub const API: &[Permission] = &[
    cluster("spawner.dev", "sessionlivedbackends", &["list", "watch"]),
    served("spawner.dev", "sessionlivedbackends", &["get", "create", "delete"]),
    served("spawner.dev", "sessionlivedbackendpools", &["get"]),
    // The token a caller gets with its backend.
    served("", "secrets", &["get"]),
    Permission {
        group: "",
        resource: "secrets",
        verbs: &["get", "list", "watch"],
        scope: Scope::SystemNamespace,
        resource_names: &[crate::api::keys::KEYS_SECRET],
    },
];

/// A binary that talks to the API server, with its ServiceAccount and permissions.
#[derive(Clone, Copy, Debug)]
pub struct Role {
    /// ServiceAccount, Role and ClusterRole name.
    pub name: &'static str,
    pub permissions: &'static [Permission],
}

/// Every ServiceAccount Spawner runs as.
pub const ROLES: &[Role] = &[
    Role { name: crate::names::CONTROLLER, permissions: CONTROLLER },
    Role { name: crate::names::SWEEPER, permissions: SWEEPER },
    Role { name: crate::names::PROXY, permissions: ROUTER },
    Role { name: crate::names::API, permissions: API },
];

/// Name of the ClusterRole holding `role`'s [`Scope::ServedNamespace`] permissions.
pub fn served_role_name(role: &Role) -> String {
    format!("{}-served", role.name)
}

/// The RoleBinding that grants `role` its [`Scope::ServedNamespace`] permissions in `namespace`.
pub fn served_binding(role: &Role, namespace: &str) -> k8s_openapi::api::rbac::v1::RoleBinding {
    use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
    RoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some(role.name.into()),
            namespace: Some(namespace.into()),
            labels: Some(
                [(crate::names::MANAGED_BY_LABEL.to_string(), crate::names::MANAGED_BY_VALUE.to_string())].into(),
            ),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: served_role_name(role),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: role.name.into(),
            namespace: Some(crate::names::SYSTEM_NAMESPACE.into()),
            ..Default::default()
        }]),
    }
}

/// The API's role.
pub fn api_role() -> &'static Role {
    ROLES.iter().find(|r| r.name == crate::names::API).expect("the API has a role")
}
