//! Certificates (one CA signs all, EC P-256, made with the `openssl` CLI), the service-account
//! key pair and the kubeconfigs of the components and of the admin. Existing files are kept, so
//! `up` after `up` reuses them.

use std::path::Path;

use anyhow::{Context, Result};

use super::{API_PORT, KUBERNETES_SERVICE_IP, Layout, NODE_IP, NODE_NAME, cmd, run, write_file};

struct Leaf {
    name: &'static str,
    ca: &'static str,
    cn: String,
    orgs: &'static [&'static str],
    dns: Vec<String>,
    ips: Vec<String>,
    server: bool,
}

pub fn ensure(layout: &Layout) -> Result<()> {
    let pki = layout.pki();
    std::fs::create_dir_all(&pki)?;
    // "ca" signs everything; "front-proxy-ca" only the API server's aggregation-layer client.
    for (ca, cn) in [("ca", "spawner-local-ca"), ("front-proxy-ca", "spawner-local-front-proxy-ca")] {
        if !pki.join(format!("{ca}.crt")).exists() {
            key(&pki.join(format!("{ca}.key")))?;
            run(cmd("openssl")
                .args(["req", "-x509", "-new", "-sha256", "-days", "3650", "-subj", &format!("/CN={cn}")])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"])
                .arg("-key")
                .arg(pki.join(format!("{ca}.key")))
                .arg("-out")
                .arg(pki.join(format!("{ca}.crt"))))?;
        }
    }
    if !pki.join("sa.pub").exists() {
        key(&pki.join("sa.key"))?;
        run(cmd("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(pki.join("sa.key"))
            .arg("-out")
            .arg(pki.join("sa.pub")))?;
    }
    let localhost = || vec!["localhost".to_string()];
    let leaves = [
        Leaf {
            name: "apiserver",
            ca: "ca",
            cn: "kube-apiserver".into(),
            orgs: &[],
            dns: [
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "localhost",
            ]
            .map(String::from)
            .to_vec(),
            ips: vec!["127.0.0.1".into(), KUBERNETES_SERVICE_IP.into(), NODE_IP.into()],
            server: true,
        },
        Leaf {
            name: "apiserver-kubelet-client",
            ca: "ca",
            cn: "kube-apiserver-kubelet-client".into(),
            orgs: &["system:masters"],
            dns: vec![],
            ips: vec![],
            server: false,
        },
        Leaf {
            name: "admin",
            ca: "ca",
            cn: "spawner-admin".into(),
            orgs: &["system:masters"],
            dns: vec![],
            ips: vec![],
            server: false,
        },
        Leaf {
            name: "controller-manager",
            ca: "ca",
            cn: "system:kube-controller-manager".into(),
            orgs: &[],
            dns: localhost(),
            ips: vec!["127.0.0.1".into()],
            server: true,
        },
        Leaf {
            name: "scheduler",
            ca: "ca",
            cn: "system:kube-scheduler".into(),
            orgs: &[],
            dns: localhost(),
            ips: vec!["127.0.0.1".into()],
            server: true,
        },
        Leaf {
            name: "kubelet",
            ca: "ca",
            cn: format!("system:node:{NODE_NAME}"),
            orgs: &["system:nodes"],
            dns: vec![NODE_NAME.into(), "localhost".into()],
            ips: vec!["127.0.0.1".into(), NODE_IP.into()],
            server: true,
        },
        Leaf {
            name: "kube-proxy",
            ca: "ca",
            cn: "system:kube-proxy".into(),
            orgs: &[],
            dns: vec![],
            ips: vec![],
            server: false,
        },
        Leaf {
            name: "front-proxy-client",
            ca: "front-proxy-ca",
            cn: "front-proxy-client".into(),
            orgs: &[],
            dns: vec![],
            ips: vec![],
            server: false,
        },
    ];
    for leaf in &leaves {
        if !pki.join(format!("{}.crt", leaf.name)).exists() {
            issue(&pki, leaf).with_context(|| format!("issuing the {} certificate", leaf.name))?;
        }
    }
    for (user, leaf) in [
        ("admin", "admin"),
        ("controller-manager", "controller-manager"),
        ("scheduler", "scheduler"),
        ("kubelet", "kubelet"),
        ("kube-proxy", "kube-proxy"),
    ] {
        let path = layout.kubeconfig(user);
        if !path.exists() {
            write_kubeconfig(&path, &pki, user, leaf)?;
        }
    }
    Ok(())
}

fn key(path: &Path) -> Result<()> {
    run(cmd("openssl").args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"]).arg(path))?;
    set_mode(path, 0o600)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

fn issue(pki: &Path, leaf: &Leaf) -> Result<()> {
    let key_path = pki.join(format!("{}.key", leaf.name));
    let csr = pki.join(format!("{}.csr", leaf.name));
    let ext = pki.join(format!("{}.ext", leaf.name));
    key(&key_path)?;
    let mut subj = format!("/CN={}", leaf.cn);
    for o in leaf.orgs {
        subj += &format!("/O={o}");
    }
    run(cmd("openssl").args(["req", "-new", "-sha256", "-subj", &subj, "-key"]).arg(&key_path).arg("-out").arg(&csr))?;
    let mut text =
        String::from("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n");
    text += if leaf.server { "extendedKeyUsage=serverAuth,clientAuth\n" } else { "extendedKeyUsage=clientAuth\n" };
    let sans: Vec<String> =
        leaf.dns.iter().map(|d| format!("DNS:{d}")).chain(leaf.ips.iter().map(|i| format!("IP:{i}"))).collect();
    if !sans.is_empty() {
        text += &format!("subjectAltName={}\n", sans.join(","));
    }
    std::fs::write(&ext, text)?;
    run(cmd("openssl")
        .args(["x509", "-req", "-sha256", "-days", "3650", "-CAcreateserial", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(pki.join(format!("{}.crt", leaf.ca)))
        .arg("-CAkey")
        .arg(pki.join(format!("{}.key", leaf.ca)))
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(pki.join(format!("{}.crt", leaf.name))))?;
    let _ = std::fs::remove_file(&csr);
    let _ = std::fs::remove_file(&ext);
    Ok(())
}

/// A kubeconfig with the CA and the client certificate embedded (it can be copied elsewhere).
fn write_kubeconfig(path: &Path, pki: &Path, user: &str, leaf: &str) -> Result<()> {
    let ca = base64(&std::fs::read(pki.join("ca.crt"))?);
    let crt = base64(&std::fs::read(pki.join(format!("{leaf}.crt")))?);
    let key = base64(&std::fs::read(pki.join(format!("{leaf}.key")))?);
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: spawner-local
  cluster:
    server: https://127.0.0.1:{API_PORT}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {crt}
    client-key-data: {key}
contexts:
- name: spawner-local
  context:
    cluster: spawner-local
    user: {user}
current-context: spawner-local
"
    );
    write_file(path, text)?;
    set_mode(path, 0o600)
}

pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if chunk.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        for (input, want) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(super::base64(input.as_bytes()), want);
        }
    }
}
