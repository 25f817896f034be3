//! A throwaway kind-style cluster whose node containers are run by testcontainers, the way
//! Java's kindcontainer does it: the kind node image of `cargo xtask kind node-image` runs as a
//! privileged container per node (systemd, containerd and the kubelet inside) on a Docker network
//! of the cluster's own, and is bootstrapped the way kind bootstraps it — a kubeadm config written
//! into each node, `kubeadm init` on the control plane, the node image's CNI manifest, `kubeadm
//! join` on the workers. Spawner is then deployed (`cargo xtask deploy --kubeconfig`), its images
//! imported into every node as soon as that has built them.
//!
//! Only Docker is needed: the engine, the node image and Spawner's images come from `cargo xtask`
//! (`docker up`, `kind node-image`, `deploy`), each built once and cached. The node image is
//! always the one assembled here (kind's stock image has no `spawner-node-network` unit, which
//! the bootstrap holds back until the node has joined).
//!
//! The containers and the network go when the [`KindCluster`] drops, a panicking test's too
//! (testcontainers removes a container when its handle drops, and the network with the last
//! container on it); Ctrl-C removes the containers through testcontainers' watchdog. Each step
//! prints one line with its duration to stderr; a failed step says which it was and shows what
//! the node said (kubeadm's output, the kubelet's journal).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use testcontainers::bollard::models::{HostConfig, Mount as DockerMount, MountType, PortBinding};
use testcontainers::core::{CgroupnsMode, ExecCommand, IntoContainerPort, Mount};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The API server's port inside the control-plane node.
const API_SERVER_PORT: u16 = 6443;
/// The reverse proxy's NodePort (`config/default`).
const PROXY_NODE_PORT: u16 = 30080;
/// kind's well-known bootstrap token: the cluster lives for one test on this machine only.
const BOOTSTRAP_TOKEN: &str = "abcdef.0123456789abcdef";
/// kind's defaults.
const POD_SUBNET: &str = "10.244.0.0/16";
const SERVICE_SUBNET: &str = "10.96.0.0/16";
/// Where each node gets the kubeadm config, and sees Spawner's image tars.
const KUBEADM_CONFIG: &str = "/kind/kubeadm.conf";
const IMAGES_DIR: &str = "/kind/spawner-images";
const ADMIN_KUBECONFIG: &str = "/etc/kubernetes/admin.conf";
/// The node image's pod network (a bridge on the node's pod CIDR, routes to the others').
const NODE_NETWORK_UNIT: &str = "spawner-node-network";
/// Label on the node containers, naming their cluster (`docker ps --filter label=...`).
const CLUSTER_LABEL: &str = "dev.spawner.kind-cluster";

/// A running cluster: one control-plane node (which also runs pods) and `workers` workers, with
/// Spawner deployed.
pub struct KindCluster {
    name: String,
    /// The control plane first. Dropping them removes the containers, then the network.
    nodes: Vec<Node>,
    kubeconfig: PathBuf,
    base_url: String,
}

struct Node {
    name: String,
    container: ContainerAsync<GenericImage>,
    ip: IpAddr,
}

impl KindCluster {
    /// Creates the cluster `<name>-<random>` and deploys Spawner into it; panics, saying which
    /// step failed and why, if that cannot be done.
    pub async fn start(name: &str, workers: usize) -> KindCluster {
        let started = Instant::now();
        let cluster = format!("{name}-{:05}", rand::random::<u32>() % 100_000);
        match start(&cluster, workers).await {
            Ok(cluster) => {
                progress(&cluster.name, "cluster up, Spawner deployed", started);
                cluster
            }
            Err(err) => panic!("kind cluster {cluster}: {err:#}"),
        }
    }

