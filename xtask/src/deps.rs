//! Debian packages the local cluster, kind, the images, the benchmarks and the tests need,
//! installed when missing: the preparation every `cargo xtask` entry point shares.

use anyhow::{Context, Result};
use xshell::{Shell, cmd};

/// Package, and why it is needed.
pub const PACKAGES: &[(&str, &str)] = &[
    ("containerd", "the node's container runtime"),
    ("runc", "the OCI runtime under containerd"),
    ("containernetworking-plugins", "CNI bridge, host-local, portmap, loopback"),
    ("iptables", "kube-proxy and CNI rules"),
    ("conntrack", "kube-proxy"),
    ("curl", "the cluster's health checks"),
    ("nginx", "the reverse proxy image and the sidecar benchmark"),
    ("haproxy", "the sidecar benchmark's reference"),
    ("wrk", "HTTP load for the benchmarks"),
    ("chromium", "the browser test"),
    ("docker.io", "the Docker engine kind runs on, where none runs"),
    ("debootstrap", "the root filesystem of the kind node image"),
    ("ipset", "kube-router's NetworkPolicy enforcement in the kind node image"),
    ("python3-venv", "the virtualenv schemathesis (the API's fuzzing, from PyPI) runs in"),
];

fn installed(sh: &Shell, package: &str) -> bool {
    let format = "-f=${Status}";
    let status = cmd!(sh, "dpkg-query -W {format} {package}").quiet().ignore_stderr().read();
    status.is_ok_and(|s| s.contains("install ok installed"))
}

/// Installs whatever of [`PACKAGES`] is missing (one `apt-get update`, one `apt-get install`).
pub fn ensure() -> Result<()> {
    let sh = Shell::new()?;
    let missing: Vec<&str> = PACKAGES.iter().map(|(p, _)| *p).filter(|p| !installed(&sh, p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("==> apt-get install {}", missing.join(" "));
    let apt = |args: &[&str]| -> Result<()> {
        cmd!(sh, "apt-get {args...}")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()
            .context("apt-get failed (the project's setup needs root and Debian)")
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}
