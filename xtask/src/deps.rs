//! Debian packages the local cluster, kind, the images, the benchmarks and the tests need,
//! installed when missing: the preparation every `cargo xtask` entry point shares.

use anyhow::{Context, Result};
use xshell::{Shell, cmd};

/// What an entry point runs, and so which packages it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A cluster, the images, kind: `deploy`, `cluster up`, `images`, `docker up`, `kind`.
    Cluster,
    /// That, and the benchmarks' references and the tests' tools: `test`, `bench`, `api-suites`.
    Tests,
}

/// Package, who needs it, and why.
pub const PACKAGES: &[(&str, Need, &str)] = &[
    ("containerd", Need::Cluster, "the node's container runtime"),
    ("runc", Need::Cluster, "the OCI runtime under containerd"),
    ("containernetworking-plugins", Need::Cluster, "CNI bridge, host-local, portmap, loopback"),
    ("iptables", Need::Cluster, "kube-proxy and CNI rules"),
    ("conntrack", Need::Cluster, "kube-proxy"),
    ("curl", Need::Cluster, "the cluster's health checks"),
    ("nginx", Need::Cluster, "the reverse proxy image and the sidecar benchmark"),
    ("docker.io", Need::Cluster, "the Docker engine kind runs on, where none runs"),
    ("debootstrap", Need::Cluster, "the root filesystem of the kind node image"),
    ("ipset", Need::Cluster, "kube-router's NetworkPolicy enforcement in the kind node image"),
    ("haproxy", Need::Tests, "the sidecar benchmark's reference"),
    ("wrk", Need::Tests, "HTTP load for the benchmarks"),
    ("chromium", Need::Tests, "the browser test"),
    ("python3-venv", Need::Tests, "the virtualenv schemathesis (the API's fuzzing, from PyPI) runs in"),
];

/// The packages `need` asks for: a deploy does without the tests' browser and load tools.
fn wanted(need: Need) -> impl Iterator<Item = &'static str> {
    PACKAGES.iter().filter(move |(_, who, _)| need == Need::Tests || *who == Need::Cluster).map(|(p, _, _)| *p)
}

fn installed(sh: &Shell, package: &str) -> bool {
    let format = "-f=${Status}";
    let status = cmd!(sh, "dpkg-query -W {format} {package}").quiet().ignore_stderr().read();
    status.is_ok_and(|s| s.contains("install ok installed"))
}

/// Installs whatever of the [`PACKAGES`] `need` asks for is missing (one `apt-get update`, one
/// `apt-get install`).
pub fn ensure(need: Need) -> Result<()> {
    let sh = Shell::new()?;
    let missing: Vec<&str> = wanted(need).filter(|p| !installed(&sh, p)).collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deploy_installs_the_cluster_and_kind_but_not_the_tests_tools() {
        let deploy: Vec<&str> = wanted(Need::Cluster).collect();
        for needed in ["containerd", "nginx", "docker.io", "debootstrap"] {
            assert!(deploy.contains(&needed), "{needed} missing from {deploy:?}");
        }
        for not_needed in ["chromium", "haproxy", "wrk", "python3-venv"] {
            assert!(!deploy.contains(&not_needed), "{not_needed} in {deploy:?}");
        }
        assert_eq!(wanted(Need::Tests).count(), PACKAGES.len(), "the tests need every package");
    }
}
