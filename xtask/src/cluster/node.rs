//! The node: host preparation (cni0 bridge, sysctls, shared mounts), containerd (Debian's, with
//! its own config, socket and dirs under the state dir), kubelet, kube-proxy (iptables mode), and
//! the teardown that undoes all of it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::build::{Bins, Images, PAUSE_IMAGE};
use super::{
    BRIDGE, CLUSTER_CIDR, DNS_SERVICE_IP, Layout, NODE_IP, NODE_NAME, POD_CIDR, SERVICE_CIDR, api_get, cmd, kubectl,
    proc, run, run_quiet, wait_for, write_file,
};

/// Network name in the CNI config (libcni caches results under `/var/lib/cni/results/<name>-*`).
const CNI_NETWORK: &str = "spawner";

/// The cni0 bridge carries NODE_IP (the API server's advertised address and the node IP), so it
/// exists even without the node. With the node: IP forwarding, bridge netfilter, shared mounts.
pub fn prepare_host(_layout: &Layout, node: bool) -> Result<()> {
    if !run_quiet(cmd("ip").args(["link", "show", BRIDGE])) {
        run(cmd("ip").args(["link", "add", BRIDGE, "type", "bridge"]))?;
    }
    let addrs = run(cmd("ip").args(["-o", "-4", "addr", "show", "dev", BRIDGE]))?;
    if !addrs.contains(&format!("inet {NODE_IP}/")) {
        let prefix = POD_CIDR.split('/').nth(1).unwrap_or("24");
        run(cmd("ip").args(["addr", "add", &format!("{NODE_IP}/{prefix}"), "dev", BRIDGE]))?;
    }
    run(cmd("ip").args(["link", "set", BRIDGE, "up"]))?;
    if node {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("sysctl net.ipv4.ip_forward=1")?;
        // Without bridge netfilter, a pod reaching a Service backed by a pod on the same bridge
        // gets no DNAT on the way back; kernels without br_netfilter built in lack these files.
        for key in ["net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables"] {
            if std::fs::write(format!("/proc/sys/{key}"), "1").is_err() {
                println!("    warning: cannot set {key}=1 (br_netfilter missing?): pod-to-Service traffic may fail");
            }
        }
        // Volume mounts made by kubelet must propagate into containers.
        run(cmd("mount").args(["--make-rshared", "/"]))?;
    }
    Ok(())
}

fn containerd_config(layout: &Layout) -> String {
    let c = layout.containerd();
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
oom_score = 0

[grpc]
  address = "{sock}"

[ttrpc]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # The VM lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below ours.
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{runc_root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
    max_conf_num = 1
"#,
        root = c.join("root").display(),
        state = c.join("state").display(),
        sock = layout.containerd_socket().display(),
        opt = c.join("opt").display(),
        runc_root = c.join("runc").display(),
        cni_conf = layout.cni_conf_dir().display(),
    )
}

fn cni_config(layout: &Layout) -> String {
    let gateway = NODE_IP;
    serde_json::to_string_pretty(&serde_json::json!({
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": POD_CIDR, "gateway": gateway }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": layout.cni_ipam_dir().display().to_string(),
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    }))
    .expect("static json")
}

fn ctr(layout: &Layout) -> std::process::Command {
    let mut c = cmd("ctr");
    c.arg("--address").arg(layout.containerd_socket()).args(["--namespace", "k8s.io"]);
    c
}