    /// An admin kubeconfig for this machine (the API server at a port of 127.0.0.1).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// Where the reverse proxy answers on this machine: `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The Kubernetes node names (the containers' names too), the control plane first.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The cluster's name: its Docker network's, and the prefix of its nodes'.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What a failing test wants to see: nodes, pods and recent events, from the control plane.
    fn dump(&self) {
        let kubectl = |args: &[&str]| {
            let out = std::process::Command::new("kubectl").args(args).env("KUBECONFIG", &self.kubeconfig).output();
            match out {
                Ok(out) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into_owned()),
                Ok(out) => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
                Err(e) => Err(e.to_string()),
            }
        };
        let show = |args: &[&str], text: Result<String, String>| {
            let text = text.unwrap_or_else(|e| e);
            eprintln!("--- kubectl {} ({}) ---\n{text}", args.join(" "), self.name);
        };
        for args in [
            &["get", "nodes,pods", "--all-namespaces", "-o", "wide"][..],
            &["get", "events", "--all-namespaces", "--sort-by=.lastTimestamp"],
        ] {
            show(args, kubectl(args));
        }
        // Spawner's own pods: the previous run of a restarted container says why it stopped.
        let pods = kubectl(&["get", "pods", "-n", spawner::names::SYSTEM_NAMESPACE, "-o", "name"]).unwrap_or_default();
        for pod in pods.lines() {
            let args = ["logs", "-n", spawner::names::SYSTEM_NAMESPACE, pod, "--all-containers", "--tail=20"];
            let previous = kubectl(&[&args[..], &["--previous"]].concat());
            show(&args, previous.or_else(|_| kubectl(&args)));
        }
    }
}

impl Drop for KindCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        let _ = std::fs::remove_file(&self.kubeconfig);
        eprintln!("kind {}: removing the node containers and the network", self.name);
    }
}

async fn start(cluster: &str, workers: usize) -> Result<KindCluster> {
    let t = Instant::now();
    let docker_host = xtask(&["docker", "up"], None).await.context("step `docker up`")?;
    let docker_host = docker_host.iter().rev().find_map(|l| l.strip_prefix("DOCKER_HOST=")).map(str::to_string);
    use_docker_host(docker_host.as_deref());
    progress(cluster, "Docker engine", t);

    let t = Instant::now();
    let out = xtask(&["kind", "node-image"], docker_host.as_deref()).await.context("step `kind node-image`")?;
    let last = out.iter().rev().find(|l| !l.trim().is_empty());
    let image = last.context("`cargo xtask kind node-image` printed nothing")?.trim().to_string();
    progress(cluster, &format!("node image {image}"), t);

    let t = Instant::now();
    let names: Vec<String> = std::iter::once(format!("{cluster}-control-plane"))
        .chain((1..=workers).map(|i| if i == 1 { format!("{cluster}-worker") } else { format!("{cluster}-worker{i}") }))
        .collect();
    let images = images_dir();
    std::fs::create_dir_all(&images).with_context(|| format!("creating {}", images.display()))?;
    let requests = names.iter().enumerate().map(|(i, name)| node_request(cluster, name, i == 0, &image, &images));
    let containers = futures::future::try_join_all(requests.map(|r| r.start()))
        .await
        .with_context(|| format!("step `start node containers` ({image}, network {cluster})"))?;
    let mut nodes = Vec::new();
    for (name, container) in names.into_iter().zip(containers) {
        let ip = container.get_bridge_ip_address().await.with_context(|| format!("the address of {name}"))?;
        nodes.push(Node { name, container, ip });
    }
    let api_port = nodes[0].container.get_host_port_ipv4(API_SERVER_PORT.tcp()).await?;
    let proxy_port = nodes[0].container.get_host_port_ipv4(PROXY_NODE_PORT.tcp()).await?;
    progress(cluster, &format!("{} node containers on network {cluster}", nodes.len()), t);

    let t = Instant::now();
    futures::future::try_join_all(nodes.iter().map(Node::wait_for_systemd)).await.context("step `systemd`")?;
    // The node image's pod network keeps the first pod CIDR it reads for its node, and images
    // before spawner.4 read a Node the controller-manager had not given one yet as the node's
    // address: it starts once every node has its pod CIDR (it acts only after kubeadm, so
    // stopping it now loses nothing).
    for node in &nodes {
        node.run(&["systemctl", "stop", NODE_NETWORK_UNIT]).await.context("step `systemd`")?;
    }
    progress(cluster, "systemd running in every node", t);

    let t = Instant::now();
    let (control_plane, workers) = nodes.split_first().expect("a control plane");
    let config = ClusterConfig::read(cluster, control_plane).await.context("step `kubeadm config`")?;
    control_plane.kubeadm(&config, "init").await.context("step `kubeadm init`")?;
    progress(cluster, &format!("kubeadm init on {} (Kubernetes {})", control_plane.name, config.kubernetes_version), t);

    let t = Instant::now();
    control_plane.install_pod_network().await.context("step `pod network`")?;
    control_plane
        .kubectl(&[
            "taint",
            "nodes",
            "-l",
            "node-role.kubernetes.io/control-plane",
            "node-role.kubernetes.io/control-plane:NoSchedule-",
        ])
        .await
        .context("step `untaint the control plane`")?;
    progress(cluster, "pod network RBAC, control plane schedulable", t);

    let t = Instant::now();
    futures::future::try_join_all(workers.iter().map(|w| w.kubeadm(&config, "join")))
        .await
        .context("step `kubeadm join`")?;
    progress(cluster, &format!("kubeadm join on {} worker(s)", workers.len()), t);

    let t = Instant::now();
    wait_until_ready(&nodes).await.context("step `nodes Ready`")?;
    progress(cluster, "every node Ready", t);

    let t = Instant::now();
    let kubeconfig = std::env::temp_dir().join(format!("{cluster}.kubeconfig"));
    let admin = nodes[0].container.copy_file_from(ADMIN_KUBECONFIG, Vec::new()).await.context("copying admin.conf")?;
    std::fs::write(&kubeconfig, for_this_machine(&admin, api_port)?)?;
    let base_url = format!("http://127.0.0.1:{proxy_port}");
    let kind = KindCluster { name: cluster.to_string(), nodes, kubeconfig, base_url };
    let kubeconfig = kind.kubeconfig.display().to_string();
    let args = ["deploy", "--kubeconfig", &kubeconfig, "--base-url", &kind.base_url, "--no-demo"];
    let (deployed, imported) = deploy_and_import(&args, docker_host.as_deref(), &kind.nodes).await;
    if let Err(err) = imported {
        kind.dump();
        let deployed = deployed.err().map(|e| format!("\n(and so: {e:#})")).unwrap_or_default();
        return Err(err.context(format!("step `load images`{deployed}")));
    }
    if let Err(err) = deployed {
        kind.dump();
        return Err(err.context("step `deploy`"));
    }
    progress(cluster, &format!("Spawner deployed; proxy at {}, API server at 127.0.0.1:{api_port}", kind.base_url), t);

    // The rollouts are done, but kube-proxy may not have programmed the proxy's NodePort yet
    // (until then it rejects: Docker's port forwarder resets the connection).
    let t = Instant::now();
    let addr = format!("127.0.0.1:{proxy_port}");
    if let Err(err) = proxy_answers(&addr, Duration::from_secs(60)).await {
        kind.dump();
        return Err(err.context("step `proxy answers`"));
    }
    progress(cluster, &format!("the proxy answers at {}", kind.base_url), t);
    Ok(kind)
}

