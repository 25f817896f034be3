//! `cargo xtask deploy`: Spawner on a cluster, ending with a demo backend's URL.
//!
//! With Docker and kind on the machine it uses kind (cluster `spawner`, the proxy's NodePort
//! mapped to the host); otherwise the local cluster of `cargo xtask cluster`.

use std::path::PathBuf;
use std::time::{Duration, Instant};
use xshell::{Shell, cmd};

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::runtime::wait::{Condition, conditions::is_crd_established};

use crate::images::Pinned;

/// Where to deploy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// kind if Docker and kind are available, else the local cluster.
    Auto,
    Kind,
    Local,
}

pub fn run(target: Target, demo: bool) -> Result<()> {
    let started = Instant::now();
    let target = match target {
        Target::Auto if kind_available() => Target::Kind,
        Target::Auto => Target::Local,
        t => t,
    };
    let (kubeconfig, images, base_url) = match target {
        Target::Kind => {
            if crate::cluster::running() {
                bail!(
                    "the local cluster runs and serves {} too; stop it first (`cargo xtask cluster down`) or deploy to it (`cargo xtask deploy --local`)",
                    crate::manifests::PROXY_BASE_URL
                );
            }
            let kind = crate::kind::up(&crate::kind::Options::default())?;
            println!("==> images");
            let built = crate::images::build(false)?;
            kind.load(&built.iter().map(|b| b.path.clone()).collect::<Vec<_>>())?;
            (kind.kubeconfig.clone(), built.iter().map(Pinned::of).collect(), kind.base_url)
        }
        Target::Auto | Target::Local => {
            crate::cluster::up(&crate::cluster::UpOptions::default())?;
            println!("==> images");
            let images = crate::images::build_and_load(false)?;
            (crate::cluster::kubeconfig_path(), images, crate::manifests::PROXY_BASE_URL.to_string())
        }
    };
    apply_default(&kubeconfig, &images, &base_url)?;
    println!("Spawner is up in {:.1?}; reverse proxy: {base_url}", started.elapsed());
    if demo {
        // The lobby first: its rollout takes a while, and the backend printed last is swept
        // a grace period after its claim if nobody opens it, so it is made at the very end.
        let lobby = crate::demo::lobby(&kubeconfig, &base_url)?;
        let url = crate::demo::create(&kubeconfig)?;
        println!();
        let grace = crate::manifests::DEMO_POOL_GRACE_SECONDS;
        println!("Play drop four: open this URL in two browser windows (nobody on it for {grace} s, the");
        println!("demo pool's grace period, and it is swept; the lobby makes new games):");
        println!("    {url}");
        println!("or start from the lobby (New game, or Join with a friend's room code):");
        println!("    {lobby}");
    }
    Ok(())
}

/// `cargo xtask deploy --kubeconfig K`: config/default on a cluster whose nodes already hold
/// the images (the test harness's kind cluster loads them itself).
pub fn existing(kubeconfig: &PathBuf, base_url: &str, demo: bool) -> Result<()> {
    let images: Vec<Pinned> = crate::images::build(false)?.iter().map(Pinned::of).collect();
    apply_default(kubeconfig, &images, base_url)?;
    if demo {
        println!("{}", crate::demo::create(kubeconfig)?);
    }
    Ok(())
}

/// kind on PATH and a Docker engine that answers: a user's machine set up for kind.
fn kind_available() -> bool {
    let Ok(sh) = Shell::new() else { return false };
    let quiet = |c: xshell::Cmd<'_>| c.quiet().ignore_stdout().ignore_stderr().run().is_ok();
    quiet(cmd!(sh, "kind version")) && quiet(cmd!(sh, "docker info"))
}

/// Where the overlay that pins config/default's images is written (inside the checkout: kustomize
/// takes a base by relative path).
const OVERLAY_DIR: &str = "target/deploy";