pub fn containerd(layout: &Layout, images: &Images) -> Result<()> {
    for p in [
        "/usr/sbin/runc",
        "/usr/lib/cni/bridge",
        "/usr/lib/cni/host-local",
        "/usr/lib/cni/portmap",
        "/usr/lib/cni/loopback",
    ] {
        if !Path::new(p).exists() {
            bail!("{p} is missing (apt-get install containerd runc containernetworking-plugins)");
        }
    }
    let config = layout.containerd().join("config.toml");
    write_file(&config, containerd_config(layout))?;
    write_file(&layout.cni_conf_dir().join("10-spawner.conflist"), cni_config(layout))?;
    let bin = which("containerd").context("containerd is not installed (apt-get install containerd)")?;
    proc::start(
        layout,
        "containerd",
        &bin,
        &["--config".into(), config.display().to_string(), "--log-level=warn".into()],
    )?;
    wait_for(layout, "containerd", "its socket", Duration::from_secs(30), || {
        let out = run(ctr(layout).args(["plugins", "ls"]))?;
        Ok(out
            .lines()
            .any(|l| l.contains("io.containerd.grpc.v1") && l.contains("cri") && l.trim_end().ends_with("ok")))
    })?;
    for tar in [&images.pause_tar, &images.coredns_tar] {
        import_image(layout, tar)?;
    }
    Ok(())
}

/// `ctr -n k8s.io images import <tar>` into our containerd.
pub fn import_image(layout: &Layout, tar: &Path) -> Result<()> {
    run(ctr(layout).args(["images", "import"]).arg(tar)).with_context(|| format!("importing {}", tar.display()))?;
    Ok(())
}

fn kubelet_config(layout: &Layout) -> String {
    let pki = layout.pki();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# Only on the node IP (the cni0 bridge): the API server reaches it there.
address: {NODE_IP}
port: 10250
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
tlsCertFile: {crt}
tlsPrivateKeyFile: {key}
cgroupDriver: cgroupfs
failCgroupV1: false
containerRuntimeEndpoint: unix://{sock}
clusterDomain: cluster.local
clusterDNS:
- {DNS_SERVICE_IP}
# No host resolvers leak into pods: the cluster talks to loopback and its own networks only.
resolvConf: ""
podLogsDir: {pod_logs}
failSwapOn: false
rotateCertificates: false
serverTLSBootstrap: false
staticPodPath: ""
maxPods: 110
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# The node shares the developer's disk with cargo's target directories, which can fill it to the
# last few GB while tests run. A disk-pressure taint would then leave every new pod Pending
# ("untolerated taint") and fail tests that have nothing to do with disk, so the disk signals are
# off ("0%" disables a signal), as kind does for its nodes. Memory pressure still evicts.
evictionHard:
  memory.available: 100Mi
  nodefs.available: "0%"
  imagefs.available: "0%"
  nodefs.inodesFree: "0%"
evictionPressureTransitionPeriod: 10s
nodeStatusReportFrequency: 10s
nodeStatusUpdateFrequency: 5s
syncFrequency: 10s
fileCheckFrequency: 10s
runtimeRequestTimeout: 2m
serializeImagePulls: false
"#,
        ca = pki.join("ca.crt").display(),
        crt = pki.join("kubelet.crt").display(),
        key = pki.join("kubelet.key").display(),
        sock = layout.containerd_socket().display(),
        pod_logs = layout.root.join("pod-logs").display(),
    )
}

pub fn kubelet(layout: &Layout, bins: &Bins) -> Result<()> {
    let config = layout.config().join("kubelet.yaml");
    write_file(&config, kubelet_config(layout))?;
    std::fs::create_dir_all(layout.kubelet_dir())?;
    std::fs::create_dir_all(layout.root.join("pod-logs"))?;
    let args = vec![
        format!("--config={}", config.display()),
        format!("--kubeconfig={}", layout.kubeconfig("kubelet").display()),
        format!("--root-dir={}", layout.kubelet_dir().display()),
        format!("--hostname-override={NODE_NAME}"),
        format!("--node-ip={NODE_IP}"),
        "--v=1".into(),
    ];
    proc::start(layout, "kubelet", &bins.path("kubelet"), &args)?;
    wait_for(layout, "kubelet", "/healthz", Duration::from_secs(60), || {
        Ok(run(cmd("curl").args(["-s", "--max-time", "2", "http://127.0.0.1:10248/healthz"]))?.trim() == "ok")
    })?;
    wait_for(layout, "kubelet", "node Ready", Duration::from_secs(120), || node_ready(layout))
}