/// Waits until `GET /healthz` through the proxy's NodePort at `addr` answers 200.
async fn proxy_answers(addr: &str, within: Duration) -> Result<()> {
    async fn healthz(addr: &str) -> Result<String> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: spawner\r\nConnection: close\r\n\r\n").await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response.lines().next().unwrap_or_default().to_string())
    }
    let give_up = Instant::now() + within;
    loop {
        let last = match tokio::time::timeout(Duration::from_secs(5), healthz(addr)).await {
            Ok(Ok(status)) if status.split_whitespace().nth(1) == Some("200") => return Ok(()),
            Ok(Ok(status)) => format!("answered `{status}`"),
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "no answer within 5 s".to_string(),
        };
        if Instant::now() > give_up {
            bail!("GET http://{addr}/healthz: {last} (for {within:?})");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn progress(cluster: &str, what: &str, since: Instant) {
    eprintln!("kind {cluster}: {what} ({:.1?})", since.elapsed());
}

/// Points testcontainers at the engine `cargo xtask docker up` uses, unless DOCKER_HOST says
/// where it is already.
fn use_docker_host(host: Option<&str>) {
    if let (Some(host), None) = (host, std::env::var_os("DOCKER_HOST")) {
        // SAFETY: testcontainers reads DOCKER_HOST when it makes its client, which happens after
        // this; no other thread of the test process reads or writes the environment meanwhile
        // (the runtime's other threads are idle, the xtask runs above have finished).
        unsafe { std::env::set_var("DOCKER_HOST", host) };
    }
}

/// Runs `cargo xtask ARGS` in the repository; returns its stdout lines (each also echoed to
/// stderr as it comes, so a cold build shows progress). Fails with its stderr.
async fn xtask(args: &[&str], docker_host: Option<&str>) -> Result<Vec<String>> {
    xtask_watching(args, docker_host, |_| {}).await
}

/// [`xtask`], handing each stdout line to `on_line` as it comes.
async fn xtask_watching(
    args: &[&str],
    docker_host: Option<&str>,
    mut on_line: impl FnMut(&str),
) -> Result<Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = tokio::process::Command::new(cargo);
    command
        .arg("xtask")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(host) = docker_host {
        command.env("DOCKER_HOST", host);
    }
    let mut child = command.spawn().context("running cargo xtask")?;
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut stdout = Vec::new();
    while let Some(line) = lines.next_line().await? {
        eprintln!("    | {line}");
        on_line(&line);
        stdout.push(line);
    }
    let status = child.wait().await?;
    let stderr = stderr.await.unwrap_or_default();
    if !status.success() {
        bail!("`cargo xtask {}` failed ({status}):\n{}", args.join(" "), tail(&stderr, 40));
    }
    Ok(stdout)
}

/// Where `cargo xtask images` writes the image tars: xtask's cache root, `images/`.
fn images_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|x| !x.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache"));
    cache.join("spawner").join("images")
}

