//! ServiceAccounts, (Cluster)Roles and bindings, derived from `spawner::rbac`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use spawner::names::SYSTEM_NAMESPACE;
use spawner::rbac::{Permission, Scope};

use super::objects::{Object, meta};

pub fn service_accounts() -> Vec<Object> {
    spawner::rbac::ROLES
        .iter()
        .map(|role| {
            Object::new(ServiceAccount { metadata: meta(role.name, Some(SYSTEM_NAMESPACE)), ..Default::default() })
        })
        .collect()
}

/// For each binary: a ClusterRole + ClusterRoleBinding for its cluster-wide permissions and a
/// Role + RoleBinding for those in Spawner's own namespace, each only if non-empty.
pub fn roles() -> Vec<Object> {
    let mut out = Vec::new();
    for role in spawner::rbac::ROLES {
        let subject = Subject {
            kind: "ServiceAccount".into(),
            name: role.name.into(),
            namespace: Some(SYSTEM_NAMESPACE.into()),
            ..Default::default()
        };
        let cluster = rules(role.permissions, Scope::Cluster);
        if !cluster.is_empty() {
            out.push(Object::new(ClusterRole {
                metadata: meta(role.name, None),
                rules: Some(cluster),
                ..Default::default()
            }));
            out.push(Object::new(ClusterRoleBinding {
                metadata: meta(role.name, None),
                role_ref: role_ref("ClusterRole", role.name),
                subjects: Some(vec![subject.clone()]),
            }));
        }
        // Bound namespace by namespace (`spawner::rbac::served_binding`), not here.
        let served = rules(role.permissions, Scope::ServedNamespace);
        if !served.is_empty() {
            out.push(Object::new(ClusterRole {
                metadata: meta(&spawner::rbac::served_role_name(role), None),
                rules: Some(served),
                ..Default::default()
            }));
        }
        let namespaced = rules(role.permissions, Scope::SystemNamespace);
        if !namespaced.is_empty() {
            out.push(Object::new(Role { metadata: meta(role.name, Some(SYSTEM_NAMESPACE)), rules: Some(namespaced) }));
            out.push(Object::new(RoleBinding {
                metadata: meta(role.name, Some(SYSTEM_NAMESPACE)),
                role_ref: role_ref("Role", role.name),
                subjects: Some(vec![subject]),
            }));
        }
    }
    out
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: kind.into(), name: name.into() }
}

/// One rule per (group, verbs, names) triple, resources merged, so the generated roles read
/// like the table.
fn rules(permissions: &[Permission], scope: Scope) -> Vec<PolicyRule> {
    // (group, verbs, resource names) → resources.
    type Rule<'a> = (&'a str, Vec<&'a str>, Vec<&'a str>);
    let mut merged: BTreeMap<Rule, Vec<String>> = BTreeMap::new();
    for p in permissions.iter().filter(|p| p.scope == scope) {
        merged.entry((p.group, p.verbs.to_vec(), p.resource_names.to_vec())).or_default().push(p.resource.to_string());
    }
    merged
        .into_iter()
        .map(|((group, verbs, names), resources)| PolicyRule {
            api_groups: Some(vec![group.to_string()]),
            resources: Some(resources),
            verbs: verbs.into_iter().map(String::from).collect(),
            resource_names: (!names.is_empty()).then(|| names.into_iter().map(String::from).collect()),
            ..Default::default()
        })
        .collect()
}