/// Whether the node object exists and its Ready condition is True.
pub fn node_ready(layout: &Layout) -> Result<bool> {
    let body = api_get(layout, &format!("/api/v1/nodes/{NODE_NAME}"))?;
    let node: serde_json::Value = serde_json::from_str(&body)?;
    Ok(node["status"]["conditions"]
        .as_array()
        .map(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        .unwrap_or(false))
}

fn kube_proxy_config(layout: &Layout) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kc}
mode: iptables
clusterCIDR: {CLUSTER_CIDR}
hostnameOverride: {NODE_NAME}
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# NodePorts only on the node IP (the cni0 bridge) and loopback (so the reverse proxy's URL
# http://127.0.0.1:30080 works on this machine, as with kind), never on other interfaces.
nodePortAddresses:
- {NODE_IP}/32
- 127.0.0.1/32
# Leave the kernel's conntrack sysctls alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  syncPeriod: 30s
  minSyncPeriod: 1s
"#,
        kc = layout.kubeconfig("kube-proxy").display(),
    )
}

/// Our own iptables chain (removed by `teardown` with kube-proxy's).
const SERVICE_CIDR_CHAIN: &str = "SPAWNER-SERVICE-CIDR";

/// Refuses connections to Service IPs that kube-proxy has not (yet) translated to a pod. Without
/// it, a connection to a Service created a moment ago leaves through the default route and is
/// dropped there; its conntrack entry is then fixed as "not translated", so even the SYN
/// retransmits after kube-proxy catches up go nowhere and the client hangs until its connect
/// timeout. A refusal instead fails at once, and the next attempt is translated. (kube-proxy's
/// nftables mode does the same for unallocated ClusterIPs; its iptables mode does not.)
/// Translated packets carry a pod IP by the time they reach FORWARD/OUTPUT, so only stray
/// ones match.
fn refuse_untranslated_service_ips() -> Result<()> {
    let chain = SERVICE_CIDR_CHAIN;
    if !run_quiet(cmd("iptables").args(["-t", "filter", "-N", chain])) {
        run(cmd("iptables").args(["-t", "filter", "-F", chain]))?;
    }
    run(cmd("iptables").args(["-t", "filter", "-A", chain, "-d", SERVICE_CIDR, "-j", "REJECT"]))?;
    for hook in ["FORWARD", "OUTPUT"] {
        if !run_quiet(cmd("iptables").args(["-t", "filter", "-C", hook, "-j", chain])) {
            run(cmd("iptables").args(["-t", "filter", "-I", hook, "-j", chain]))?;
        }
    }
    Ok(())
}

pub fn kube_proxy(layout: &Layout, bins: &Bins) -> Result<()> {
    refuse_untranslated_service_ips().context("iptables rules for the Service CIDR")?;
    let config = layout.config().join("kube-proxy.yaml");
    write_file(&config, kube_proxy_config(layout))?;
    let args = vec![format!("--config={}", config.display()), "--v=1".into()];
    proc::start(layout, "kube-proxy", &bins.path("kube-proxy"), &args)?;
    wait_for(layout, "kube-proxy", "/healthz", Duration::from_secs(60), || {
        Ok(run(cmd("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
            "http://127.0.0.1:10256/healthz",
        ]))?
        .trim()
            == "200")
    })
}