/// Runs `cargo xtask deploy`, which builds Spawner's images, pins them by content and applies
/// `config/default`, and imports the tars it has just written into every node (mounted at
/// [`IMAGES_DIR`]) while it applies: the images the manifests pin are exactly those, even when
/// the sources changed since the test was built. A pod created before its image is in reports
/// ErrImagePull once and gets it on the kubelet's next try.
async fn deploy_and_import(args: &[&str], docker_host: Option<&str>, nodes: &[Node]) -> (Result<()>, Result<()>) {
    let (built_tx, built_rx) = tokio::sync::oneshot::channel::<Vec<PathBuf>>();
    let mut built_tx = Some(built_tx);
    let mut tars = Vec::new();
    // `images::build` prints `<content ref> -> <tar>` per image, then deploy applies.
    let on_line = move |line: &str| {
        if let Some((_, tar)) = line.rsplit_once(" -> ").filter(|(_, tar)| tar.trim().ends_with(".tar")) {
            tars.push(PathBuf::from(tar.trim()));
        }
        if let Some(tx) = built_tx.take_if(|_| line.starts_with("==> kubectl apply")) {
            let _ = tx.send(std::mem::take(&mut tars));
        }
    };
    let deploy = async { xtask_watching(args, docker_host, on_line).await.map(drop) };
    let import = async {
        let tars = built_rx.await.context("`cargo xtask deploy` stopped before it had built the images")?;
        let t = Instant::now();
        let dir = images_dir();
        if let Some(elsewhere) = tars.iter().find(|tar| tar.parent() != Some(dir.as_path())) {
            bail!("{} is not in {} (mounted into the nodes)", elsewhere.display(), dir.display());
        }
        futures::future::try_join_all(nodes.iter().map(|n| n.import_images(&tars))).await?;
        eprintln!("    {} images imported into every node ({:.1?})", tars.len(), t.elapsed());
        Ok(())
    };
    tokio::join!(deploy, import)
}

