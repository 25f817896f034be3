//! The NetworkPolicies that isolate backends: one set per namespace, not one per backend.
//!
//! Per namespace, because what they say does not depend on the backend: every backend pod takes
//! traffic only from the reverse proxy (the sidecar's public port, or the application's port,
//! named [`names::APP_PORT_NAME`], where the sidecar is opted out) and from the sweeper (the
//! sidecar's admin port); its egress is one of three fixed rule sets, chosen by the pod's
//! [`names::EGRESS_LABEL`]. So a namespace costs three objects however many backends it has,
//! and a backend costs no extra API write — which matters in a burst and at 10,000 backends.
//! The policies exist before the namespace's first pod is created, and are applied again by
//! each controller process the first time it reconciles a backend there (a deleted or edited
//! policy is restored then).
//!
//! Traffic from a pod's own node (the kubelet's probes) is always allowed by NetworkPolicy
//! implementations, so probes need no rule.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tokio::sync::OnceCell;

use crate::controllers::Error;
use crate::controllers::context::Context;
use crate::crd::{Egress, FIELD_MANAGER};
use crate::names;

/// Ingress to every backend pod: from the reverse proxy and the sweeper only.
pub const INGRESS: &str = "spawner-backends-ingress";
/// Egress of pods with `spec.egress: Public`.
pub const EGRESS_PUBLIC: &str = "spawner-backends-egress-public";
/// Egress of pods with `spec.egress: None`.
pub const EGRESS_NONE: &str = "spawner-backends-egress-none";

/// Addresses `Public` egress never reaches: private (RFC 1918, shared CGNAT space, IPv6 ULA),
/// link-local (which holds the cloud metadata address 169.254.169.254), loopback and "this
/// network".
const IPV4_NOT_PUBLIC: &[&str] =
    &["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"];
const IPV6_NOT_PUBLIC: &[&str] = &["::1/128", "fc00::/7", "fe80::/10"];

/// The policies of a namespace with backends.
pub fn build(namespace: &str) -> Vec<NetworkPolicy> {
    let backend_pods = |egress: Option<Egress>| {
        let mut labels = BTreeMap::from([(names::MANAGED_BY_LABEL, names::MANAGED_BY_VALUE)]);
        if let Some(egress) = egress {
            labels.insert(names::EGRESS_LABEL, egress.as_str());
        }
        serde_json::json!({"matchLabels": labels})
    };
    let spawner_pods = |name: &str| {
        serde_json::json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": names::SYSTEM_NAMESPACE}},
            "podSelector": {"matchLabels": {names::NAME_LABEL: name}},
        })
    };
    let tcp = |port: serde_json::Value| serde_json::json!({"protocol": "TCP", "port": port});
    let policy = |name: &str, spec: serde_json::Value| -> NetworkPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {names::MANAGED_BY_LABEL: names::MANAGED_BY_VALUE},
            },
            "spec": spec,
        }))
        .expect("a well-formed NetworkPolicy")
    };
    vec![
        policy(
            INGRESS,
            serde_json::json!({
                "podSelector": backend_pods(None),
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [spawner_pods(names::PROXY)],
                        "ports": [tcp(names::SIDECAR_PROXY_PORT.into()), tcp(names::APP_PORT_NAME.into())],
                    },
                    // The sweeper follows the event stream; the controller claims warm pods.
                    {
                        "from": [spawner_pods(names::SWEEPER), spawner_pods(names::CONTROLLER)],
                        "ports": [tcp(names::SIDECAR_ADMIN_PORT.into())],
                    },
                ],
            }),
        ),
        policy(
            EGRESS_PUBLIC,
            serde_json::json!({
                "podSelector": backend_pods(Some(Egress::Public)),
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
                    },
                    {
                        "to": [
                            {"ipBlock": {"cidr": "0.0.0.0/0", "except": IPV4_NOT_PUBLIC}},
                            {"ipBlock": {"cidr": "::/0", "except": IPV6_NOT_PUBLIC}},
                        ],
                    },
                ],
            }),
        ),
        policy(
            EGRESS_NONE,
            serde_json::json!({
                "podSelector": backend_pods(Some(Egress::None)),
                "policyTypes": ["Egress"],
                "egress": [],
            }),
        ),
    ]
}

/// Applies the namespace's NetworkPolicies once per controller process, before any pod of the
/// namespace is created by it (a backend's or a pool's): a pod must never run unisolated.
/// The namespaces whose policies this process has applied, or is applying.
#[derive(Default)]
pub struct Isolated(Mutex<HashMap<String, Arc<OnceCell<()>>>>);