/// Undoes the node: pods (through kubelet while the API server still runs, so CNI tears their
/// networks down), kube-proxy's and kubelet's iptables rules, containers, shims, mounts, netns,
/// the bridge and veths, CNI caches.
pub fn teardown(layout: &Layout) -> Result<()> {
    let mut errors: Vec<String> = Vec::new();
    let api_up = proc::running(layout, "kube-apiserver").is_some();
    let kubelet_up = proc::running(layout, "kubelet").is_some();
    let containerd_up = proc::running(layout, "containerd").is_some();
    if api_up && kubelet_up && containerd_up {
        let t = Instant::now();
        // Controllers are already stopped, so nothing recreates them.
        let _ = run(kubectl(layout).args([
            "delete",
            "pods",
            "--all",
            "--all-namespaces",
            "--grace-period=2",
            "--timeout=60s",
            "--wait=true",
        ]));
        println!("    pods removed through kubelet in {:.1}s", t.elapsed().as_secs_f64());
    }
    for name in ["kube-proxy", "kubelet"] {
        if let Err(e) = proc::stop(layout, name) {
            errors.push(format!("{name}: {e:#}"));
        }
    }
    // Containers left (kubelet was down, or a pod did not stop): kill through containerd and
    // remember their network namespaces.
    let mut netns: Vec<String> = Vec::new();
    let leftover = if proc::running(layout, "containerd").is_some() {
        run(ctr(layout).args(["containers", "ls", "-q"])).unwrap_or_default()
    } else {
        String::new()
    };
    let ids: Vec<&str> = leftover.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    for id in &ids {
        let info = run(ctr(layout).args(["containers", "info", id])).unwrap_or_default();
        let spec: serde_json::Value = serde_json::from_str(&info).unwrap_or_default();
        for ns in spec["Spec"]["linux"]["namespaces"].as_array().into_iter().flatten() {
            let path = ns["path"].as_str().unwrap_or("");
            if ns["type"] == "network" && !path.is_empty() && !path.starts_with("/proc/") {
                netns.push(path.to_string());
            }
        }
        run_quiet(ctr(layout).args(["tasks", "kill", "--signal", "SIGKILL", id]));
    }
    if !ids.is_empty() {
        std::thread::sleep(Duration::from_millis(500));
    }
    for id in &ids {
        run_quiet(ctr(layout).args(["tasks", "delete", "--force", id]));
        run_quiet(ctr(layout).args(["containers", "delete", id]));
    }
    if let Err(e) = proc::stop(layout, "containerd") {
        errors.push(format!("containerd: {e:#}"));
    }
    // Shims of our containerd name its socket on their command line.
    let sock = layout.containerd_socket().display().to_string();
    for pid in proc::pids_with_cmdline(&sock) {
        if let Err(e) = proc::kill_pid(pid, Duration::from_secs(3)) {
            errors.push(format!("containerd shim {pid}: {e:#}"));
        }
    }
    // Pod processes that outlived their shims (e.g. containerd had died): everything left in
    // kubelet's kubepods cgroup is ours.
    let mut pod_pids = Vec::new();
    collect_cgroup_procs(Path::new("/sys/fs/cgroup/pids/kubepods"), &mut pod_pids);
    for pid in pod_pids {
        if let Err(e) = proc::kill_pid(pid, Duration::from_secs(1)) {
            errors.push(format!("pod process {pid}: {e:#}"));
        }
    }
    // kube-proxy's own cleanup of its rules, then a sweep of every KUBE-*/CNI-* chain left.
    if let Ok(bins) = super::build::kube_binaries_if_built() {
        run_quiet(cmd(&bins.path("kube-proxy").display().to_string()).arg("--cleanup"));
    }
    for tool in ["iptables", "ip6tables"] {
        if let Err(e) = remove_chains(tool) {
            errors.push(format!("{tool}: {e:#}"));
        }
    }
    // Mounts under the state dir (pod volumes, rootfs overlays, sandbox shm), deepest first.
    if let Err(e) = unmount_under(&layout.root) {
        errors.push(format!("mounts: {e:#}"));
    }
    for ns in &netns {
        run_quiet(cmd("umount").arg(ns));
        let _ = std::fs::remove_file(ns);
    }
    // veths still on the bridge, then the bridge.
    if let Ok(out) = run(cmd("ip").args(["-o", "link", "show", "master", BRIDGE])) {
        for line in out.lines() {
            if let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) {
                run_quiet(cmd("ip").args(["link", "del", name]));
            }
        }
    }
    if run_quiet(cmd("ip").args(["link", "show", BRIDGE])) && !run_quiet(cmd("ip").args(["link", "del", BRIDGE])) {
        errors.push(format!("could not delete the {BRIDGE} bridge"));
    }
    // libcni's result cache: our network's entries and the loopback entries of the same sandboxes.
    if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
        let names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        let ours: Vec<&str> = names
            .iter()
            .filter_map(|n| n.strip_prefix(&format!("{CNI_NETWORK}-")))
            .filter_map(|rest| rest.split('-').next())
            .collect();
        for n in &names {
            let id = n
                .strip_prefix(&format!("{CNI_NETWORK}-"))
                .or_else(|| n.strip_prefix("cni-loopback-"))
                .and_then(|r| r.split('-').next());
            if id.is_some_and(|id| ours.contains(&id)) {
                let _ = std::fs::remove_file(Path::new("/var/lib/cni/results").join(n));
            }
        }
    }
    // containerd's shim socket dir is fixed (/run/containerd/s); remove it when left empty.
    for dir in ["/run/containerd/s", "/run/containerd/runc/k8s.io", "/run/containerd/runc", "/run/containerd"] {
        let _ = std::fs::remove_dir(dir);
    }
    // kubelet's cgroups (cgroupfs driver): the kubepods tree in every hierarchy, leaves first.
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        for h in hierarchies.flatten() {
            let top = h.path().join("kubepods");
            if top.is_dir() && !remove_cgroup_tree(&top) {
                errors.push(format!("cgroup {} still in use", top.display()));
            }
        }
    }
    if errors.is_empty() { Ok(()) } else { bail!("{}", errors.join("; ")) }
}

