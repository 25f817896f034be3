//! Certificates (one CA signs all, EC P-256, made with `rcgen`), the service-account key pair
//! and the kubeconfigs of the components and of the admin. Existing files are kept, so `up`
//! after `up` reuses them.

use std::path::Path;

use anyhow::{Context, Result};
use base64::prelude::{BASE64_STANDARD, Engine as _};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};

use super::{API_PORT, KUBERNETES_SERVICE_IP, Layout, NODE_IP, NODE_NAME, write_file};

/// How long every certificate is valid: a local cluster is remade long before.
const VALIDITY_DAYS: i64 = 3650;

struct Leaf {
    name: &'static str,
    ca: &'static str,
    cn: String,
    /// One organization at most: rcgen's subject holds one value per attribute type.
    org: Option<&'static str>,
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
            make_ca(&pki, ca, cn).with_context(|| format!("making the {ca} certificate"))?;
        }
    }
    if !pki.join("sa.pub").exists() {
        let key = new_key(&pki.join("sa.key"))?;
        write_file(&pki.join("sa.pub"), key.public_key_pem())?;
    }
    let localhost = || vec!["localhost".to_string()];
    let leaves = [
        Leaf {
            name: "apiserver",
            ca: "ca",
            cn: "kube-apiserver".into(),
            org: None,
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
            org: Some("system:masters"),
            dns: vec![],
            ips: vec![],
            server: false,
        },
        Leaf {
            name: "admin",
            ca: "ca",
            cn: "spawner-admin".into(),
            org: Some("system:masters"),
            dns: vec![],
            ips: vec![],
            server: false,
        },
        Leaf {
            name: "controller-manager",
            ca: "ca",
            cn: "system:kube-controller-manager".into(),
            org: None,
            dns: localhost(),
            ips: vec!["127.0.0.1".into()],
            server: true,
        },
        Leaf {
            name: "scheduler",
            ca: "ca",
            cn: "system:kube-scheduler".into(),
            org: None,
            dns: localhost(),
            ips: vec!["127.0.0.1".into()],
            server: true,
        },
        Leaf {
            name: "kubelet",
            ca: "ca",
            cn: format!("system:node:{NODE_NAME}"),
            org: Some("system:nodes"),
            dns: vec![NODE_NAME.into(), "localhost".into()],
            ips: vec!["127.0.0.1".into(), NODE_IP.into()],
            server: true,
        },
        Leaf {
            name: "kube-proxy",
            ca: "ca",
            cn: "system:kube-proxy".into(),
            org: None,
            dns: vec![],
            ips: vec![],
            server: false,
        },
        Leaf {
            name: "front-proxy-client",
            ca: "front-proxy-ca",
            cn: "front-proxy-client".into(),
            org: None,
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

/// A fresh P-256 key, written as PKCS#8 PEM readable by its owner only.
fn new_key(path: &Path) -> Result<KeyPair> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating an EC P-256 key")?;
    write_private(path, key.serialize_pem())?;
    Ok(key)
}

/// Writes `contents` with mode 0600 from the start, so the key is never readable by others.
fn write_private(path: &Path, contents: String) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut file, contents.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    // The mode above only applies to a file this call created.
    set_mode(path, 0o600)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))
}

/// Subject, validity and the key identifiers every certificate here shares.
fn params(cn: &str, org: Option<&str>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    if let Some(org) = org {
        params.distinguished_name.push(DnType::OrganizationName, org);
    }
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
    // RFC 5280 wants the issuer's key identifier in every certificate; path builders use it.
    params.use_authority_key_identifier_extension = true;
    params
}

fn make_ca(pki: &Path, ca: &str, cn: &str) -> Result<()> {
    let key = new_key(&pki.join(format!("{ca}.key")))?;
    let mut params = params(cn, None);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key)?;
    write_file(&pki.join(format!("{ca}.crt")), cert.pem())
}

