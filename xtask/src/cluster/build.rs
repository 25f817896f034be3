//! Builds (once, then cached by version under `~/.cache/spawner/`) the upstream binaries the
//! cluster runs: Kubernetes from `hack/kube`, CoreDNS from `hack/coredns`, pause from
//! `hack/pause`. All come from the Go module proxy; the Go toolchain must be on PATH.
//! A cold build of the five Kubernetes commands takes ~7 min on 2 cores (see hack/README.md).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::{KUBE_VERSION, cache_root};

pub const KUBE_COMMANDS: &[&str] =
    &["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"];
/// Further commands of the same Kubernetes build that only the kind node image carries.
pub const KIND_NODE_COMMANDS: &[&str] = &["kubeadm", "kubectl"];
pub const COREDNS_VERSION: &str = "v1.14.7";
/// etcd of the local cluster and of the kind node image: what kubeadm v1.34 deploys.
pub const ETCD_VERSION: &str = "v3.6.5";
/// Bump when hack/coredns/main.go changes (the plugin set): it keys the cached binary and image.
const COREDNS_BUILD: &str = "2";
/// Bump when hack/pause/main.go changes.
pub const PAUSE_VERSION: &str = "3.10-spawner.1";

pub const PAUSE_IMAGE: &str = "spawner.local/pause:3.10";
pub const COREDNS_IMAGE: &str = "spawner.local/coredns:v1.14.7";

/// Directory holding the Kubernetes binaries.
#[derive(Debug, Clone)]
pub struct Bins {
    pub dir: PathBuf,
}

impl Bins {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The images the node needs, as OCI tars.
#[derive(Debug, Clone)]
pub struct Images {
    pub pause_tar: PathBuf,
    pub coredns_tar: PathBuf,
}

/// `~/.cache/spawner/kube/<version>/bin`, built if any binary is missing.
pub fn kube_binaries() -> Result<Bins> {
    kube_commands(KUBE_COMMANDS)
}

/// [`kube_binaries`] plus kubeadm and kubectl, for the kind node image.
pub fn kind_node_binaries() -> Result<Bins> {
    let all: Vec<&str> = KUBE_COMMANDS.iter().chain(KIND_NODE_COMMANDS).copied().collect();
    kube_commands(&all)
}

fn kube_commands(commands: &[&str]) -> Result<Bins> {
    let dir = cache_root()?.join("kube").join(KUBE_VERSION).join("bin");
    let missing: Vec<&str> = commands.iter().copied().filter(|c| !dir.join(c).exists()).collect();
    if !missing.is_empty() {
        let log = cache_root()?.join("kube").join(format!("build-{KUBE_VERSION}.log"));
        let pkgs: Vec<String> = missing.iter().map(|c| format!("k8s.io/kubernetes/cmd/{c}")).collect();
        println!(
            "    building {} from k8s.io/kubernetes {KUBE_VERSION} (cold: ~7-10 min on 2 cores; log {})",
            missing.join(", "),
            log.display()
        );
        go_build(&crate::project_root().join("hack/kube"), &dir, &pkgs, &kube_ldflags(), &log)?;
    }
    Ok(Bins { dir })
}

/// The Kubernetes binaries if they are all built already (never builds).
pub fn kube_binaries_if_built() -> Result<Bins> {
    let dir = cache_root()?.join("kube").join(KUBE_VERSION).join("bin");
    if KUBE_COMMANDS.iter().all(|c| dir.join(c).exists()) { Ok(Bins { dir }) } else { bail!("not built") }
}

fn kube_ldflags() -> String {
    let mut ld = String::from("-s -w");
    let minor = KUBE_VERSION.trim_start_matches('v').split('.').nth(1).unwrap_or("0");
    for pkg in ["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"] {
        ld += &format!(
            " -X {pkg}.gitVersion={KUBE_VERSION} -X {pkg}.gitMajor=1 -X {pkg}.gitMinor={minor} \
             -X {pkg}.gitCommit=0000000000000000000000000000000000000000 -X {pkg}.gitTreeState=clean \
             -X {pkg}.buildDate=1970-01-01T00:00:00Z"
        );
    }
    ld
}

/// `~/.cache/spawner/coredns/<version>/coredns`.
pub fn coredns_binary() -> Result<PathBuf> {
    let dir = cache_root()?.join("coredns").join(format!("{COREDNS_VERSION}-{COREDNS_BUILD}"));
    let bin = dir.join("coredns");
    if !bin.exists() {
        let log = cache_root()?.join("coredns").join(format!("build-{COREDNS_VERSION}.log"));
        println!("    building CoreDNS {COREDNS_VERSION} (cold: a few minutes; log {})", log.display());
        go_build(&crate::project_root().join("hack/coredns"), &dir, &[".".to_string()], "-s -w", &log)?;
        let built = dir.join("coredns");
        if !built.exists() {
            bail!("CoreDNS build produced no {}", built.display());
        }
    }
    Ok(bin)
}

/// `~/.cache/spawner/pause/<version>/pause`.
pub fn pause_binary() -> Result<PathBuf> {
    let dir = cache_root()?.join("pause").join(PAUSE_VERSION);
    let bin = dir.join("pause");
    if !bin.exists() {
        let log = cache_root()?.join("pause").join(format!("build-{PAUSE_VERSION}.log"));
        go_build(&crate::project_root().join("hack/pause"), &dir, &[".".to_string()], "-s -w", &log)?;
    }
    Ok(bin)
}

/// The pause and CoreDNS images (OCI tars under `~/.cache/spawner/images/`, kept by `down`).
pub fn cluster_images() -> Result<Images> {
    let pause = pause_binary()?;
    let coredns = coredns_binary()?;
    let dir = cache_root()?.join("images");
    std::fs::create_dir_all(&dir)?;
    let pause_tar = dir.join(format!("pause-{PAUSE_VERSION}.tar"));
    if !pause_tar.exists() {
        crate::oci::build_image_to(
            &crate::oci::ImageSpec {
                name_tag: PAUSE_IMAGE.into(),
                files: vec![(pause, "/pause".into(), 0o755)],
                entrypoint: vec!["/pause".into()],
                user: "65535:65535".into(),
                ..Default::default()
            },
            &pause_tar,
        )?;
    }
    let coredns_tar = dir.join(format!("coredns-{COREDNS_VERSION}-{COREDNS_BUILD}.tar"));
    if !coredns_tar.exists() {
        crate::oci::build_image_to(
            &crate::oci::ImageSpec {
                name_tag: COREDNS_IMAGE.into(),
                files: vec![(coredns, "/coredns".into(), 0o755)],
                entrypoint: vec!["/coredns".into()],
                user: "0:0".into(),
                ..Default::default()
            },
            &coredns_tar,
        )?;
    }
    Ok(Images { pause_tar, coredns_tar })
}

/// The Go toolchain: `go` on PATH, else the usual install location (CI's PATH may lack it).
pub fn go() -> PathBuf {
    let on_path =
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("go").is_file()));
    if on_path { PathBuf::from("go") } else { PathBuf::from("/usr/local/go/bin/go") }
}

