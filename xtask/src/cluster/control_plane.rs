//! etcd (v3.6, built from `hack/etcd`; plain HTTP on loopback), kube-apiserver,
//! kube-controller-manager and kube-scheduler.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::build::Bins;
use super::{
    API_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT, Layout, NODE_IP, SERVICE_CIDR, api_get, cmd, proc, run, wait_for,
};

/// etcd v3.6, the version kubeadm v1.34 deploys (and the kind node image carries). Debian's 3.4
/// has no watch progress requests, without which the API server serves no streamed lists: kwok's
/// client-go asks for them and its pod watch kept failing (`cargo xtask bench scale`).
fn etcd_binary() -> Result<std::path::PathBuf> {
    super::build::hack_binary("etcd", super::build::ETCD_VERSION, "go.etcd.io/etcd/server/v3", "server")
}

pub fn etcd(layout: &Layout) -> Result<()> {
    let data = layout.etcd_data();
    std::fs::create_dir_all(&data)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
    let client = format!("http://127.0.0.1:{ETCD_CLIENT_PORT}");
    let peer = format!("http://127.0.0.1:{ETCD_PEER_PORT}");
    let args = vec![
        "--name=spawner".to_string(),
        format!("--data-dir={}", data.display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=spawner={peer}"),
        "--initial-cluster-state=new".into(),
        "--initial-cluster-token=spawner-local".into(),
        "--snapshot-count=10000".into(),
        "--quota-backend-bytes=2147483648".into(),
        "--log-level=warn".into(),
        "--logger=zap".into(),
    ];
    proc::start(layout, "etcd", &etcd_binary()?, &args)?;
    wait_for(layout, "etcd", "/health", Duration::from_secs(30), || {
        let out = run(cmd("curl").args(["-sS", "--max-time", "2"]).arg(format!("{client}/health")))?;
        Ok(out.contains("\"health\":\"true\""))
    })
}

pub fn apiserver(layout: &Layout, bins: &Bins) -> Result<()> {
    let pki = layout.pki();
    let p = |f: &str| pki.join(f).display().to_string();
    let args = vec![
        format!("--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}"),
        // All addresses, so pods reach it through the `kubernetes` Service (advertised on the
        // cni0 bridge); clients on the host use 127.0.0.1.
        "--bind-address=0.0.0.0".into(),
        format!("--secure-port={API_PORT}"),
        format!("--advertise-address={NODE_IP}"),
        format!("--tls-cert-file={}", p("apiserver.crt")),
        format!("--tls-private-key-file={}", p("apiserver.key")),
        format!("--client-ca-file={}", p("ca.crt")),
        format!("--kubelet-client-certificate={}", p("apiserver-kubelet-client.crt")),
        format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
        "--kubelet-preferred-address-types=InternalIP,Hostname".into(),
        // Aggregation layer (and the requestheader CA every component reads at start).
        format!("--requestheader-client-ca-file={}", p("front-proxy-ca.crt")),
        "--requestheader-allowed-names=front-proxy-client".into(),
        "--requestheader-username-headers=X-Remote-User".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        format!("--proxy-client-cert-file={}", p("front-proxy-client.crt")),
        format!("--proxy-client-key-file={}", p("front-proxy-client.key")),
        "--authorization-mode=Node,RBAC".into(),
        "--enable-admission-plugins=NodeRestriction".into(),
        "--allow-privileged=true".into(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={}", p("sa.pub")),
        format!("--service-account-signing-key-file={}", p("sa.key")),
        "--endpoint-reconciler-type=lease".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ];
    proc::start(layout, "kube-apiserver", &bins.path("kube-apiserver"), &args)?;
    wait_for(layout, "kube-apiserver", "/readyz", Duration::from_secs(120), || Ok(readyz(layout).is_ok()))
}

/// Ok if the API server's /readyz answers "ok".
pub fn readyz(layout: &Layout) -> Result<()> {
    let out = api_get(layout, "/readyz").context("GET /readyz")?;
    if out.trim() != "ok" {
        bail!("/readyz says: {}", out.trim());
    }
    Ok(())
}

pub fn controller_manager(layout: &Layout, bins: &Bins) -> Result<()> {
    let pki = layout.pki();
    let p = |f: &str| pki.join(f).display().to_string();
    let kc = layout.kubeconfig("controller-manager").display().to_string();
    let args = vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--bind-address=127.0.0.1".into(),
        format!("--tls-cert-file={}", p("controller-manager.crt")),
        format!("--tls-private-key-file={}", p("controller-manager.key")),
        format!("--client-ca-file={}", p("ca.crt")),
        format!("--root-ca-file={}", p("ca.crt")),
        format!("--service-account-private-key-file={}", p("sa.key")),
        format!("--cluster-signing-cert-file={}", p("ca.crt")),
        format!("--cluster-signing-key-file={}", p("ca.key")),
        "--use-service-account-credentials=true".into(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--controllers=*,bootstrapsigner,tokencleaner".into(),
        // The default 20 requests/s is what garbage collection, EndpointSlices and the namespace
        // controller share: deleting 10,000 backends (30,000 children) took over half an hour
        // (`cargo xtask bench scale`). Large clusters raise it the same way.
        "--kube-api-qps=200".into(),
        "--kube-api-burst=400".into(),
        "--leader-elect=false".into(),
        // Without leader election this process lives through an API server outage (kubeadm's
        // loses its lease, exits and starts afresh) and, once the API server is back, its node
        // lifecycle controller finds the node's lease as old as the outage before its watch has
        // caught up: past the default 50 s it marks the node Unknown and every pod NotReady,
        // and Services (the proxy's NodePort among them) refuse connections until the kubelet
        // reports again. With one node there is nowhere to move pods anyway. Seen in the outage
        // test (a 90 s outage on a slow run).
        "--node-monitor-grace-period=10m".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ];
    proc::start(layout, "kube-controller-manager", &bins.path("kube-controller-manager"), &args)?;
    wait_for(layout, "kube-controller-manager", "/healthz", Duration::from_secs(60), || {
        Ok(run(cmd("curl").args(["-sk", "--max-time", "2", "https://127.0.0.1:10257/healthz"]))?.trim() == "ok")
    })
}

pub fn scheduler(layout: &Layout, bins: &Bins) -> Result<()> {
    let pki = layout.pki();
    let p = |f: &str| pki.join(f).display().to_string();
    let kc = layout.kubeconfig("scheduler").display().to_string();
    let args = vec![
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
        "--bind-address=127.0.0.1".into(),
        // Bindings at the default 50/s would bound every burst above that rate.
        "--kube-api-qps=200".into(),
        "--kube-api-burst=400".into(),
        format!("--tls-cert-file={}", p("scheduler.crt")),
        format!("--tls-private-key-file={}", p("scheduler.key")),
        "--leader-elect=false".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ];
    proc::start(layout, "kube-scheduler", &bins.path("kube-scheduler"), &args)?;
    wait_for(layout, "kube-scheduler", "/healthz", Duration::from_secs(60), || {
        Ok(run(cmd("curl").args(["-sk", "--max-time", "2", "https://127.0.0.1:10259/healthz"]))?.trim() == "ok")
    })
}
