//! `cargo xtask kind up|down|node-image`: kind clusters on this machine.
//!
//! The kind CLI is pinned (`hack/kind`, sigs.k8s.io/kind v0.33.0): a `kind` on PATH of that
//! version is used, otherwise it is built once from the Go module proxy into
//! `~/.cache/spawner/kind/<version>/`. Nodes run the image of [`node_image`] (assembled here,
//! offline) on the Docker engine of [`crate::docker`]. A cluster has one control-plane node and
//! `workers` worker nodes; the reverse proxy's NodePort is mapped to `127.0.0.1:<host_port>`.

pub mod node_image;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use xshell::{Shell, cmd};

use crate::cluster::{build, cache_root};
use crate::docker::Engine;

pub const KIND_VERSION: &str = "v0.33.0";
/// kind's own node image for Kubernetes 1.34 built for [`KIND_VERSION`] (from its release
/// notes), pinned by digest: used where Docker has it or can pull it — with
/// `SPAWNER_KIND_NODE_IMAGE=stock` — instead of the image assembled here.
pub const STOCK_NODE_IMAGE: &str =
    "kindest/node:v1.34.11@sha256:44e222ee2132dab25ff87301682f89eb82c7880ea3a1bf543bfe9708fd08d67d";

/// Which node image a cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeImage {
    /// Assembled here from the package registries ([`node_image`]).
    Offline,
    /// kind's published image ([`STOCK_NODE_IMAGE`]).
    Stock,
}

/// The stock image when asked for (`SPAWNER_KIND_NODE_IMAGE=stock`) or already present; else the
/// offline one. Nothing is pulled unasked: on a machine without a registry a pull only fails.
fn choose_node_image(engine: &Engine) -> Result<(NodeImage, String)> {
    let asked = std::env::var("SPAWNER_KIND_NODE_IMAGE").unwrap_or_default();
    let sh = engine.shell()?;
    let present =
        cmd!(sh, "docker image inspect {STOCK_NODE_IMAGE}").quiet().ignore_stdout().ignore_stderr().run().is_ok();
    match asked.as_str() {
        "stock" => Ok((NodeImage::Stock, STOCK_NODE_IMAGE.to_string())),
        "offline" => Ok((NodeImage::Offline, node_image::ensure(engine)?)),
        "" if present => Ok((NodeImage::Stock, STOCK_NODE_IMAGE.to_string())),
        "" => Ok((NodeImage::Offline, node_image::ensure(engine)?)),
        other => anyhow::bail!("SPAWNER_KIND_NODE_IMAGE={other}: expected stock or offline"),
    }
}

/// What `up` creates.
#[derive(Debug, Clone)]
pub struct Options {
    pub name: String,
    /// Worker nodes besides the control plane.
    pub workers: usize,
    /// Host port (on 127.0.0.1) of the reverse proxy's NodePort.
    pub host_port: u16,
}

impl Default for Options {
    fn default() -> Self {
        Options { name: "spawner".into(), workers: 1, host_port: crate::manifests::PROXY_NODE_PORT as u16 }
    }
}

/// A running kind cluster.
#[derive(Debug, Clone)]
pub struct Kind {
    pub name: String,
    pub kubeconfig: PathBuf,
    pub engine: Engine,
    pub kind: PathBuf,
    /// Where the reverse proxy answers on this machine.
    pub base_url: String,
}

/// The kind module's directory in the Go module cache (downloaded if needed): the node image
/// takes kind's node files from it.
pub fn module_dir() -> Result<PathBuf> {
    let sh = xshell::Shell::new()?;
    sh.change_dir(crate::project_root().join("hack/kind"));
    let go = build::go();
    let dir = cmd!(sh, "{go} mod download -json sigs.k8s.io/kind")
        .quiet()
        .read()
        .context("go mod download sigs.k8s.io/kind")?;
    let json: serde_json::Value = serde_json::from_str(&dir).context("parsing `go mod download -json`")?;
    let dir = json["Dir"].as_str().context("`go mod download -json` gave no Dir")?;
    Ok(PathBuf::from(dir))
}

/// The kind CLI: one on PATH if it is [`KIND_VERSION`], else our build.
pub fn binary() -> Result<PathBuf> {
    let on_path = Shell::new().and_then(|sh| cmd!(sh, "kind version").quiet().ignore_stderr().read());
    if let Ok(version) = on_path
        && version.contains(&format!("kind {KIND_VERSION} "))
    {
        return Ok(PathBuf::from("kind"));
    }
    build::hack_binary("kind", KIND_VERSION, "sigs.k8s.io/kind", "kind")
}

