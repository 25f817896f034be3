//! The cluster tests' harness: tests/support's test namespace, backends, garbage collection and
//! netcheck pods, and what only these tests need, which bring their own Spawner: the generated
//! CRD and RBAC installed, kubeconfigs and clients impersonating Spawner's ServiceAccounts,
//! kubectl in the test's namespace, and the controller as a process ([`controller`]).

#[path = "../../support/backends.rs"]
mod backends;
#[path = "../../support/children.rs"]
mod children;
pub mod controller;
#[path = "../../support/env.rs"]
mod env;
#[path = "../../support/netcheck.rs"]
pub mod netcheck;
pub mod writes;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::wait::conditions;

pub use backends::*;
pub use children::*;
pub use env::*;

/// Applies Spawner's namespace and the generated RBAC (config/rbac), once per test process.
pub fn apply_rbac() {
    static APPLIED: OnceLock<()> = OnceLock::new();
    APPLIED.get_or_init(|| {
        for args in [vec!["apply", "-f", "config/default/namespace.yaml"], vec!["apply", "-k", "config/rbac"]] {
            let out = Command::new("kubectl")
                .args(&args)
                .env("KUBECONFIG", kubeconfig_path())
                .current_dir(repo_root())
                .output()
                .expect("running kubectl");
            assert!(out.status.success(), "kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
    });
}

/// A kubeconfig like the test cluster's that impersonates one of Spawner's ServiceAccounts, for
/// running a binary with exactly its generated RBAC; returns its path.
pub fn impersonating_kubeconfig(service_account: &str) -> PathBuf {
    let admin = std::fs::read_to_string(kubeconfig_path()).expect("reading the test kubeconfig");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&admin).unwrap();
    let subject = format!("system:serviceaccount:{}:{service_account}", spawner::names::SYSTEM_NAMESPACE);
    for user in config["users"].as_sequence_mut().expect("kubeconfig users") {
        user["user"]["as"] = serde_yaml::Value::String(subject.clone());
    }
    let path = std::env::temp_dir().join(format!("{service_account}-{}.kubeconfig", std::process::id()));
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// A client that acts as the given ServiceAccount (impersonation), to prove RBAC.
pub async fn client_as_service_account(namespace: &str, name: &str) -> Client {
    let mut config = config().await;
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:{name}"));
    Client::try_from(config).expect("impersonating client")
}

/// Installs (or updates) the generated CRDs and waits until they are Established.
pub async fn install_crd(client: &Client) {
    for file in ["sessionlivedbackends.spawner.dev.yaml", "sessionlivedbackendpools.spawner.dev.yaml"] {
        let path = repo_root().join("config/crd").join(file);
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).expect("generated CRD parses");
        let api = Api::<CustomResourceDefinition>::all(client.clone());
        let name = crd.metadata.name.clone().unwrap();
        api.patch(&name, &PatchParams::apply("spawner-tests").force(), &Patch::Apply(&crd))
            .await
            .expect("applying the generated CRD");
        wait_for(&api, &name, conditions::is_crd_established(), Duration::from_secs(30)).await;
    }
}

impl TestEnv {
    /// Runs kubectl against the test cluster in the test's namespace; returns stdout, panics
    /// with stderr on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_output(args);
        assert!(out.status.success(), "kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl and returns its whole output, for tests that expect it to fail.
    pub fn kubectl_output(&self, args: &[&str]) -> std::process::Output {
        Command::new("kubectl")
            .args(args)
            .args(["--namespace", &self.namespace])
            .env("KUBECONFIG", kubeconfig_path())
            .output()
            .expect("running kubectl")
    }

    /// Deletes the namespace and waits until it is gone, so that what it held no longer loads
    /// the API server (a benchmark's next phase must not pay for this one's cleanup).
    pub async fn delete_and_wait(self, timeout: Duration) {
        let namespaces = Api::<Namespace>::all(self.client.clone());
        let uid = namespaces.get(&self.namespace).await.expect("the test namespace").metadata.uid.unwrap_or_default();
        namespaces.delete(&self.namespace, &DeleteParams::background()).await.expect("deleting the test namespace");
        wait_for(&namespaces, &self.namespace, conditions::is_deleted(&uid), timeout).await;
    }
}