/// A kustomization of config/default with each of our images pinned to its content reference:
/// applying it changes a workload only when its image did, so deploying again with nothing new
/// restarts nothing (and nginx keeps its users' WebSockets).
fn overlay(images: &[Pinned], base_url: &str) -> String {
    let mut out = String::from(
        "# Written by `cargo xtask deploy`: config/default with images pinned by content.\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\n\
         kind: Kustomization\n\
         resources:\n\
         - ../../config/default\n",
    );
    if base_url != crate::manifests::PROXY_BASE_URL {
        // The controller's first argument is its --base-url (a test pins that).
        out.push_str(&format!(
            "patches:\n\
             - target:\n    kind: Deployment\n    name: {}\n  patch: |-\n\
             \x20   - op: replace\n      path: /spec/template/spec/containers/0/args/0\n      value: --base-url={base_url}\n",
            spawner::names::CONTROLLER
        ));
    }
    if !images.is_empty() {
        out.push_str("images:\n");
        for image in images {
            out.push_str(&format!("- name: {}\n  newTag: {}\n", image.name, image.tag()));
        }
    }
    out
}

/// `kubectl apply -k config/default` (through an overlay pinning `images` by content) and waits
/// for every rollout.
pub fn apply_default(kubeconfig: &PathBuf, images: &[Pinned], base_url: &str) -> Result<()> {
    let t = Instant::now();
    println!("==> kubectl apply -k config/default (images pinned by content)");
    let dir = crate::project_root().join(OVERLAY_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("kustomization.yaml"), overlay(images, base_url))
        .with_context(|| format!("writing {}/kustomization.yaml", dir.display()))?;
    // The CRDs first, so they are Established before anything could use them; the same
    // (client-side) apply as the kustomization's, so the second apply finds them unchanged.
    kubectl(kubeconfig, &["apply", "-k", "config/crd"])?;
    wait_established(
        kubeconfig,
        &["crd/sessionlivedbackends.spawner.dev", "crd/sessionlivedbackendpools.spawner.dev"],
    )?;
    ensure_claim_key(kubeconfig)?;
    let applied = kubectl(kubeconfig, &["apply", "-k", OVERLAY_DIR])?;
    let changed: Vec<&str> = applied.lines().filter(|l| !l.ends_with(" unchanged")).collect();
    if changed.is_empty() {
        println!("    nothing changed");
    } else {
        for line in changed {
            println!("    {line}");
        }
    }
    for workload in [
        "deployment/spawner-controller",
        "daemonset/spawner-sweeper",
        "deployment/spawner-proxy",
        "deployment/spawner-api",
    ] {
        println!("    waiting for {workload}");
        kubectl(kubeconfig, &["-n", spawner::names::SYSTEM_NAMESPACE, "rollout", "status", "--timeout=180s", workload])
            .with_context(|| format!("{workload} did not become available; see `kubectl -n spawner-system describe {workload}` and its pods' logs"))?;
    }
    println!("    config/default is available ({:.1?})", t.elapsed());
    Ok(())
}

/// Removes a deployed Spawner's workloads (the namespace `spawner-system`), keeping the CRD.
pub fn remove(kubeconfig: &PathBuf) -> Result<()> {
    kubectl(
        kubeconfig,
        &[
            "delete",
            "namespace",
            spawner::names::SYSTEM_NAMESPACE,
            "--ignore-not-found",
            "--wait=true",
            "--timeout=120s",
        ],
    )?;
    Ok(())
}

/// Creates the controller's claim key Secret unless it exists (a key made here once and kept:
/// deploying again or restarting the controller keeps the warm pods claimable).
fn ensure_claim_key(kubeconfig: &PathBuf) -> Result<()> {
    use crate::manifests::{CLAIM_KEY_FILE, CLAIM_KEY_SECRET};
    let ns = spawner::names::SYSTEM_NAMESPACE;
    kubectl(kubeconfig, &["apply", "-f", "config/default/namespace.yaml"])?;
    if kubectl(kubeconfig, &["get", "secret", "-n", ns, CLAIM_KEY_SECRET, "-o", "name"]).is_ok() {
        return Ok(());
    }
    let mut key = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key).context("reading /dev/urandom")?;
    let key: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let literal = format!("--from-literal={CLAIM_KEY_FILE}={key}");
    kubectl(kubeconfig, &["create", "secret", "generic", "-n", ns, CLAIM_KEY_SECRET, &literal])?;
    println!("    created the controller's claim key (Secret {ns}/{CLAIM_KEY_SECRET})");
    Ok(())
}