/// Creates the cluster unless it exists (then it is reused as it is); waits until every node is
/// Ready; writes its kubeconfig under `~/.cache/spawner/kind/<name>.kubeconfig`.
pub fn up(opts: &Options) -> Result<Kind> {
    let started = Instant::now();
    let engine = crate::docker::up()?;
    let kind = binary()?;
    let sh = engine.shell()?;
    let name = &opts.name;
    let dir = cache_root()?.join("kind");
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join(format!("{name}.kubeconfig"));
    let clusters = cmd!(sh, "{kind} get clusters").quiet().ignore_stderr().read()?;
    if !clusters.lines().any(|l| l == name) {
        let (which, image) = choose_node_image(&engine)?;
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(&config, cluster_config(opts, which))?;
        println!("==> kind create cluster --name {name} (1 control plane, {} workers)", opts.workers);
        let t = Instant::now();
        cmd!(sh, "{kind} create cluster --name {name} --image {image} --config {config} --kubeconfig {kubeconfig} --retain")
            .run()
            .with_context(|| format!("kind create cluster failed; the nodes are kept for inspection (`{} export logs --name {name}`, then `cargo xtask kind down --name {name}`)", kind.display()))?;
        println!("    created in {:.1?}", t.elapsed());
        // Backends run on every node, the control plane's included: the tests pin them to each.
        let taint = "node-role.kubernetes.io/control-plane:NoSchedule-";
        crate::deploy::kubectl(&kubeconfig, &["taint", "nodes", "-l", "node-role.kubernetes.io/control-plane", taint])?;
    } else {
        println!("==> kind cluster {name} exists; reusing it");
    }
    let config = cmd!(sh, "{kind} get kubeconfig --name {name}").quiet().read()?;
    std::fs::write(&kubeconfig, config)?;
    println!("    waiting for every node to be Ready");
    crate::deploy::kubectl(&kubeconfig, &["wait", "--for=condition=Ready", "node", "--all", "--timeout=300s"])
        .context("kind nodes did not become Ready (see `kubectl describe nodes` and the spawner-node-network unit: `docker exec NODE journalctl -u spawner-node-network`)")?;
    println!("kind cluster {name} up in {:.1?}; export KUBECONFIG={}", started.elapsed(), kubeconfig.display());
    Ok(Kind { name: name.clone(), kubeconfig, engine, kind, base_url: format!("http://127.0.0.1:{}", opts.host_port) })
}

/// Deletes the cluster (its node containers and network); with no Docker engine running there is
/// nothing to delete.
pub fn down(name: &str) -> Result<()> {
    let Some(engine) = crate::docker::find()? else {
        println!("no Docker engine runs: no kind cluster to delete");
        return Ok(());
    };
    let kind = binary()?;
    let sh = engine.shell()?;
    cmd!(sh, "{kind} delete cluster --name {name}").run()?;
    let _ = std::fs::remove_file(cache_root()?.join("kind").join(format!("{name}.kubeconfig")));
    Ok(())
}

impl Kind {
    /// Loads OCI image tars into every node.
    pub fn load(&self, tars: &[PathBuf]) -> Result<()> {
        let sh = self.engine.shell()?;
        let (kind, name) = (&self.kind, &self.name);
        let t = Instant::now();
        cmd!(sh, "{kind} load image-archive --name {name} {tars...}")
            .quiet()
            .run()
            .context("kind load image-archive")?;
        println!("    loaded {} images into kind in {:.1?}", tars.len(), t.elapsed());
        Ok(())
    }
}

/// kind's cluster config: nodes, the proxy's port mapping, kube-proxy in iptables mode (as with
/// kind's defaults), and on the offline image CoreDNS from our image.
fn cluster_config(opts: &Options, image: NodeImage) -> String {
    let mut out = format!(
        "# Written by `cargo xtask kind up`.\n\
         kind: Cluster\n\
         apiVersion: kind.x-k8s.io/v1alpha4\n\
         networking:\n  kubeProxyMode: iptables\n\
         nodes:\n\
         - role: control-plane\n  extraPortMappings:\n  - containerPort: {node_port}\n    hostPort: {host_port}\n    listenAddress: \"127.0.0.1\"\n\
         \x20 - containerPort: {lobby_node_port}\n    hostPort: {lobby_host_port}\n    listenAddress: \"127.0.0.1\"\n",
        node_port = crate::manifests::PROXY_NODE_PORT,
        host_port = opts.host_port,
        // The demo's lobby, on the next port.
        lobby_node_port = crate::manifests::LOBBY_NODE_PORT,
        lobby_host_port = opts.host_port + 1,
    );
    for _ in 0..opts.workers {
        out.push_str("- role: worker\n");
    }
    if image == NodeImage::Offline {
        let (repo, tag) = build::COREDNS_IMAGE.rsplit_once(':').unwrap_or((build::COREDNS_IMAGE, "latest"));
        let repo = repo.trim_end_matches("/coredns");
        out.push_str(&format!(
            "kubeadmConfigPatches:\n- |\n  kind: ClusterConfiguration\n  dns:\n    imageRepository: {repo}\n    imageTag: {tag}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cluster_config_maps_the_proxy_and_adds_workers() {
        let opts = super::Options { name: "t".into(), workers: 2, host_port: 31080 };
        let config = super::cluster_config(&opts, super::NodeImage::Offline);
        let parsed: serde_yaml::Value = serde_yaml::from_str(&config).unwrap();
        let nodes = parsed["nodes"].as_sequence().unwrap();
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0]["extraPortMappings"][0]["hostPort"], 31080);
        assert_eq!(nodes[0]["extraPortMappings"][0]["containerPort"], 30080);
        assert_eq!(nodes[2]["role"], "worker");
        let patch: serde_yaml::Value =
            serde_yaml::from_str(parsed["kubeadmConfigPatches"][0].as_str().unwrap()).unwrap();
        assert_eq!(patch["dns"]["imageRepository"], "spawner.local");
        // kind's own image brings its own CoreDNS.
        let stock = super::cluster_config(&opts, super::NodeImage::Stock);
        assert!(!stock.contains("kubeadmConfigPatches"), "{stock}");
    }
}