/// The container of one node, as kind's docker provider runs it.
fn node_request(
    cluster: &str,
    name: &str,
    control_plane: bool,
    image: &str,
    images: &Path,
) -> ContainerRequest<GenericImage> {
    let images = images.display().to_string();
    let (repository, tag) = match image.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, tag),
        _ => (image, "latest"),
    };
    let mut node = GenericImage::new(repository, tag);
    if control_plane {
        node = node.with_exposed_port(API_SERVER_PORT.tcp()).with_exposed_port(PROXY_NODE_PORT.tcp());
    }
    let request = node
        .with_container_name(name)
        .with_hostname(name)
        .with_network(cluster)
        .with_label(CLUSTER_LABEL, cluster)
        .with_privileged(true)
        .with_security_opt("seccomp=unconfined")
        .with_security_opt("apparmor=unconfined")
        .with_cgroupns_mode(CgroupnsMode::Private)
        .with_mount(Mount::tmpfs_mount("/tmp"))
        .with_mount(Mount::tmpfs_mount("/run"))
        .with_startup_timeout(Duration::from_secs(120))
        .with_host_config_modifier(move |host: &mut HostConfig| {
            // kind's entrypoint runs as PID 1 and starts systemd.
            host.init = Some(false);
            // An anonymous volume (removed with the container): containerd's overlayfs snapshots
            // cannot live on the container's own overlayfs; Docker fills it from the image's
            // /var, which holds the pre-loaded control-plane images.
            let mounts = host.mounts.get_or_insert_with(Vec::new);
            mounts.push(DockerMount {
                target: Some("/var".into()),
                typ: Some(MountType::VOLUME),
                ..Default::default()
            });
            // Spawner's image tars, as `cargo xtask` writes them (a copy would have to be made
            // before they exist).
            mounts.push(DockerMount {
                target: Some(IMAGES_DIR.into()),
                source: Some(images.clone()),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            });
            if Path::new("/lib/modules").is_dir() {
                mounts.push(DockerMount {
                    target: Some("/lib/modules".into()),
                    source: Some("/lib/modules".into()),
                    typ: Some(MountType::BIND),
                    read_only: Some(true),
                    ..Default::default()
                });
            }
            // The control plane's API server and proxy NodePort on 127.0.0.1 only, at ports
            // Docker picks (testcontainers would publish them on every address).
            host.publish_all_ports = Some(false);
            host.port_bindings = control_plane.then(|| {
                [API_SERVER_PORT, PROXY_NODE_PORT]
                    .into_iter()
                    .map(|port| {
                        let binding = PortBinding { host_ip: Some("127.0.0.1".into()), host_port: Some(String::new()) };
                        (format!("{port}/tcp"), Some(vec![binding]))
                    })
                    .collect()
            });
        });
    if control_plane { request.with_env_var("KUBECONFIG", ADMIN_KUBECONFIG) } else { request }
}

/// What every node's kubeadm config shares, read from the control-plane node's image.
struct ClusterConfig {
    name: String,
    control_plane: String,
    kubernetes_version: String,
    /// CoreDNS as the image pre-loads it (repository without `/coredns`, tag), if it does.
    coredns: Option<(String, String)>,
}

impl ClusterConfig {
    async fn read(cluster: &str, control_plane: &Node) -> Result<ClusterConfig> {
        let kubernetes_version = control_plane.run(&["cat", "/kind/version"]).await?.trim().to_string();
        let images = control_plane.run(&["ctr", "--namespace=k8s.io", "images", "list", "--quiet"]).await?;
        let coredns = images.lines().find_map(|image| {
            let (repository, tag) = image.rsplit_once(':')?;
            let repository = repository.strip_suffix("/coredns")?;
            (!tag.contains('/') && !repository.starts_with("registry.k8s.io"))
                .then(|| (repository.to_string(), tag.to_string()))
        });
        Ok(ClusterConfig {
            name: cluster.to_string(),
            control_plane: control_plane.name.clone(),
            kubernetes_version,
            coredns,
        })
    }