/// Waits until each CRD is Established. Neither `kubectl wait --for=condition=Established` nor a
/// JSONPath filter on the conditions: on a CRD whose status has no conditions yet, both fail at
/// once instead of waiting (`.status.conditions accessor error: <nil> is of the type <nil>`, and
/// `<nil> is not array or slice and cannot be filtered`, each seen in CI right after the apply on
/// a new kind cluster). The CRD is read whole and judged by kube's own `is_crd_established`.
fn wait_established(kubeconfig: &PathBuf, crds: &[&str]) -> Result<()> {
    const TIMEOUT: Duration = Duration::from_secs(60);
    let deadline = Instant::now() + TIMEOUT;
    for crd in crds {
        loop {
            if established(&kubectl(kubeconfig, &["get", crd, "-o", "json"])?)
                .with_context(|| format!("reading {crd}"))?
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("{crd} is not Established after {TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    Ok(())
}

/// Whether the CRD of `crd_json` (`kubectl get crd -o json`) is Established; not before the API
/// server has written the condition.
fn established(crd_json: &str) -> Result<bool> {
    let crd: CustomResourceDefinition = serde_json::from_str(crd_json)?;
    Ok(is_crd_established().matches_object(Some(&crd)))
}

pub fn kubectl(kubeconfig: &PathBuf, args: &[&str]) -> Result<String> {
    let sh = Shell::new()?;
    sh.change_dir(crate::project_root());
    let out = cmd!(sh, "kubectl {args...}")
        .env("KUBECONFIG", kubeconfig)
        .quiet()
        .ignore_status()
        .output()
        .context("running kubectl")?;
    if !out.status.success() {
        bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn a_crd_is_established_only_once_its_condition_says_so() {
        let crd = |status: &str| {
            format!(
                r#"{{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
                "metadata":{{"name":"sessionlivedbackends.spawner.dev"}},
                "spec":{{"group":"spawner.dev","names":{{"kind":"SessionLivedBackend","plural":"sessionlivedbackends"}},
                         "scope":"Namespaced","versions":[]}}{status}}}"#
            )
        };
        // Right after the apply: no status, or a status without conditions (`conditions: null`).
        assert!(!established(&crd("")).unwrap());
        assert!(!established(&crd(r#","status":{"conditions":null,"storedVersions":["v1"]}"#)).unwrap());
        let condition = |type_: &str, status: &str| {
            format!(
                r#"{{"type":"{type_}","status":"{status}","lastTransitionTime":"2026-12-02T06:30:00Z","reason":"r","message":"m"}}"#
            )
        };
        let with = |conditions: &[String]| crd(&format!(r#","status":{{"conditions":[{}]}}"#, conditions.join(",")));
        assert!(!established(&with(&[condition("NamesAccepted", "True")])).unwrap());
        assert!(!established(&with(&[condition("NamesAccepted", "True"), condition("Established", "False")])).unwrap());
        assert!(established(&with(&[condition("NamesAccepted", "True"), condition("Established", "True")])).unwrap());
        assert!(established("not json").is_err());
    }

    #[test]
    fn the_overlay_pins_each_image_by_its_content_tag() {
        let images = [Pinned {
            name: "localhost/spawner/controller".into(),
            content_ref: "localhost/spawner/controller:0.1.0-0123456789ab".into(),
        }];
        let yaml = overlay(&images, crate::manifests::PROXY_BASE_URL);
        assert!(yaml.contains("resources:\n- ../../config/default\n"), "{yaml}");
        assert!(yaml.contains("- name: localhost/spawner/controller\n  newTag: 0.1.0-0123456789ab\n"), "{yaml}");
        let parsed: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(parsed["kind"], "Kustomization");
        assert!(!yaml.contains("patches"), "{yaml}");
    }

    #[test]
    fn another_base_url_replaces_the_controllers_base_url_argument() {
        let yaml = overlay(&[], "http://127.0.0.1:31080");
        let parsed: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        let patch: serde_yaml::Value = serde_yaml::from_str(parsed["patches"][0]["patch"].as_str().unwrap()).unwrap();
        assert_eq!(patch[0]["value"], "--base-url=http://127.0.0.1:31080");
        // The patch replaces args[0]: it must be the --base-url of the generated Deployment.
        let manager = std::fs::read_to_string(crate::project_root().join("config/manager/controller.yaml")).unwrap();
        let deployment = serde_yaml::Deserializer::from_str(&manager)
            .map(|d| serde_yaml::Value::deserialize(d).unwrap())
            .find(|d| d["kind"] == "Deployment")
            .expect("the controller's Deployment");
        let first = deployment["spec"]["template"]["spec"]["containers"][0]["args"][0].as_str().unwrap();
        assert!(first.starts_with("--base-url="), "{first}");
    }
}
