//! `cargo xtask cluster up|down|status|kubeconfig`: a real single-node Kubernetes cluster made of
//! upstream binaries, run as plain processes on this machine (no Docker, no registry).
//!
//! - Kubernetes v1.34 components are built from the Go module proxy (`hack/kube`), CoreDNS from
//!   `hack/coredns`, the pause binary from `hack/pause`; results are cached under
//!   `~/.cache/spawner/` keyed by version (see [`build`]).
//! - containerd, runc and the CNI plugins come from Debian packages; etcd is built from `hack/etcd`.
//! - Every piece of state (certificates, etcd data, pid files, logs, kubelet and containerd dirs)
//!   lives under `~/.cache/spawner/cluster/` ([`Layout`]); `down` removes it.
//!
//! Addresses: the API server listens on port 6443 (the kubeconfig uses `https://127.0.0.1:6443`)
//! and advertises `10.244.0.1`, the address of the `cni0` bridge this module creates, which is
//! also the node IP. Pods: `10.244.0.0/24`. Services: `10.96.0.0/16`, DNS at `10.96.0.10`.

pub mod build;
mod control_plane;
mod dns;
mod node;
mod pki;
pub mod proc;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub const KUBE_VERSION: &str = "v1.34.4";
pub const NODE_NAME: &str = "spawner-node";
pub const NODE_IP: &str = "10.244.0.1";
pub const POD_CIDR: &str = "10.244.0.0/24";
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
pub const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
pub const DNS_SERVICE_IP: &str = "10.96.0.10";
pub const BRIDGE: &str = "cni0";
pub const API_PORT: u16 = 6443;
pub const ETCD_CLIENT_PORT: u16 = 12379;
pub const ETCD_PEER_PORT: u16 = 12380;

/// What `cluster up` should bring up.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Also run the node (containerd, kubelet, kube-proxy, CNI, CoreDNS). Without it only the
    /// control plane runs (etcd, API server, controller manager, scheduler): enough for API tests.
    pub node: bool,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions { node: true }
    }
}

/// Paths of everything the cluster owns.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn new() -> Result<Layout> {
        Ok(Layout { root: cache_root()?.join("cluster") })
    }
    pub fn pki(&self) -> PathBuf {
        self.root.join("pki")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn log(&self, component: &str) -> PathBuf {
        self.logs().join(format!("{component}.log"))
    }
    pub fn etcd_data(&self) -> PathBuf {
        self.root.join("etcd")
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config")
    }
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        self.root.join(format!("{user}.kubeconfig"))
    }
    pub fn containerd(&self) -> PathBuf {
        self.root.join("containerd")
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd().join("containerd.sock")
    }
    pub fn kubelet_dir(&self) -> PathBuf {
        self.root.join("kubelet")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.root.join("cni").join("net.d")
    }
    pub fn cni_ipam_dir(&self) -> PathBuf {
        self.root.join("cni").join("ipam")
    }
}

/// `~/.cache/spawner` (or `$XDG_CACHE_HOME/spawner`).
pub fn cache_root() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("spawner"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache").join("spawner"))
}

/// Path of the admin kubeconfig (`cluster-admin` via `system:masters`). It exists once `up` ran.
pub fn kubeconfig_path() -> PathBuf {
    Layout::new().map(|l| l.kubeconfig("admin")).unwrap_or_else(|_| PathBuf::from("admin.kubeconfig"))
}

/// `cargo xtask cluster kubeconfig`: prints the admin kubeconfig's path; fails if the cluster was
/// never brought up.
pub fn kubeconfig() -> Result<()> {
    let path = kubeconfig_path();
    if !path.exists() {
        bail!("no cluster: {} does not exist (run `cargo xtask cluster up`)", path.display());
    }
    println!("{}", path.display());
    Ok(())
}

