//! Test harness for integration tests against a real Kubernetes cluster.
//!
//! Each test gets a namespace of its own ([`TestNamespace`], within the `TestEnv` of
//! backends.rs), deleted when it drops. If the test panicked, the objects and events of the
//! namespace are printed first.
//!
//! Which cluster (`SPAWNER_TEST_CLUSTER`):
//! - unset or `local`: the local cluster of `cargo xtask cluster`, started if it is not running;
//! - `kind`: the two-node kind cluster `spawner-e2e` of `cargo xtask kind` (its kubeconfig under
//!   `~/.cache/spawner/kind/`), created if it does not exist;
//! - `existing`: the current KUBECONFIG context.
//!
//! When no cluster can be had the test fails with the reason: these tests never pass by skipping.
//!
//! Shared by the test crates that use a cluster, each through its own `support` module, which
//! includes this file and whichever others of tests/support it needs (each file is compiled
//! into every crate that includes it, so each holds only what all of those use).

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the local cluster's admin kubeconfig (`cargo xtask cluster kubeconfig`).
pub fn local_kubeconfig() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
    home.join(".cache/spawner/cluster/admin.kubeconfig")
}

/// The kind cluster the tests use with `SPAWNER_TEST_CLUSTER=kind`, and its proxy's host port.
pub const KIND_CLUSTER: &str = "spawner-e2e";
pub const KIND_PROXY_PORT: u16 = 31080;

/// Which cluster the tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestCluster {
    Local,
    Kind,
    Existing,
}

pub fn test_cluster() -> TestCluster {
    match std::env::var("SPAWNER_TEST_CLUSTER").as_deref() {
        Ok("existing") => TestCluster::Existing,
        Ok("kind") => TestCluster::Kind,
        Ok("local") | Ok("") | Err(_) => TestCluster::Local,
        Ok(other) => panic!("SPAWNER_TEST_CLUSTER={other}: expected local, kind or existing"),
    }
}

fn kind_kubeconfig() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
    home.join(format!(".cache/spawner/kind/{KIND_CLUSTER}.kubeconfig"))
}

/// KUBECONFIG to hand to kubectl and to the binaries the tests start.
pub fn kubeconfig_path() -> PathBuf {
    match test_cluster() {
        TestCluster::Existing => std::env::var_os("KUBECONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".kube/config")),
        TestCluster::Kind => kind_kubeconfig(),
        TestCluster::Local => local_kubeconfig(),
    }
}

/// Makes sure the test cluster runs, once per test process.
fn ensure_cluster() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let up: Vec<String> = match test_cluster() {
            TestCluster::Existing => return,
            TestCluster::Local => vec!["cluster".into(), "up".into()],
            TestCluster::Kind => ["kind", "up", "--name", KIND_CLUSTER, "--workers", "1", "--host-port"]
                .iter()
                .map(|s| s.to_string())
                .chain([KIND_PROXY_PORT.to_string()])
                .collect(),
        };
        let kubeconfig = kubeconfig_path();
        let healthy = kubeconfig.exists()
            && Command::new("kubectl")
                .args(["get", "--raw", "/readyz"])
                .env("KUBECONFIG", &kubeconfig)
                .output()
                .is_ok_and(|o| o.status.success());
        if healthy {
            return;
        }
        eprintln!(
            "test harness: no cluster answers at {}; starting it with `cargo xtask {}`",
            kubeconfig.display(),
            up.join(" ")
        );
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .arg("xtask")
            .args(&up)
            .current_dir(repo_root())
            .status()
            .expect("running `cargo xtask`");
        assert!(
            status.success(),
            "no cluster for the integration tests: `cargo xtask {}` failed ({status})",
            up.join(" ")
        );
    });
}

/// Client configuration for the test cluster.
pub async fn config() -> Config {
    ensure_cluster();
    if test_cluster() == TestCluster::Existing {
        return Config::infer().await.expect("SPAWNER_TEST_CLUSTER=existing but no usable KUBECONFIG");
    }
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path()).expect("reading the test cluster's kubeconfig");
    Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("the test cluster's kubeconfig is usable")
}

/// A namespace of the test's own on a real cluster, deleted when this drops.
pub struct TestNamespace {
    pub name: String,
    config: Config,
}

impl TestNamespace {
    /// Creates a fresh namespace named after the test (plus a random suffix); returns it with the
    /// client that created it.
    pub async fn new(test: &str) -> (TestNamespace, Client) {
        let config = config().await;
        let client = Client::try_from(config.clone()).expect("client for the test cluster");
        let suffix: u32 = rand::random::<u32>() % 100_000;
        let base: String =
            test.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        let namespace = format!("t-{}-{suffix}", base.trim_matches('-').chars().take(40).collect::<String>());
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(namespace.clone()),
                labels: Some([("spawner.dev/test".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating test namespace {namespace}: {e}"));
        (TestNamespace { name: namespace, config }, client)
    }

    fn dump(&self) {
        let dump = Command::new("kubectl")
            .args(["get", "all,sessionlivedbackends,secrets,events", "-o", "wide", "--namespace", &self.name])
            .env("KUBECONFIG", kubeconfig_path())
            .output();
        if let Ok(out) = dump {
            eprintln!(
                "--- objects and events in {} ---\n{}{}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Ok(out) = Command::new("kubectl")
            .args(["get", "sessionlivedbackends,pods", "-o", "yaml", "--namespace", &self.name])
            .env("KUBECONFIG", kubeconfig_path())
            .output()
        {
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        }
        // A pod that stays Pending is most often the node's doing (a taint, a pressure condition).
        if let Ok(out) = Command::new("kubectl")
            .args(["get", "nodes", "-o", NODE_COLUMNS])
            .env("KUBECONFIG", kubeconfig_path())
            .output()
        {
            eprintln!(
                "--- nodes ---\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// Each node's taints and the conditions that are True (Ready, or a pressure).
const NODE_COLUMNS: &str = "custom-columns=NODE:.metadata.name,TAINTS:.spec.taints[*].key,\
TRUE-CONDITIONS:.status.conditions[?(@.status==\"True\")].type";

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        // Drop cannot await, and the test's runtime may be shutting down: delete the namespace
        // from a runtime of our own (deletion is asynchronous on the server; we do not wait).
        let config = self.config.clone();
        let namespace = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let client = Client::try_from(config).unwrap();
                let _ = Api::<Namespace>::all(client).delete(&namespace, &DeleteParams::background()).await;
            });
        })
        .join();
    }
}