/// A binary of one of the small `hack/<module>` Go modules, built once into
/// `~/.cache/spawner/<module>/<version>/<name>`.
pub fn hack_binary(module: &str, version: &str, package: &str, name: &str) -> Result<PathBuf> {
    let dir = cache_root()?.join(module).join(version);
    let bin = dir.join(name);
    if !bin.exists() {
        let log = cache_root()?.join(module).join(format!("build-{version}.log"));
        println!("    building {package} {version} (cold: a minute or two; log {})", log.display());
        go_build(&crate::project_root().join("hack").join(module), &dir, &[package.to_string()], "-s -w", &log)?;
        if !bin.exists() {
            bail!("building {package} produced no {}", bin.display());
        }
    }
    Ok(bin)
}

/// `go build -trimpath -o out/ pkgs...` in `module_dir` with CGO off, output to `log`.
fn go_build(module_dir: &Path, out: &Path, pkgs: &[String], ldflags: &str, log: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let t = Instant::now();
    let logf = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    // Build into a temporary dir and move into place, so an interrupted build leaves no
    // half-written binary that a later run would take for a cached one.
    let tmp = out.join(".tmp-build");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let status = Command::new(go())
        .current_dir(module_dir)
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-trimpath -buildvcs=false -mod=readonly")
        .arg("build")
        .arg("-o")
        .arg(format!("{}/", tmp.display()))
        .arg("-ldflags")
        .arg(ldflags)
        .args(pkgs)
        .stdout(logf.try_clone()?)
        .stderr(logf)
        .status()
        .context("running `go` (is the Go toolchain installed and on PATH?)")?;
    if !status.success() {
        bail!(
            "go build in {} failed ({status}); log: {}\n{}",
            module_dir.display(),
            log.display(),
            super::proc::tail(log, 30)
        );
    }
    for entry in std::fs::read_dir(&tmp)? {
        let entry = entry?;
        std::fs::rename(entry.path(), out.join(entry.file_name()))?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!("    built {} in {:.0}s", module_dir.display(), t.elapsed().as_secs_f64());
    Ok(())
}