/// The pids in `cgroup.procs` of `dir` and of its descendants.
fn collect_cgroup_procs(dir: &Path, out: &mut Vec<u32>) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_cgroup_procs(&e.path(), out);
            }
        }
    }
}

/// rmdir of a cgroup directory and its children, deepest first; false if some remain.
fn remove_cgroup_tree(dir: &Path) -> bool {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    std::fs::remove_dir(dir).is_ok() || !dir.exists()
}

/// Removes every rule jumping to a KUBE-*, CNI-* or our own chain, then those chains, in every table.
fn remove_chains(tool: &str) -> Result<()> {
    if which(tool).is_none() {
        return Ok(());
    }
    let ours = |chain: &str| chain.starts_with("KUBE-") || chain.starts_with("CNI-") || chain == SERVICE_CIDR_CHAIN;
    for table in ["filter", "nat", "mangle", "raw"] {
        let Ok(dump) = run(cmd(&format!("{tool}-save")).args(["-t", table])) else { continue };
        let mut chains = Vec::new();
        for line in dump.lines() {
            if let Some(def) = line.strip_prefix(':') {
                let name = def.split_whitespace().next().unwrap_or("");
                if ours(name) {
                    chains.push(name.to_string());
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let words = split_words(rule);
                let chain = words.first().cloned().unwrap_or_default();
                let target =
                    words.windows(2).find(|w| w[0] == "-j" || w[0] == "-g").map(|w| w[1].clone()).unwrap_or_default();
                if !ours(&chain) && ours(&target) {
                    run_quiet(cmd(tool).args(["-t", table, "-D"]).args(&words));
                }
            }
        }
        for chain in &chains {
            run_quiet(cmd(tool).args(["-t", table, "-F", chain]));
        }
        for chain in &chains {
            run_quiet(cmd(tool).args(["-t", table, "-X", chain]));
        }
    }
    Ok(())
}

/// Splits an iptables-save rule into words (double quotes group, backslash escapes).
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn unmount_under(root: &Path) -> Result<()> {
    let prefix = root.display().to_string();
    for _ in 0..3 {
        let info = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mut points: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| p.replace("\\040", " "))
            .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
            .collect();
        if points.is_empty() {
            return Ok(());
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        points.dedup();
        for p in &points {
            if !run_quiet(cmd("umount").arg(p)) {
                run_quiet(cmd("umount").arg("-l").arg(p));
            }
        }
    }
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let left: Vec<&str> = info.lines().filter_map(|l| l.split(' ').nth(4)).filter(|p| p.starts_with(&prefix)).collect();
    if !left.is_empty() {
        bail!("still mounted: {}", left.join(", "));
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    #[test]
    fn splits_iptables_rules() {
        let w = super::split_words(r#"PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES"#);
        assert_eq!(
            w,
            ["PREROUTING", "-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"]
        );
    }
}