/// `cargo xtask cluster up`: idempotent; returns once the API server's /readyz is healthy (and,
/// with the node, once the node is Ready and cluster DNS answers).
pub fn up(opts: &UpOptions) -> Result<()> {
    let started = Instant::now();
    check_root()?;
    let _lock = lock()?;
    let layout = Layout::new()?;
    for dir in [layout.root.clone(), layout.pki(), layout.logs(), layout.run(), layout.config()] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let bins = step("build Kubernetes binaries (cached)", build::kube_binaries)?;
    step("host network (cni0 bridge, sysctls)", || node::prepare_host(&layout, opts.node))?;
    step("certificates and kubeconfigs", || pki::ensure(&layout))?;
    step("etcd", || control_plane::etcd(&layout))?;
    step("kube-apiserver (/readyz)", || control_plane::apiserver(&layout, &bins))?;
    step("kube-controller-manager", || control_plane::controller_manager(&layout, &bins))?;
    step("kube-scheduler", || control_plane::scheduler(&layout, &bins))?;
    if opts.node {
        let images = step("images: pause, coredns (cached)", build::cluster_images)?;
        step("containerd", || node::containerd(&layout, &images))?;
        step("kubelet (node Ready)", || node::kubelet(&layout, &bins))?;
        step("kube-proxy", || node::kube_proxy(&layout, &bins))?;
        step("CoreDNS (answers kubernetes.default)", || dns::ensure(&layout, &images))?;
    }
    println!(
        "cluster up in {:.1}s; export KUBECONFIG={}",
        started.elapsed().as_secs_f64(),
        layout.kubeconfig("admin").display()
    );
    Ok(())
}

/// `cargo xtask cluster down`: stops every process `up` started, removes pods' containers, network
/// devices, iptables chains, mounts and the state directory. Safe to run when nothing runs.
pub fn down() -> Result<()> {
    let started = Instant::now();
    check_root()?;
    let _lock = lock()?;
    let layout = Layout::new()?;
    let mut errors = Vec::new();
    // Order: stop controllers first so nothing recreates pods, then let kubelet remove the pods
    // (which tears their network down through CNI), then stop the node and the control plane.
    for name in ["kube-scheduler", "kube-controller-manager"] {
        if let Err(e) = proc::stop(&layout, name) {
            errors.push(format!("{name}: {e:#}"));
        }
    }
    if let Err(e) = node::teardown(&layout) {
        errors.push(format!("node: {e:#}"));
    }
    for name in ["kube-apiserver", "etcd"] {
        if let Err(e) = proc::stop(&layout, name) {
            errors.push(format!("{name}: {e:#}"));
        }
    }
    if errors.is_empty() {
        if layout.root.exists() {
            std::fs::remove_dir_all(&layout.root).with_context(|| format!("removing {}", layout.root.display()))?;
        }
        println!("cluster down in {:.1}s", started.elapsed().as_secs_f64());
        Ok(())
    } else {
        bail!("cluster down left things behind (state kept in {}):\n  {}", layout.root.display(), errors.join("\n  "))
    }
}

/// Whether the local cluster's API server runs.
pub fn running() -> bool {
    Layout::new().is_ok_and(|layout| proc::running(&layout, "kube-apiserver").is_some())
}

/// `cargo xtask cluster status`: one line per component (running with its pid, or not), the API
/// server's /readyz and the node's Ready condition. Fails if some component is not running.
pub fn status() -> Result<()> {
    let layout = Layout::new()?;
    let mut all = true;
    let mut any = false;
    for name in proc::COMPONENTS {
        match proc::running(&layout, name) {
            Some(pid) => {
                any = true;
                println!("{name:<24} running  pid {pid:<8} log {}", layout.log(name).display())
            }
            None => {
                all = false;
                println!("{name:<24} stopped")
            }
        }
    }
    if !any {
        bail!("no cluster runs (state dir {})", layout.root.display());
    }
    match control_plane::readyz(&layout) {
        Ok(()) => println!("kube-apiserver /readyz   ok (kubeconfig {})", layout.kubeconfig("admin").display()),
        Err(e) => {
            all = false;
            println!("kube-apiserver /readyz   FAILING: {e:#}")
        }
    }
    if proc::running(&layout, "kubelet").is_some() {
        match node::node_ready(&layout) {
            Ok(true) => println!("node {NODE_NAME:<19} Ready"),
            Ok(false) => {
                all = false;
                println!("node {NODE_NAME:<19} NotReady")
            }
            Err(e) => println!("node {NODE_NAME:<19} unknown: {e:#}"),
        }
    }
    if !all {
        bail!("the cluster is not fully up (run `cargo xtask cluster up`)");
    }
    Ok(())
}