/// The CA as found on disk: its subject and key identifier come from its certificate, so leaves
/// issued now chain to a CA made by an earlier version of this code as well.
fn load_ca(pki: &Path, ca: &str) -> Result<Issuer<'static, KeyPair>> {
    let read = |file: String| {
        let path = pki.join(file);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let key = KeyPair::from_pem(&read(format!("{ca}.key"))?).with_context(|| format!("parsing {ca}.key"))?;
    Issuer::from_ca_cert_pem(&read(format!("{ca}.crt"))?, key).with_context(|| format!("parsing {ca}.crt"))
}

fn issue(pki: &Path, leaf: &Leaf) -> Result<()> {
    let issuer = load_ca(pki, leaf.ca)?;
    let key = new_key(&pki.join(format!("{}.key", leaf.name)))?;
    let mut params = params(&leaf.cn, leaf.org);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = if leaf.server {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    for dns in &leaf.dns {
        params.subject_alt_names.push(SanType::DnsName(dns.as_str().try_into()?));
    }
    for ip in &leaf.ips {
        params.subject_alt_names.push(SanType::IpAddress(ip.parse().with_context(|| format!("IP {ip}"))?));
    }
    let cert = params.signed_by(&key, &issuer)?;
    write_file(&pki.join(format!("{}.crt", leaf.name)), cert.pem())
}

/// A kubeconfig with the CA and the client certificate embedded (it can be copied elsewhere).
fn write_kubeconfig(path: &Path, pki: &Path, user: &str, leaf: &str) -> Result<()> {
    let base64 = |file: String| -> Result<String> {
        let path = pki.join(file);
        let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(BASE64_STANDARD.encode(data))
    };
    let ca = base64("ca.crt".into())?;
    let crt = base64(format!("{leaf}.crt"))?;
    let key = base64(format!("{leaf}.key"))?;
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

#[cfg(test)]
mod tests {
    use base64::prelude::{BASE64_STANDARD, Engine as _};
    use x509_parser::pem::parse_x509_pem;

    /// Every certificate is signed by its CA and a second run keeps what the first one made.
    #[test]
    fn every_certificate_chains_to_its_ca_and_reruns_keep_files() {
        let root = std::env::temp_dir().join(format!("spawner-pki-test-{}", std::process::id()));
        let layout = super::Layout { root: root.clone() };
        super::ensure(&layout).unwrap();
        let pki = layout.pki();
        let pem = |name: &str| parse_x509_pem(&std::fs::read(pki.join(format!("{name}.crt"))).unwrap()).unwrap().1;
        let (ca, front_proxy_ca) = (pem("ca"), pem("front-proxy-ca"));
        let (ca, front_proxy_ca) = (ca.parse_x509().unwrap(), front_proxy_ca.parse_x509().unwrap());
        for (name, issuer) in [
            ("ca", &ca),
            ("apiserver", &ca),
            ("apiserver-kubelet-client", &ca),
            ("admin", &ca),
            ("controller-manager", &ca),
            ("scheduler", &ca),
            ("kubelet", &ca),
            ("kube-proxy", &ca),
            ("front-proxy-ca", &front_proxy_ca),
            ("front-proxy-client", &front_proxy_ca),
        ] {
            let leaf = pem(name);
            let cert = leaf.parse_x509().unwrap();
            assert_eq!(cert.issuer(), issuer.subject(), "{name}");
            cert.verify_signature(Some(issuer.public_key())).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let admin_crt = BASE64_STANDARD.encode(std::fs::read(pki.join("admin.crt")).unwrap());
        assert!(std::fs::read_to_string(layout.kubeconfig("admin")).unwrap().contains(&admin_crt));
        let ca_before = std::fs::read(pki.join("ca.crt")).unwrap();
        let admin_before = std::fs::read(layout.kubeconfig("admin")).unwrap();
        super::ensure(&layout).unwrap();
        assert_eq!(std::fs::read(pki.join("ca.crt")).unwrap(), ca_before);
        assert_eq!(std::fs::read(layout.kubeconfig("admin")).unwrap(), admin_before);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
