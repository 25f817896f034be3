//! `cargo xtask kind node-image`: a kind node image assembled on this machine, offline.
//!
//! kind's own `kindest/node` images come from a container registry, which this project's machines
//! cannot reach; `kind build node-image` needs a `kindest/base` image from the same registry. So
//! the image is assembled the way kind's base and node images are, from what the package
//! registries serve:
//!
//! - a Debian root filesystem made by `debootstrap` (systemd, containerd and runc, the CNI
//!   plugins, iptables/nftables and the other tools kind's entrypoint and kubeadm use);
//! - kind's node files — its entrypoint, the kubelet and kubeadm systemd units, sysctls — read
//!   from the kind Go module (`hack/kind`, the same version as the kind CLI), not copied into this
//!   repository;
//! - Kubernetes v1.34.4 built here (kubelet, kubeadm, kubectl), crictl from `sigs.k8s.io/cri-tools`;
//! - the images kubeadm runs, pre-loaded into the node's containerd: kube-apiserver,
//!   kube-controller-manager, kube-scheduler and kube-proxy from the same build, etcd 3.6.5 from
//!   `go.etcd.io/etcd`, CoreDNS and pause from `hack/`;
//! - a pod network: kind's kindnetd is a separate Go module that the module proxy does not serve,
//!   so the image carries Debian's `bridge`/`host-local`/`portmap` CNI plugins and a small unit
//!   (`spawner-node-network`) that gives each node a bridge on its pod CIDR and routes to every
//!   other node's pod CIDR through that node's address (what kindnetd does for routing);
//! - NetworkPolicy enforcement: kindnetd's policy engine (kube-network-policies) needs nftables'
//!   `queue` statement, which kernels built without CONFIG_NFT_QUEUE (this machine's) refuse, so
//!   the default CNI manifest runs kube-router v2.1.0's network policy controller instead
//!   (`hack/kube-router`, firewall only: iptables and ipset, as k3s embeds it).
//!
//! Differences from `kindest/node` (the README lists them): Debian 12's containerd 1.6 and runc
//! 1.1 instead of kind's builds; CoreDNS v1.14.7 (trimmed to the plugins kubeadm's Corefile uses)
//! instead of v1.12.1; no local-path storage provisioner (kind falls back to a host-path default
//! StorageClass); NetworkPolicy enforced by kube-router instead of kindnetd; `restrict_oom_score_adj` set in
//! containerd and no resource limits raised by systemd units, so that nodes run where the
//! container lacks CAP_SYS_RESOURCE.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::cluster::{KUBE_VERSION, build, cache_root};
use crate::docker::Engine;
use crate::oci::{ImageSpec, build_image_to};

/// The node image. Bump the suffix whenever what goes into it changes.
pub const NODE_IMAGE: &str = "spawner.local/kind-node:v1.34.4-spawner.5";
/// Debian release and packages of the root filesystem (bump the key when the list changes).
const ROOTFS_KEY: &str = "bookworm-1";
const SUITE: &str = "bookworm";
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "conntrack",
    "iptables",
    "nftables",
    "iproute2",
    "ethtool",
    "util-linux",
    "mount",
    "kmod",
    "libseccomp2",
    "pigz",
    "bash",
    "ca-certificates",
    "curl",
    "jq",
    "procps",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "socat",
    "iputils-ping",
];
/// What kubeadm v1.34 deploys as etcd.
const ETCD_IMAGE: &str = "registry.k8s.io/etcd:3.6.5-0";
const CRICTL_VERSION: &str = "v1.37.0";
/// kube-router (`hack/kube-router`), whose network policy controller enforces NetworkPolicy.
const KUBE_ROUTER_VERSION: &str = "v2.1.0";
const KUBE_ROUTER_IMAGE: &str = "spawner.local/kube-router:v2.1.0";

