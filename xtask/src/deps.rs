//! Debian packages the local cluster, kind, the images, the benchmarks and the tests need,
//! installed when missing: the preparation every `cargo xtask` entry point shares.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// Package, and why it is needed.
pub const PACKAGES: &[(&str, &str)] = &[
    ("etcd-server", "the cluster's datastore"),
    ("containerd", "the node's container runtime"),
    ("runc", "the OCI runtime under containerd"),
    ("containernetworking-plugins", "CNI bridge, host-local, portmap, loopback"),
    ("iptables", "kube-proxy and CNI rules"),
    ("conntrack", "kube-proxy"),
    ("openssl", "cluster certificates"),
    ("curl", "the cluster's health checks"),
    ("nginx", "the reverse proxy image and the sidecar benchmark"),
    ("haproxy", "the sidecar benchmark's reference"),
    ("wrk", "HTTP load for the benchmarks"),
    ("chromium", "the browser test"),
    ("docker.io", "the Docker engine kind runs on, where none runs"),
    ("debootstrap", "the root filesystem of the kind node image"),
    ("ipset", "kube-router's NetworkPolicy enforcement in the kind node image"),
];

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs whatever of [`PACKAGES`] is missing (one `apt-get update`, one `apt-get install`).
pub fn ensure() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().map(|(p, _)| *p).filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("==> apt-get install {}", missing.join(" "));
    let apt = |args: &[&str]| -> Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get (the local cluster needs root and Debian)")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}
