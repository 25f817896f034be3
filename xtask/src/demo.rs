//! The drop-four demo backend that `cargo xtask deploy` ends with.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::ResourceExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use spawner::client::{BackendRequest, Backends, Naming};
use xshell::{Shell, cmd};

/// Applies the demo's pool (`config/samples/pool.yaml`), waits until its warm pods are Ready,
/// then takes one through Spawner's client library (as `spawner create --pool drop-four --wait`
/// does), waits until the backend is Ready, checks its page is served through the reverse proxy,
/// and returns its URL (with the token).
pub fn create(kubeconfig: &Path) -> Result<String> {
    let pool = crate::manifests::DEMO_POOL;
    println!("==> demo pool {pool} (config/samples/pool.yaml), and a backend from it");
    crate::deploy::kubectl(&kubeconfig.to_path_buf(), &["apply", "-n", "default", "-f", "config/samples/pool.yaml"])?;
    let started = Instant::now();
    let slabpool = format!("slabpool/{pool}");
    crate::deploy::kubectl(
        &kubeconfig.to_path_buf(),
        &["wait", "-n", "default", "--for=condition=Ready", &slabpool, "--timeout=180s"],
    )?;
    println!("    warm pods Ready after {:.1?}", started.elapsed());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let url = runtime.block_on(async {
        let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        let backends = Backends::new(kube::Client::try_from(config)?, "default");
        let naming = Naming::GenerateName(spawner::client::names::generate_name_for_pool(pool));
        let created = backends.create(&BackendRequest::from_pool(naming, pool)).await?;
        let started = Instant::now();
        let ready = backends.wait_ready(&created.name_any(), Duration::from_secs(180)).await?;
        println!("    {} Ready {:.1?} after its creation was answered", ready.name_any(), started.elapsed());
        anyhow::Ok(backends.access_url(&ready).await?)
    })?;
    check_served(&url).context("the demo backend is Ready but not served through the proxy")?;
    Ok(url)
}

/// Ready means routable (the proxy connects to the address in the backend's status), so the
/// page is fetched once: the URL printed must work when opened, and a failure here is a bug.
fn check_served(url: &str) -> Result<()> {
    let sh = Shell::new()?;
    let write_out = "%{http_code}";
    let out = cmd!(sh, "curl -s -o /dev/null -w {write_out} --max-time 30 {url}").quiet().ignore_status().output();
    let status = String::from_utf8_lossy(&out.context("running curl")?.stdout).trim().to_string();
    if status != "200" {
        bail!("{url} answers {status}: see `kubectl -n spawner-system logs deploy/spawner-proxy --all-containers`");
    }
    Ok(())
}

/// The demo's lobby (config/samples/lobby.yaml) in `default`, with a fresh API key for the
/// demo's pool (the previous deploy's key is revoked); returns its URL once it serves its page.
/// `base_url` is the proxy's; the lobby is on the next port.
pub fn lobby(kubeconfig: &Path, base_url: &str) -> Result<String> {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, Patch, PatchParams};
    use spawner::api::keys::admin;

    println!("==> the lobby (config/samples/lobby.yaml), a web application over spawner-api");
    let pool = crate::manifests::DEMO_POOL;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        let client = kube::Client::try_from(config)?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
        let previous = secrets.get_opt(crate::manifests::LOBBY_KEY_SECRET).await?;
        let new = admin::create(&client, "drop-four lobby", vec!["default".into()], vec![pool.into()], 20).await?;
        let secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": crate::manifests::LOBBY_KEY_SECRET},
            "stringData": {"key": new.key, "id": new.id},
        });
        secrets
            .patch(
                crate::manifests::LOBBY_KEY_SECRET,
                &PatchParams::apply("spawner-xtask").force(),
                &Patch::Apply(&secret),
            )
            .await?;
        let old_id = previous.and_then(|s| s.data?.remove("id")).map(|id| String::from_utf8_lossy(&id.0).into_owned());
        if let Some(old_id) = old_id.filter(|id| *id != new.id) {
            // Gone already (a fresh keys Secret) is fine.
            let _ = admin::revoke(&client, &old_id).await;
        }
        anyhow::Ok(())
    })?;
    let kubeconfig = kubeconfig.to_path_buf();
    crate::deploy::kubectl(&kubeconfig, &["apply", "-n", "default", "-f", "config/samples/lobby.yaml"])?;
    // The key is an environment variable: a new one needs new pods.
    let deployment = format!("deployment/{}", crate::manifests::LOBBY);
    crate::deploy::kubectl(&kubeconfig, &["rollout", "restart", "-n", "default", &deployment])?;
    crate::deploy::kubectl(&kubeconfig, &["rollout", "status", "-n", "default", "--timeout=180s", &deployment])?;
    let (scheme_host, port) = base_url.rsplit_once(':').context("the proxy's URL has a port")?;
    let port: u16 = port.trim_end_matches('/').parse().context("the proxy's port")?;
    let url = format!("{scheme_host}:{}/", port + 1);
    wait_served(&url, Duration::from_secs(60))?;
    Ok(url)
}

/// The lobby is an ordinary NodePort Service: a new one is reachable once kube-proxy has
/// written its rules, a moment after its pods are Ready. So its page is asked for until it
/// answers (unlike a backend's, which Spawner routes the moment it is Ready).
fn wait_served(url: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match check_served(url) {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("{url} did not answer 200 within {timeout:?}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}