    /// kind's kubeadm config for one node, as YAML documents.
    fn kubeadm_config(&self, node_ip: IpAddr) -> String {
        let endpoint = format!("{}:{API_SERVER_PORT}", self.control_plane);
        let registration = json!({
            "criSocket": "unix:///run/containerd/containerd.sock",
            "kubeletExtraArgs": [{"name": "node-ip", "value": node_ip.to_string()}],
        });
        let mut cluster = json!({
            "apiVersion": "kubeadm.k8s.io/v1beta4",
            "kind": "ClusterConfiguration",
            "kubernetesVersion": self.kubernetes_version,
            "clusterName": self.name,
            "controlPlaneEndpoint": endpoint,
            // The kubeconfig for this machine reaches the API server at 127.0.0.1.
            "apiServer": {"certSANs": ["localhost", "127.0.0.1"]},
            "controllerManager": {"extraArgs": [{"name": "enable-hostpath-provisioner", "value": "true"}]},
            // The controller-manager allocates each node's pod CIDR; the node image's pod
            // network puts a bridge on it.
            "networking": {"podSubnet": POD_SUBNET, "serviceSubnet": SERVICE_SUBNET},
        });
        if let Some((repository, tag)) = &self.coredns {
            cluster["dns"] = json!({"imageRepository": repository, "imageTag": tag});
        }
        let documents: [Value; 5] = [
            cluster,
            json!({
                "apiVersion": "kubeadm.k8s.io/v1beta4",
                "kind": "InitConfiguration",
                "bootstrapTokens": [{"token": BOOTSTRAP_TOKEN}],
                "localAPIEndpoint": {"advertiseAddress": node_ip.to_string(), "bindPort": API_SERVER_PORT},
                "nodeRegistration": registration,
                // The images are pre-loaded; preflight would try to pull them.
                "skipPhases": ["preflight"],
            }),
            json!({
                "apiVersion": "kubeadm.k8s.io/v1beta4",
                "kind": "JoinConfiguration",
                "nodeRegistration": registration,
                "discovery": {"bootstrapToken": {
                    "apiServerEndpoint": endpoint,
                    "token": BOOTSTRAP_TOKEN,
                    "unsafeSkipCAVerification": true,
                }},
                "skipPhases": ["preflight"],
            }),
            json!({
                "apiVersion": "kubelet.config.k8s.io/v1beta1",
                "kind": "KubeletConfiguration",
                "cgroupDriver": "systemd",
                "cgroupRoot": "/kubelet",
                "failSwapOn": false,
                // The node sees the host's disk: no disk-pressure eviction, no image GC.
                "imageGCHighThresholdPercent": 100,
                "evictionHard": {"nodefs.available": "0%", "nodefs.inodesFree": "0%", "imagefs.available": "0%"},
            }),
            json!({
                "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                "kind": "KubeProxyConfiguration",
                "mode": "iptables",
                "iptables": {"minSyncPeriod": "1s"},
                // nf_conntrack_max is the host's, shared by every node: leave it alone.
                "conntrack": {"maxPerCore": 0},
            }),
        ];
        documents
            .iter()
            .map(|d| serde_yaml::to_string(d).expect("a kubeadm config document"))
            .collect::<Vec<_>>()
            .join("---\n")
    }
}

/// Waits until every node is registered (its kubelet creates the Node just after `kubeadm join`
/// returns) and has its pod CIDR, starts the pod network on every node, and waits until every
/// node is Ready (the pod network's CNI config written).
async fn wait_until_ready(nodes: &[Node]) -> Result<()> {
    let control_plane = &nodes[0];
    for node in nodes {
        let node = format!("node/{}", node.name);
        control_plane.kubectl(&["wait", "--for=create", &node, "--timeout=60s"]).await?;
        control_plane.kubectl(&["wait", "--for=jsonpath={.spec.podCIDR}", &node, "--timeout=60s"]).await?;
    }
    for node in nodes {
        node.run(&["systemctl", "start", NODE_NETWORK_UNIT]).await?;
    }
    let wait = control_plane.kubectl(&["wait", "--for=condition=Ready", "nodes", "--all", "--timeout=180s"]).await;
    if let Err(err) = wait {
        let mut report = format!("{err:#}\n");
        if let Ok(described) = control_plane.kubectl(&["describe", "nodes"]).await {
            report.push_str(&format!("--- kubectl describe nodes ---\n{}\n", tail(&described, 60)));
        }
        for node in nodes {
            report.push_str(&node.journal(NODE_NETWORK_UNIT, 15).await);
            report.push_str(&node.journal("kubelet", 25).await);
        }
        bail!("{report}");
    }
    Ok(())
}

