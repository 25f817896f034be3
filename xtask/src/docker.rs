//! `cargo xtask docker up|down|status`: a Docker engine for kind, where none runs.
//!
//! Where `docker info` already answers (a developer's laptop, CI with Docker), that engine is
//! used as it is and nothing here starts or stops it. Otherwise, on Debian as root, Debian's
//! `docker.io` is installed and `dockerd` is started with a data root, exec root, socket and pid
//! file of its own (under `~/.cache/spawner/docker/` and `/run/spawner-docker/`), so it disturbs
//! neither a system Docker nor the local cluster's containerd. IP forwarding is switched on
//! before it starts, so that Docker leaves the FORWARD policy alone (it sets DROP only when it
//! enables forwarding itself) and the local cluster's pods keep forwarding; Docker's own rules
//! (its networks' NAT, the embedded DNS kind's nodes resolve each other with) stay enabled.
//!
//! Machines whose capability bounding set lacks `CAP_SYS_RESOURCE` (this project's VMs) cannot
//! run `docker run --privileged`: runc asks for every capability Docker knows and the kernel
//! refuses. There `dockerd` gets a runtime wrapper ([`RUNC_WRAPPER`]) that removes that one
//! capability from the container's spec before calling runc. A user's machine needs none of it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xshell::{Shell, cmd};

use crate::cluster::proc;

/// The socket of the engine this module starts (short: unix socket paths are limited).
const EXEC_ROOT: &str = "/run/spawner-docker";

/// The Docker engine to talk to: `DOCKER_HOST` for every docker, kind and testcontainers call.
#[derive(Debug, Clone)]
pub struct Engine {
    /// `unix:///...` of the engine we started, or `None` for the environment's own engine.
    pub host: Option<String>,
}

impl Engine {
    /// A shell whose commands talk to this engine.
    pub fn shell(&self) -> Result<Shell> {
        let sh = Shell::new()?;
        if let Some(host) = &self.host {
            sh.set_var("DOCKER_HOST", host);
        }
        Ok(sh)
    }

    /// `DOCKER_HOST=...` for child processes that are not run through [`Engine::shell`].
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.host.iter().map(|h| ("DOCKER_HOST", h.clone())).collect()
    }
}

/// Where this module keeps the engine it starts: `data/` (images, kept across `down` as a cache),
/// `logs/`, `run/` (pid file), the runc wrapper.
fn layout() -> Result<crate::cluster::Layout> {
    Ok(crate::cluster::Layout { root: crate::cluster::cache_root()?.join("docker") })
}

fn own_host() -> String {
    format!("unix://{EXEC_ROOT}/docker.sock")
}

/// `docker info` against `host` (None: the environment's default) succeeds.
fn answers(host: Option<&str>) -> bool {
    let mut c = std::process::Command::new("docker");
    c.args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if let Some(h) = host {
        c.env("DOCKER_HOST", h);
    }
    c.status().is_ok_and(|s| s.success())
}

/// The engine in use (ours, else the environment's), if one answers; starts nothing.
pub fn find() -> Result<Option<Engine>> {
    let layout = layout()?;
    if proc::running(&layout, "dockerd").is_some() && answers(Some(&own_host())) {
        return Ok(Some(Engine { host: Some(own_host()) }));
    }
    Ok(answers(None).then_some(Engine { host: None }))
}