impl Isolated {
    fn cell(&self, namespace: &str) -> Arc<OnceCell<()>> {
        let mut cells = self.0.lock().unwrap_or_else(|e| e.into_inner());
        cells.entry(namespace.to_string()).or_default().clone()
    }

    /// Counts `namespace` as isolated without applying anything (unit tests).
    pub fn mark(&self, namespace: &str) {
        let _ = self.cell(namespace).set(());
    }
}

/// Applies the namespace's policies once per process. Reconciliations that arrive while the
/// apply is in flight wait for it instead of applying again: after a restart every backend is
/// reconciled at once, and each used to apply the three policies (4.4 writes per backend,
/// measured by `cargo xtask bench scale`). A failed apply is tried again by the next caller.
pub async fn ensure(ctx: &Context, namespace: &str, id: &str) -> Result<(), Error> {
    let cell = ctx.isolated_namespaces.cell(namespace);
    cell.get_or_try_init(|| async {
        apply(&ctx.client, namespace).await.map_err(|e| Error::api("apply", "NetworkPolicy", id, e))
    })
    .await
    .map(drop)
}

pub async fn apply(client: &Client, namespace: &str) -> Result<(), kube::Error> {
    let api: Api<NetworkPolicy> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let policies = build(namespace);
    let applies =
        policies.iter().map(|policy| {
            let (api, params) = (&api, &params);
            async move {
                api.patch(policy.metadata.name.as_deref().unwrap_or_default(), params, &Patch::Apply(policy)).await
            }
        });
    futures::future::try_join_all(applies).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(policies: &[NetworkPolicy], name: &str) -> serde_json::Value {
        let policy = policies.iter().find(|p| p.metadata.name.as_deref() == Some(name)).unwrap();
        serde_json::to_value(policy.spec.as_ref().unwrap()).unwrap()
    }

    #[test]
    fn backends_take_traffic_only_from_the_proxy_and_the_admin_port_only_from_the_sweeper() {
        let policies = build("games");
        assert!(policies.iter().all(|p| p.metadata.namespace.as_deref() == Some("games")));
        let ingress = named(&policies, INGRESS);
        assert_eq!(
            ingress["podSelector"]["matchLabels"],
            serde_json::json!({"app.kubernetes.io/managed-by": "spawner"})
        );
        assert_eq!(ingress["policyTypes"], serde_json::json!(["Ingress"]));
        let rules = ingress["ingress"].as_array().unwrap();
        assert_eq!(rules.len(), 2);
        let from = |rule: &serde_json::Value| rule["from"][0]["podSelector"]["matchLabels"][names::NAME_LABEL].clone();
        assert_eq!(from(&rules[0]), names::PROXY);
        assert_eq!(
            rules[0]["ports"],
            serde_json::json!([{"protocol": "TCP", "port": 9080}, {"protocol": "TCP", "port": "spawner-http"}])
        );
        assert_eq!(from(&rules[1]), names::SWEEPER);
        assert_eq!(rules[1]["ports"], serde_json::json!([{"protocol": "TCP", "port": 9081}]));
        for rule in rules {
            assert_eq!(
                rule["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                "spawner-system"
            );
        }
    }

    #[test]
    fn public_egress_is_dns_and_public_addresses_and_none_is_nothing() {
        let policies = build("games");
        let public = named(&policies, EGRESS_PUBLIC);
        assert_eq!(public["podSelector"]["matchLabels"][names::EGRESS_LABEL], "Public");
        let v4 = &public["egress"][1]["to"][0]["ipBlock"];
        assert_eq!(v4["cidr"], "0.0.0.0/0");
        let except: Vec<&str> = v4["except"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        for private in ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"] {
            assert!(except.contains(&private), "{private} is not excluded");
        }
        assert_eq!(public["egress"][0]["ports"][0], serde_json::json!({"protocol": "UDP", "port": 53}));
        let none = named(&policies, EGRESS_NONE);
        assert_eq!(none["podSelector"]["matchLabels"][names::EGRESS_LABEL], "None");
        assert_eq!(none["policyTypes"], serde_json::json!(["Egress"]));
        // An empty list, not a missing one: with Egress in policyTypes that denies everything.
        assert_eq!(none["egress"], serde_json::json!([]));
        // Unrestricted pods are selected by no egress policy.
        for policy in &policies {
            let spec = named(&policies, policy.metadata.name.as_deref().unwrap());
            assert_ne!(spec["podSelector"]["matchLabels"][names::EGRESS_LABEL], "Unrestricted");
        }
    }
}