/// The admin kubeconfig with its server at the API server's port on this machine.
fn for_this_machine(admin: &[u8], api_port: u16) -> Result<String> {
    let mut config: serde_yaml::Value = serde_yaml::from_slice(admin).context("parsing admin.conf")?;
    let clusters = config["clusters"].as_sequence_mut().context("admin.conf has no clusters")?;
    for cluster in clusters {
        cluster["cluster"]["server"] = format!("https://127.0.0.1:{api_port}").into();
    }
    Ok(serde_yaml::to_string(&config)?)
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Node {
    /// Runs a command in the node; returns its exit code and its stdout and stderr interleaved.
    async fn output(&self, args: &[&str], env: &[(&str, &str)]) -> Result<(i64, String)> {
        let command: Vec<&str> = ["sh", "-c", "exec \"$@\" 2>&1", "sh"].iter().chain(args).copied().collect();
        let mut exec = self
            .container
            .exec(ExecCommand::new(command).with_env_vars(env.iter().copied()))
            .await
            .with_context(|| format!("docker exec in {}: {}", self.name, args.join(" ")))?;
        let output = String::from_utf8_lossy(&exec.stdout_to_vec().await?).into_owned();
        // The output ends when the process does; Docker records its exit code just after.
        for _ in 0..100 {
            if let Some(code) = exec.exit_code().await? {
                return Ok((code, output));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{}: no exit code for `{}` 5 s after its output ended", self.name, args.join(" "))
    }

    /// Runs a command in the node; fails with its output unless it succeeds.
    async fn run(&self, args: &[&str]) -> Result<String> {
        let (code, output) = self.output(args, &[]).await?;
        if code != 0 {
            bail!("`{}` on {} exited with {code}:\n{}", args.join(" "), self.name, tail(&output, 40));
        }
        Ok(output)
    }

    async fn kubectl(&self, args: &[&str]) -> Result<String> {
        let command: Vec<&str> = ["kubectl", "--kubeconfig", ADMIN_KUBECONFIG].iter().chain(args).copied().collect();
        self.run(&command).await
    }

    async fn write_file(&self, path: &str, contents: &str) -> Result<()> {
        let (code, output) =
            self.output(&["sh", "-c", "printf '%s' \"$CONTENTS\" > \"$0\"", path], &[("CONTENTS", contents)]).await?;
        if code != 0 {
            bail!("writing {path} on {}: {output}", self.name);
        }
        Ok(())
    }

    /// The tail of a unit's journal, for an error report.
    async fn journal(&self, unit: &str, lines: usize) -> String {
        let lines = lines.to_string();
        let out = self.output(&["journalctl", "--no-pager", "-u", unit, "-n", &lines], &[]).await;
        let text = out.map(|(_, text)| text).unwrap_or_else(|e| format!("{e:#}"));
        format!("--- journalctl -u {unit} on {} ---\n{text}\n", self.name)
    }

    /// Waits until systemd in the node has started everything (running, or degraded when some
    /// unit failed: kubelet restarts until kubeadm configures it).
    async fn wait_for_systemd(&self) -> Result<()> {
        let give_up = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, state) = self.output(&["systemctl", "is-system-running"], &[]).await?;
            let state = state.trim();
            if state == "running" || state == "degraded" {
                return Ok(());
            }
            if Instant::now() > give_up {
                let failed = self.output(&["systemctl", "--failed", "--no-pager"], &[]).await.map(|o| o.1);
                bail!(
                    "systemd in {} is still `{state}` after 120 s; failed units:\n{}",
                    self.name,
                    failed.unwrap_or_else(|e| format!("{e:#}"))
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Writes this node's kubeadm config and runs `kubeadm init` or `kubeadm join` with it.
    async fn kubeadm(&self, config: &ClusterConfig, phase: &str) -> Result<()> {
        self.write_file(KUBEADM_CONFIG, &config.kubeadm_config(self.ip)).await?;
        let config_arg = format!("--config={KUBEADM_CONFIG}");
        let mut args = vec!["kubeadm", phase, &config_arg, "--v=6"];
        if phase == "init" {
            args.push("--skip-token-print");
        }
        let run = tokio::time::timeout(Duration::from_secs(360), self.output(&args, &[]));
        let (code, output) = match run.await {
            Ok(result) => result?,
            Err(_) => (-1, "(no result after 360 s)".to_string()),
        };
        if code != 0 {
            bail!(
                "`{}` on {} exited with {code}:\n{}\n{}",
                args.join(" "),
                self.name,
                tail(&output, 60),
                self.journal("kubelet", 30).await
            );
        }
        Ok(())
    }

    /// Applies the node image's CNI manifest as kind does (plus the pod network's RBAC if the
    /// manifest lacks it).
    async fn install_pod_network(&self) -> Result<()> {
        // As kind does: the node image's CNI manifest (for ours, the RBAC its pod network needs).
        self.kubectl(&["create", "-f", "/kind/manifests/default-cni.yaml"]).await?;
        Ok(())
    }

    /// Imports Spawner's image tars (from the mounted images directory) into containerd.
    async fn import_images(&self, tars: &[PathBuf]) -> Result<()> {
        for tar in tars {
            let path = format!("{IMAGES_DIR}/{}", tar.file_name().expect("a tar file name").to_string_lossy());
            self.run(&[
                "ctr",
                "--namespace=k8s.io",
                "images",
                "import",
                "--all-platforms",
                "--digests",
                "--snapshotter=overlayfs",
                &path,
            ])
            .await?;
        }
        Ok(())
    }
}
