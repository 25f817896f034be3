//! `cargo xtask deploy`: Spawner on a cluster, ending with a demo backend's URL.
//!
//! With Docker and kind on the machine it uses kind (cluster `spawner`, the proxy's NodePort
//! mapped to the host); otherwise the local cluster of `cargo xtask cluster`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

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
    let (kubeconfig, images) = match target {
        Target::Kind => {
            if !kind_available() {
                bail!("--kind needs `kind` and a running Docker daemon; without them use --local");
            }
            kind_up()?
        }
        Target::Auto | Target::Local => {
            crate::cluster::up(&crate::cluster::UpOptions::default())?;
            println!("==> images");
            let images = crate::images::build_and_load()?;
            (crate::cluster::kubeconfig_path(), images)
        }
    };
    apply_default(&kubeconfig, &images)?;
    println!("Spawner is up in {:.1?}; reverse proxy: {}", started.elapsed(), crate::manifests::PROXY_BASE_URL);
    if demo {
        let url = crate::demo::create(&kubeconfig)?;
        println!();
        println!("Play drop four: open this URL in two browser windows:");
        println!("    {url}");
    }
    Ok(())
}

/// Creates the kind cluster `spawner` (the proxy's NodePort mapped to the host), builds the images
/// with Docker and loads them, each also under a tag made from its image ID; returns the
/// kubeconfig and those content references.
fn kind_up() -> Result<(PathBuf, Vec<Pinned>)> {
    let run = |program: &str, args: &[&str]| -> Result<String> {
        let out = Command::new(program)
            .args(args)
            .current_dir(crate::project_root())
            .output()
            .with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            bail!("{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let kubeconfig = crate::cluster::cache_root()?.join("kind-spawner.kubeconfig");
    if !run("kind", &["get", "clusters"])?.lines().any(|l| l == "spawner") {
        println!("==> kind create cluster --name spawner");
        let config = crate::cluster::cache_root()?.join("kind-spawner.yaml");
        std::fs::write(
            &config,
            format!(
                "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: control-plane\n  extraPortMappings:\n  - containerPort: {port}\n    hostPort: {port}\n",
                port = crate::manifests::PROXY_NODE_PORT
            ),
        )?;
        run("kind", &["create", "cluster", "--name", "spawner", "--config", config.to_str().unwrap()])?;
    }
    std::fs::write(&kubeconfig, run("kind", &["get", "kubeconfig", "--name", "spawner"])?)?;
    let mut pinned = Vec::new();
    for (component, _) in crate::images::RUST_IMAGES.iter().chain(&[("nginx", "nginx")]) {
        let image = spawner::names::image(component);
        println!("==> docker build --target {component} -t {image}");
        run("docker", &["build", "-f", "images/Dockerfile", "--target", component, "-t", &image, "."])?;
        let id = run("docker", &["image", "inspect", "--format", "{{.Id}}", &image])?;
        let hex = id.trim().trim_start_matches("sha256:");
        let name = image.rsplit_once(':').map_or(image.as_str(), |(name, _)| name);
        let content_ref = format!("{image}-{}", &hex[..hex.len().min(12)]);
        run("docker", &["tag", &image, &content_ref])?;
        run("kind", &["load", "docker-image", "--name", "spawner", &image, &content_ref])?;
        pinned.push(Pinned { name: name.to_string(), content_ref });
    }
    Ok((kubeconfig, pinned))
}

fn kind_available() -> bool {
    let ok = |cmd: &str, args: &[&str]| Command::new(cmd).args(args).output().is_ok_and(|o| o.status.success());
    ok("kind", &["version"]) && ok("docker", &["info"])
}

/// Where the overlay that pins config/default's images is written (inside the checkout: kustomize
/// takes a base by relative path).
const OVERLAY_DIR: &str = "target/deploy";

/// A kustomization of config/default with each of our images pinned to its content reference:
/// applying it changes a workload only when its image did, so deploying again with nothing new
/// restarts nothing (and nginx keeps its users' WebSockets).
fn overlay(images: &[Pinned]) -> String {
    let mut out = String::from(
        "# Written by `cargo xtask deploy`: config/default with images pinned by content.\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\n\
         kind: Kustomization\n\
         resources:\n\
         - ../../config/default\n",
    );
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
pub fn apply_default(kubeconfig: &PathBuf, images: &[Pinned]) -> Result<()> {
    let t = Instant::now();
    println!("==> kubectl apply -k config/default (images pinned by content)");
    let dir = crate::project_root().join(OVERLAY_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("kustomization.yaml"), overlay(images))
        .with_context(|| format!("writing {}/kustomization.yaml", dir.display()))?;
    // The CRD first, so it is Established before anything could use it; the same (client-side)
    // apply as the kustomization's, so the second apply finds it unchanged.
    kubectl(kubeconfig, &["apply", "-f", "config/crd/sessionlivedbackends.spawner.dev.yaml"])?;
    kubectl(
        kubeconfig,
        &["wait", "--for=condition=Established", "--timeout=60s", "crd/sessionlivedbackends.spawner.dev"],
    )?;
    let applied = kubectl(kubeconfig, &["apply", "-k", OVERLAY_DIR])?;
    let changed: Vec<&str> = applied.lines().filter(|l| !l.ends_with(" unchanged")).collect();
    if changed.is_empty() {
        println!("    nothing changed");
    } else {
        for line in changed {
            println!("    {line}");
        }
    }
    for workload in ["deployment/spawner-controller", "daemonset/spawner-sweeper", "deployment/spawner-proxy"] {
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

pub fn kubectl(kubeconfig: &PathBuf, args: &[&str]) -> Result<String> {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .current_dir(crate::project_root())
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

    #[test]
    fn the_overlay_pins_each_image_by_its_content_tag() {
        let images = [Pinned {
            name: "localhost/spawner/controller".into(),
            content_ref: "localhost/spawner/controller:0.1.0-0123456789ab".into(),
        }];
        let yaml = overlay(&images);
        assert!(yaml.contains("resources:\n- ../../config/default\n"), "{yaml}");
        assert!(yaml.contains("- name: localhost/spawner/controller\n  newTag: 0.1.0-0123456789ab\n"), "{yaml}");
        let parsed: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(parsed["kind"], "Kustomization");
    }
}