/// Loads an OCI image-layout tar (see [`crate::oci::build_image_to`]) into the cluster's containerd
/// (namespace `k8s.io`), so pods can use it with `imagePullPolicy: IfNotPresent` or `Never`.
#[allow(dead_code)] // API for `cargo xtask images` / e2e
pub fn load_image(tar: &Path) -> Result<()> {
    let layout = Layout::new()?;
    if proc::running(&layout, "containerd").is_none() {
        bail!("the cluster's containerd does not run (run `cargo xtask cluster up`)");
    }
    node::import_image(&layout, tar)
}

/// Serializes `up` and `down` (e.g. several test binaries starting the cluster at once).
fn lock() -> Result<std::fs::File> {
    let path = cache_root()?.join("cluster.lock");
    std::fs::create_dir_all(cache_root()?)?;
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    if file.try_lock().is_err() {
        println!("    waiting for another `cargo xtask cluster` ({})", path.display());
        file.lock().with_context(|| format!("locking {}", path.display()))?;
    }
    Ok(file)
}

fn check_root() -> Result<()> {
    let uid = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| {
        s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
    });
    if uid.as_deref() != Some("0") {
        bail!("the local cluster needs root (it runs kubelet, containerd and changes iptables)");
    }
    Ok(())
}

/// Runs one step of `up`, printing its name and duration.
fn step<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = Instant::now();
    println!("==> {what} ...");
    let r = f();
    match &r {
        Ok(_) => println!("    {what}: done in {:.1}s", t.elapsed().as_secs_f64()),
        Err(_) => println!("    {what}: FAILED after {:.1}s", t.elapsed().as_secs_f64()),
    }
    r
}

/// Polls `check` until it returns Ok(true) or `timeout` passes; between polls makes sure the
/// component's process still runs. Failure names the component and its log.
fn wait_for(
    layout: &Layout,
    component: &str,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_err = String::new();
    loop {
        match check() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = format!("{e:#}"),
        }
        if proc::COMPONENTS.contains(&component) && proc::running(layout, component).is_none() {
            bail!(
                "{component} exited while waiting for {what}; log: {}\n{}",
                layout.log(component).display(),
                proc::tail(&layout.log(component), 25)
            );
        }
        if Instant::now() > deadline {
            let log = layout.log(component);
            bail!(
                "{component}: {what} not reached after {}s{}; log: {}\n{}",
                timeout.as_secs(),
                if last_err.is_empty() { String::new() } else { format!(" (last error: {last_err})") },
                log.display(),
                proc::tail(&log, 25)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs a command, returning its stdout; a failure includes its stderr.
fn run(cmd: &mut std::process::Command) -> Result<String> {
    let out = cmd.stdin(std::process::Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command and ignores its result (best-effort cleanup).
fn run_quiet(cmd: &mut std::process::Command) -> bool {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn cmd(program: &str) -> std::process::Command {
    std::process::Command::new(program)
}

/// GET on the API server as the admin user, through curl (keeps the xtask free of TLS deps).
fn api_get(layout: &Layout, path: &str) -> Result<String> {
    let pki = layout.pki();
    run(cmd("curl")
        .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
        .arg(pki.join("ca.crt"))
        .arg("--cert")
        .arg(pki.join("admin.crt"))
        .arg("--key")
        .arg(pki.join("admin.key"))
        .arg(format!("https://127.0.0.1:{API_PORT}{path}")))
}

/// `kubectl --kubeconfig admin ...`
fn kubectl(layout: &Layout) -> std::process::Command {
    let mut c = cmd("kubectl");
    c.arg("--kubeconfig").arg(layout.kubeconfig("admin"));
    c
}

/// Writes `contents` unless the file already holds exactly that (kube-proxy exits when its
/// config file is rewritten, even with the same content).
fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == contents.as_ref()) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}