/// Builds the node image unless the engine has it already; returns its reference.
pub fn ensure(engine: &Engine) -> Result<String> {
    let sh = engine.shell()?;
    if cmd!(sh, "docker image inspect {NODE_IMAGE}").quiet().ignore_stdout().ignore_stderr().run().is_ok() {
        return Ok(NODE_IMAGE.to_string());
    }
    let started = Instant::now();
    println!("==> kind node image {NODE_IMAGE} (cold: ~10 min; cached in Docker afterwards)");
    let work = cache_root()?.join("kind").join("node-image");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    let images = work.join("images");
    control_plane_images(&images)?;
    let rootfs = rootfs()?;
    let tree = work.join("rootfs");
    cmd!(sh, "cp -a {rootfs} {tree}").run()?;
    println!("    node files");
    node_files(&sh, &tree)?;
    preload(&work, &tree, &images)?;
    let layer = work.join("rootfs.tar");
    cmd!(sh, "tar -C {tree} --numeric-owner -cf {layer} .").run()?;
    println!("    docker import ({:.1?})", started.elapsed());
    // As kind's base image: its entrypoint prepares the container, then systemd runs. (Its
    // STOPSIGNAL cannot be set by an import; kind removes nodes with `docker rm -f` anyway.)
    let changes = [r#"ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]"#, "ENV container=docker"];
    let changes: Vec<String> = changes.iter().flat_map(|c| ["--change".to_string(), c.to_string()]).collect();
    cmd!(sh, "docker import {changes...} {layer} {NODE_IMAGE}").quiet().ignore_stdout().run()?;
    std::fs::remove_dir_all(&work).ok();
    println!("    {NODE_IMAGE} built in {:.1?}", started.elapsed());
    Ok(NODE_IMAGE.to_string())
}

/// A Debian root filesystem from `debootstrap`, cached (unmodified) under
/// `~/.cache/spawner/kind/rootfs-<key>`.
fn rootfs() -> Result<PathBuf> {
    let dir = cache_root()?.join("kind").join(format!("rootfs-{ROOTFS_KEY}"));
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    let t = Instant::now();
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let mirror = debian_mirror()?;
    let log = cache_root()?.join("kind").join("debootstrap.log");
    println!("    debootstrap {SUITE} (cold: a few minutes; log {})", log.display());
    let include = format!("--include={}", PACKAGES.join(","));
    let out = std::process::Command::new("debootstrap")
        .args(["--variant=minbase", &include, SUITE])
        .arg(&tmp)
        .arg(&mirror)
        .output()
        .context("running debootstrap (apt-get install debootstrap)")?;
    std::fs::write(&log, [out.stdout, out.stderr].concat())?;
    if !out.status.success() {
        bail!("debootstrap failed ({}); log {}\n{}", out.status, log.display(), crate::cluster::proc::tail(&log, 20));
    }
    std::fs::write(tmp.join(".complete"), "")?;
    std::fs::rename(&tmp, &dir)?;
    println!("    debootstrap done in {:.1?}", t.elapsed());
    Ok(dir)
}

/// The Debian mirror this machine's apt uses (the first `URIs:` of a deb822 source, or the first
/// `deb` line), so the root filesystem comes from where the machine's packages come from.
fn debian_mirror() -> Result<String> {
    let mut texts = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "sources") {
                texts.push(std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    texts.push(std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    for text in &texts {
        for stanza in text.split("\n\n") {
            let suites = stanza.lines().find_map(|l| l.strip_prefix("Suites:")).unwrap_or("");
            if !suites.split_whitespace().any(|s| s == SUITE) {
                continue;
            }
            if let Some(uri) = stanza.lines().find_map(|l| l.strip_prefix("URIs:"))
                && let Some(uri) = uri.split_whitespace().next()
            {
                return Ok(uri.to_string());
            }
        }
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() == Some(&"deb")
                && words.contains(&SUITE)
                && let Some(uri) = words.iter().find(|w| w.contains("://"))
            {
                return Ok(uri.to_string());
            }
        }
    }
    bail!("no Debian {SUITE} mirror found in /etc/apt/sources.list{{,.d/*.sources}}")
}

/// kind's node files (from the kind Go module) and ours, into the root filesystem `tree`.
fn node_files(sh: &Shell, tree: &Path) -> Result<()> {
    let kind = super::module_dir()?.join("images/base/files");
    let bins = build::kind_node_binaries()?;
    let crictl = build::hack_binary("crictl", CRICTL_VERSION, "sigs.k8s.io/cri-tools/cmd/crictl", "crictl")?;

    // kind's entrypoint and helper scripts, systemd units, sysctls, crictl config.
    for (from, to, mode) in [
        ("usr/local/bin/entrypoint", "usr/local/bin/entrypoint", 0o755),
        ("usr/local/bin/clean-install", "usr/local/bin/clean-install", 0o755),
        ("kind/bin/mount-product-files.sh", "kind/bin/mount-product-files.sh", 0o755),
        ("kind/bin/undo-mount-hacks.sh", "kind/bin/undo-mount-hacks.sh", 0o755),
        ("kind/bin/create-kubelet-cgroup-v2.sh", "kind/bin/create-kubelet-cgroup-v2.sh", 0o755),
        ("etc/systemd/system/kubelet.service", "etc/systemd/system/kubelet.service", 0o644),
        ("etc/systemd/system/kubelet.slice", "etc/systemd/system/kubelet.slice", 0o644),
        ("etc/systemd/system/undo-mount-hacks.service", "etc/systemd/system/undo-mount-hacks.service", 0o644),
        (
            "etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
            "etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
            0o644,
        ),
        (
            "etc/systemd/system/kubelet.service.d/11-kind.conf",
            "etc/systemd/system/kubelet.service.d/11-kind.conf",
            0o644,
        ),
        ("etc/default/kubelet", "etc/default/kubelet", 0o644),
        ("etc/sysctl.d/10-network-security.conf", "etc/sysctl.d/10-network-security.conf", 0o644),
        ("etc/sysctl.d/10-network-magic.conf", "etc/sysctl.d/10-network-magic.conf", 0o644),
        ("etc/crictl.yaml", "etc/crictl.yaml", 0o644),
    ] {
        install(&kind.join(from), &tree.join(to), mode)?;
    }
    for (bin, dest) in [
        (bins.path("kubelet"), "usr/bin/kubelet"),
        (bins.path("kubeadm"), "usr/bin/kubeadm"),
        (bins.path("kubectl"), "usr/bin/kubectl"),
        (crictl, "usr/local/bin/crictl"),
    ] {
        install(&bin, &tree.join(dest), 0o755)?;
    }
    write(tree, "etc/containerd/config.toml", CONTAINERD_CONFIG, 0o644)?;
    write(tree, "etc/systemd/system/containerd.service", CONTAINERD_SERVICE, 0o644)?;
    write(tree, "etc/systemd/system/spawner-node-network.service", NETWORK_SERVICE, 0o644)?;
    write(tree, "kind/bin/spawner-node-network.sh", NETWORK_SCRIPT, 0o755)?;
    write(tree, "kind/version", KUBE_VERSION, 0o644)?;
    write(
        tree,
        "kind/manifests/default-cni.yaml",
        &DEFAULT_CNI_MANIFEST.replace("__KUBE_ROUTER_IMAGE__", KUBE_ROUTER_IMAGE),
        0o644,
    )?;
    std::fs::create_dir_all(tree.join("etc/kubernetes/manifests"))?;
    std::fs::create_dir_all(tree.join("etc/cni/net.d"))?;
    std::fs::create_dir_all(tree.join("opt/cni"))?;
    // kind's units and scripts name these paths.
    let links = [("/usr/bin/containerd", "usr/local/bin/containerd"), ("/usr/lib/cni", "opt/cni/bin")];
    for (target, link) in links {
        let link = tree.join(link);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    // As kind's base image: no services but ours and the ones systemd needs; journald without
    // kmsg; binfmt masked.
    let tree_s = tree.display().to_string();
    cmd!(sh, "sh -c {PREPARE_SYSTEMD} prepare {tree_s}").quiet().ignore_stdout().ignore_stderr().run()?;
    Ok(())
}

/// Trims systemd the way kind's base image does, then enables the node's services (run with the
/// root filesystem as `$1`).
const PREPARE_SYSTEMD: &str = r#"set -eu
root="$1"
find "$root/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
rm -f "$root"/lib/systemd/system/multi-user.target.wants/*
rm -f "$root"/etc/systemd/system/*.wants/*
rm -f "$root"/lib/systemd/system/local-fs.target.wants/*
rm -f "$root"/lib/systemd/system/sockets.target.wants/*udev*
rm -f "$root"/lib/systemd/system/sockets.target.wants/*initctl*
rm -f "$root"/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >> "$root/etc/systemd/journald.conf"
chroot "$root" systemctl enable kubelet.service containerd.service undo-mount-hacks.service spawner-node-network.service
chroot "$root" systemctl mask systemd-binfmt.service
: > "$root/etc/machine-id"
"#;

fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(to);
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    Ok(())
}

fn write(tree: &Path, path: &str, contents: &str, mode: u32) -> Result<()> {
    let to = tree.join(path);
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&to, contents).with_context(|| format!("writing {}", to.display()))?;
    std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    Ok(())
}

/// The images kubeadm runs (plus CoreDNS and pause), as OCI tars in `dir`.
fn control_plane_images(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let bins = build::kind_node_binaries()?;
    let etcd = build::hack_binary("etcd", build::ETCD_VERSION, "go.etcd.io/etcd/server/v3", "server")?;
    let cluster_images = build::cluster_images()?;
    for tar in [cluster_images.pause_tar, cluster_images.coredns_tar] {
        std::fs::copy(&tar, dir.join(tar.file_name().unwrap()))?;
    }
    let static_image = |name: &str, binary: PathBuf, file: &str| -> Result<()> {
        let out = dir.join(format!("{file}.tar"));
        let entry = format!("/usr/local/bin/{file}");
        build_image_to(
            &ImageSpec {
                name_tag: name.to_string(),
                files: vec![(binary, entry.clone(), 0o755)],
                dirs: vec![("/tmp".into(), 0o1777), ("/var/lib/etcd".into(), 0o700)],
                entrypoint: vec![entry],
                user: "0:0".into(),
                ..Default::default()
            },
            &out,
        )?;
        Ok(())
    };
    for component in ["kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
        static_image(&format!("registry.k8s.io/{component}:{KUBE_VERSION}"), bins.path(component), component)?;
    }
    static_image(ETCD_IMAGE, etcd, "etcd")?;
    kube_proxy_image(dir, &bins.path("kube-proxy"))?;
    kube_router_image(dir)
}

/// kube-proxy with Debian's iptables (nf_tables backend), its extensions and libraries: what the
/// upstream image's distroless-iptables base carries.
fn kube_proxy_image(dir: &Path, binary: &Path) -> Result<()> {
    let mut files = vec![(binary.to_path_buf(), "/usr/local/bin/kube-proxy".to_string(), 0o755)];
    files.extend(iptables_files()?);
    host_tools_image(
        dir.join("kube-proxy.tar"),
        ImageSpec {
            name_tag: format!("registry.k8s.io/kube-proxy:{KUBE_VERSION}"),
            files,
            dirs: vec![("/tmp".into(), 0o1777), ("/run".into(), 0o755), ("/var/lib/kube-proxy".into(), 0o755)],
            entrypoint: vec!["/usr/local/bin/kube-proxy".into()],
            ..Default::default()
        },
    )
}

/// kube-router's network policy controller (run firewall-only by the default CNI manifest) with
/// the tools it calls: iptables as kube-proxy's, and Debian's `ipset`.
fn kube_router_image(dir: &Path) -> Result<()> {
    let binary = build::hack_binary(
        "kube-router",
        KUBE_ROUTER_VERSION,
        "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router",
        "kube-router",
    )?;
    let ipset = PathBuf::from("/usr/sbin/ipset");
    let mut files = vec![(binary, "/usr/local/bin/kube-router".to_string(), 0o755)];
    files.extend(iptables_files()?);
    files.extend(crate::images::shared_libraries(&ipset)?);
    files.push((ipset, "/usr/sbin/ipset".into(), 0o755));
    host_tools_image(
        dir.join("kube-router.tar"),
        ImageSpec {
            name_tag: KUBE_ROUTER_IMAGE.into(),
            files,
            dirs: vec![("/tmp".into(), 0o1777), ("/run".into(), 0o755), ("/var/lib/kube-router".into(), 0o755)],
            entrypoint: vec!["/usr/local/bin/kube-router".into()],
            ..Default::default()
        },
    )
}

/// `spec` as a root image whose tools are found on the usual PATH, files listed once each.
fn host_tools_image(out: PathBuf, mut spec: ImageSpec) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    spec.files.retain(|(_, inside, _)| seen.insert(inside.clone()));
    spec.env = vec!["PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()];
    spec.user = "0:0".into();
    build_image_to(&spec, &out)?;
    Ok(())
}

/// Debian's iptables (nf_tables backend) under all the names it is called by, its extensions and
/// the libraries of both.
fn iptables_files() -> Result<Vec<(PathBuf, String, u32)>> {
    let multi = PathBuf::from("/usr/sbin/xtables-nft-multi");
    let mut files = Vec::new();
    // xtables-nft-multi acts on the name it is called by.
    for name in ["iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"] {
        files.push((multi.clone(), format!("/usr/sbin/{name}"), 0o755));
    }
    files.extend(crate::images::shared_libraries(&multi)?);
    // The extensions are loaded at run time (ldd of the binary does not list them), and some
    // need libraries of their own (libxt_statistic: libm).
    let extensions = Path::new("/usr/lib/x86_64-linux-gnu/xtables");
    for e in std::fs::read_dir(extensions).with_context(|| format!("reading {}", extensions.display()))? {
        let path = e?.path();
        files.extend(crate::images::shared_libraries(&path)?);
        let inside = path.display().to_string();
        files.push((path, inside, 0o644));
    }
    Ok(files)
}

/// Imports the image tars in `images` into the node's containerd store (`tree`'s
/// /var/lib/containerd) with this machine's containerd — the same Debian build the node runs —
/// started on that store for the purpose. Images are imported without unpacking, as kind's
/// `build node-image` does; the node's containerd unpacks them when a pod first uses them.
fn preload(work: &Path, tree: &Path, images: &Path) -> Result<()> {
    let t = Instant::now();
    let state = work.join("containerd-state");
    let socket = state.join("containerd.sock");
    std::fs::create_dir_all(&state)?;
    let config = work.join("containerd-preload.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n",
            tree.join("var/lib/containerd").display(),
            state.display(),
            socket.display()
        ),
    )?;
    let log = std::fs::File::create(work.join("containerd-preload.log"))?;
    let mut containerd = std::process::Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting containerd to pre-load the node's images")?;
    let result = (|| -> Result<()> {
        let sh = Shell::new()?;
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while cmd!(sh, "ctr --address {socket} version").quiet().ignore_stdout().ignore_stderr().run().is_err() {
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer on {}; log {}",
                    socket.display(),
                    work.join("containerd-preload.log").display()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        for tar in std::fs::read_dir(images)? {
            let tar = tar?.path();
            cmd!(
                sh,
                "ctr --address {socket} --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests {tar}"
            )
            .quiet()
            .ignore_stdout()
            .run()
            .with_context(|| format!("importing {} into the node image", tar.display()))?;
        }
        Ok(())
    })();
    crate::cluster::proc::signal(containerd.id(), "TERM");
    let _ = containerd.wait();
    result?;
    println!("    images pre-loaded in {:.1?}", t.elapsed());
    Ok(())
}

/// containerd 1.6 (Debian) as kind configures it, plus: the CNI plugins where Debian puts them,
/// our pause image, and `restrict_oom_score_adj` (a node container may lack CAP_SYS_RESOURCE).
const CONTAINERD_CONFIG: &str = r#"# Written by `cargo xtask kind node-image`.
version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "spawner.local/pause:3.10"
  tolerate_missing_hugepages_controller = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    discard_unpacked_layers = true
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
"#;

/// kind's containerd unit without `OOMScoreAdjust` and `Limit*=infinity`: setting either needs
/// CAP_SYS_RESOURCE, and without it systemd refuses to start the service.
const CONTAINERD_SERVICE: &str = r#"# Written by `cargo xtask kind node-image`.
[Unit]
Description=containerd container runtime
After=network.target local-fs.target
StartLimitIntervalSec=0

[Service]
ExecStart=/usr/bin/containerd
Type=notify
Delegate=yes
KillMode=process
Restart=always
RestartSec=1
TasksMax=infinity

[Install]
WantedBy=multi-user.target
"#;

const NETWORK_SERVICE: &str = r#"# Written by `cargo xtask kind node-image`.
[Unit]
Description=Spawner's kind pod network: a bridge on this node's pod CIDR, routes to the others
After=network.target

[Service]
ExecStart=/kind/bin/spawner-node-network.sh
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
"#;

/// Once the kubelet has joined (its kubeconfig exists), every few seconds: this node's pod CIDR
/// becomes the subnet of a bridge CNI config (written once), and every other node's pod CIDR
/// gets a route through that node's InternalIP. All nodes share one Docker network, so one hop
/// reaches any of them.
const NETWORK_SCRIPT: &str = r#"#!/bin/sh
# Written by `cargo xtask kind node-image`.
set -u
conf=/etc/cni/net.d/10-spawner.conflist
kubeconfig=/etc/kubernetes/kubelet.conf
me=$(hostname)
while :; do
  if [ -f "$kubeconfig" ]; then
    kubectl --kubeconfig "$kubeconfig" get nodes -o jsonpath='{range .items[*]}{.metadata.name}|{.spec.podCIDR}|{.status.addresses[?(@.type=="InternalIP")].address}{"\n"}{end}' 2>/dev/null |
    while IFS='|' read -r name cidr address; do
      # A node's pod CIDR is empty until the controller manager has allocated it.
      case "${cidr:-}" in */*) ;; *) continue ;; esac
      if [ "$name" = "$me" ]; then
        if [ ! -f "$conf" ]; then
          cat > "$conf.tmp" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "spawner",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "$cidr"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
          mv "$conf.tmp" "$conf"
          echo "pod network: bridge cni0 on $cidr"
        fi
      elif [ -n "${address:-}" ]; then
        ip route replace "$cidr" via "$address"
      fi
    done
  fi
  sleep 3
done
"#;

/// kind applies this file as the cluster's CNI. The pod network is the node unit above; it reads
/// the Node objects with the kubelet's credentials, and the Node authorizer lets a kubelet read
/// only its own Node, so the manifest grants the nodes' group exactly that: reading Nodes.
/// NetworkPolicy is enforced by kube-router's network policy controller, run firewall-only (its
/// documented mode beside another CNI) on every node with the read access its informers need.
/// (kindnetd enforces policy through kube-network-policies, which needs nftables' `queue`
/// statement; kernels without CONFIG_NFT_QUEUE, like this machine's, cannot run it. kube-router
/// uses iptables and ipset.)
const DEFAULT_CNI_MANIFEST: &str = r#"# Written by `cargo xtask kind node-image`.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: spawner-node-network
rules:
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: spawner-node-network
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: spawner-node-network
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:nodes
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: spawner-node-network
  namespace: kube-system
data:
  README: |
    Pods are networked by the node image's spawner-node-network unit: Debian's bridge,
    host-local and portmap CNI plugins on each node's pod CIDR, and a route to every other
    node's pod CIDR through its InternalIP. NetworkPolicy is enforced by the kube-router
    DaemonSet (firewall only).
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: kube-router
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: kube-router
rules:
- apiGroups: [""]
  resources: ["namespaces", "pods", "services", "nodes", "endpoints"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: kube-router
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: kube-router
subjects:
- kind: ServiceAccount
  name: kube-router
  namespace: kube-system
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-router
  namespace: kube-system
  labels:
    k8s-app: kube-router
spec:
  selector:
    matchLabels:
      k8s-app: kube-router
  template:
    metadata:
      labels:
        k8s-app: kube-router
    spec:
      serviceAccountName: kube-router
      priorityClassName: system-node-critical
      hostNetwork: true
      containers:
      - name: kube-router
        image: __KUBE_ROUTER_IMAGE__
        imagePullPolicy: Never
        args:
        - --run-router=false
        - --run-firewall=true
        - --run-service-proxy=false
        - --enable-cni=false
        env:
        - name: NODE_NAME
          valueFrom:
            fieldRef:
              fieldPath: spec.nodeName
        securityContext:
          privileged: true
        livenessProbe:
          httpGet:
            path: /healthz
            port: 20244
          initialDelaySeconds: 10
          periodSeconds: 3
        volumeMounts:
        - name: xtables-lock
          mountPath: /run/xtables.lock
      tolerations:
      - operator: Exists
      volumes:
      - name: xtables-lock
        hostPath:
          path: /run/xtables.lock
          type: FileOrCreate
"#;