/// The engine to use, starting ours if nothing answers. Idempotent.
pub fn up() -> Result<Engine> {
    if let Some(engine) = find()? {
        return Ok(engine);
    }
    let layout = layout()?;
    crate::deps::ensure(crate::deps::Need::Cluster)?;
    let started = Instant::now();
    let data = layout.root.join("data");
    std::fs::create_dir_all(&data)?;
    std::fs::create_dir_all(EXEC_ROOT)?;
    let mut args: Vec<String> = vec![
        "--data-root".into(),
        data.display().to_string(),
        "--exec-root".into(),
        EXEC_ROOT.into(),
        "--host".into(),
        own_host(),
        "--pidfile".into(),
        format!("{EXEC_ROOT}/dockerd.pid"),
        "--storage-driver".into(),
        "overlay2".into(),
        // No default bridge: kind makes a network of its own.
        "--bridge=none".into(),
    ];
    if !bounding_set_has_sys_resource() {
        let wrapper = layout.root.join("runc-without-sys-resource");
        std::fs::write(&wrapper, RUNC_WRAPPER).with_context(|| format!("writing {}", wrapper.display()))?;
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        args.extend(["--add-runtime".into(), format!("spawner-runc={}", wrapper.display())]);
        args.extend(["--default-runtime".into(), "spawner-runc".into()]);
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling net.ipv4.ip_forward")?;
    println!("==> dockerd (data {}, socket {})", data.display(), own_host());
    proc::start(&layout, "dockerd", std::path::Path::new("/usr/sbin/dockerd"), &args)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !answers(Some(&own_host())) {
        if proc::running(&layout, "dockerd").is_none() || Instant::now() > deadline {
            bail!(
                "dockerd did not come up; log {}\n{}",
                layout.log("dockerd").display(),
                proc::tail(&layout.log("dockerd"), 20)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("    dockerd answers ({:.1?}); export DOCKER_HOST={}", started.elapsed(), own_host());
    Ok(Engine { host: Some(own_host()) })
}

/// Stops the engine `up` started (its containers first) and removes its socket, pid file and
/// exec root; with `purge`, also its data root (the image cache). An engine we did not start is
/// left alone.
pub fn down(purge: bool) -> Result<()> {
    let layout = layout()?;
    if let Some(pid) = proc::running(&layout, "dockerd") {
        let sh = Shell::new()?;
        sh.set_var("DOCKER_HOST", own_host());
        let ids = cmd!(sh, "docker ps -aq").quiet().read().unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            cmd!(sh, "docker rm -f -v {ids...}").quiet().ignore_stdout().run()?;
        }
        proc::kill_pid(pid, Duration::from_secs(20)).context("stopping dockerd")?;
    }
    proc::stop(&layout, "dockerd")?;
    // dockerd's own containerd and shims, if any outlived it.
    for pid in proc::pids_with_cmdline(EXEC_ROOT) {
        let _ = proc::kill_pid(pid, Duration::from_secs(5));
    }
    for dir in ["netns", "containerd", "runtimes"] {
        let path = PathBuf::from(EXEC_ROOT).join(dir);
        let _ = std::process::Command::new("umount").args(["-R", "-l"]).arg(&path).output();
    }
    let _ = std::fs::remove_dir_all(EXEC_ROOT);
    if purge {
        let data = layout.root.join("data");
        let _ = std::process::Command::new("umount").args(["-R", "-l"]).arg(&data).output();
        if data.exists() {
            std::fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
        }
    }
    println!("docker down");
    Ok(())
}

/// One line about the engine in use.
pub fn status() -> Result<()> {
    let layout = layout()?;
    if let Some(pid) = proc::running(&layout, "dockerd") {
        println!("dockerd started by `cargo xtask docker up`: pid {pid}, DOCKER_HOST={}", own_host());
    } else if answers(None) {
        println!("a Docker engine of this machine answers (used as it is)");
    } else {
        bail!("no Docker engine answers (run `cargo xtask docker up`)");
    }
    Ok(())
}

/// Whether CAP_SYS_RESOURCE (bit 24) is in this process's capability bounding set.
fn bounding_set_has_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let bnd = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).map(str::trim).unwrap_or("ffffffffffffffff");
    u64::from_str_radix(bnd, 16).is_ok_and(|bits| bits & (1 << 24) != 0)
}

/// The runtime wrapper for machines without CAP_SYS_RESOURCE: Docker asks runc for every
/// capability it knows when `--privileged`, and this kernel refuses the whole set. The wrapper
/// removes that one capability from the spec runc is given — the bundle's `config.json` for
/// `create`, the `--process` file for `exec` (both compact JSON written by containerd's shim) —
/// and runs Debian's runc.
pub const RUNC_WRAPPER: &str = r#"#!/bin/sh
# Written by `cargo xtask docker up`: runc without CAP_SYS_RESOURCE, which this machine's
# capability bounding set lacks (privileged containers would fail to start otherwise).
spec=""
prev=""
for arg in "$@"; do
  case "$prev" in
    --bundle|-b) spec="$arg/config.json" ;;
    --process|-p) spec="$arg" ;;
  esac
  case "$arg" in
    --bundle=*) spec="${arg#--bundle=}/config.json" ;;
    --process=*) spec="${arg#--process=}" ;;
  esac
  prev="$arg"
done
if [ -n "$spec" ] && [ -f "$spec" ]; then
  sed -i -e 's/,"CAP_SYS_RESOURCE"//g' -e 's/"CAP_SYS_RESOURCE",//g' -e 's/"CAP_SYS_RESOURCE"//g' "$spec"
fi
exec /usr/sbin/runc "$@"
"#;
