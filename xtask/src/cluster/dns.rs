//! CoreDNS as a Deployment in kube-system (Service `kube-dns` at 10.96.0.10), from the locally
//! built image. It serves cluster.local only: no `forward`, so nothing leaves the machine.

use std::io::Write;
use std::net::UdpSocket;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::build::{COREDNS_IMAGE, Images};
use super::{DNS_SERVICE_IP, Layout, api_get, kubectl, wait_for};

fn manifests() -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: coredns
  namespace: kube-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:coredns
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: system:coredns
subjects:
- kind: ServiceAccount
  name: coredns
  namespace: kube-system
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: coredns
  namespace: kube-system
data:
  Corefile: |
    .:53 {{
        errors
        health :8080
        ready :8181
        kubernetes cluster.local in-addr.arpa ip6.arpa {{
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
            ttl 30
        }}
        cache 30
        loadbalance
    }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
spec:
  replicas: 1
  selector:
    matchLabels:
      k8s-app: kube-dns
  template:
    metadata:
      labels:
        k8s-app: kube-dns
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      tolerations:
      - operator: Exists
      containers:
      - name: coredns
        image: {COREDNS_IMAGE}
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        ports:
        - {{name: dns, containerPort: 53, protocol: UDP}}
        - {{name: dns-tcp, containerPort: 53, protocol: TCP}}
        resources:
          requests: {{cpu: 50m, memory: 50Mi}}
          limits: {{memory: 170Mi}}
        readinessProbe:
          httpGet: {{path: /ready, port: 8181}}
          periodSeconds: 2
        livenessProbe:
          httpGet: {{path: /health, port: 8080}}
          initialDelaySeconds: 10
        volumeMounts:
        - {{name: config, mountPath: /etc/coredns, readOnly: true}}
      volumes:
      - name: config
        configMap:
          name: coredns
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels:
    k8s-app: kube-dns
spec:
  clusterIP: {DNS_SERVICE_IP}
  selector:
    k8s-app: kube-dns
  ports:
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
"#
    )
}

pub fn ensure(layout: &Layout, _images: &Images) -> Result<()> {
    let mut child = kubectl(layout)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl (is it installed?)")?;
    child.stdin.take().expect("piped").write_all(manifests().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("kubectl apply of CoreDNS failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    wait_for(layout, "kubelet", "CoreDNS pod ready", Duration::from_secs(120), || {
        let body = api_get(layout, "/apis/apps/v1/namespaces/kube-system/deployments/coredns")?;
        let d: serde_json::Value = serde_json::from_str(&body)?;
        Ok(d["status"]["readyReplicas"].as_u64().unwrap_or(0) >= 1)
    })?;
    wait_for(
        layout,
        "kube-proxy",
        "DNS answer for kubernetes.default.svc.cluster.local",
        Duration::from_secs(60),
        || query_a(DNS_SERVICE_IP, "kubernetes.default.svc.cluster.local").map(|ips| !ips.is_empty()),
    )
}

/// One DNS A query over UDP; returns the addresses of the answer.
pub fn query_a(server: &str, name: &str) -> Result<Vec<std::net::Ipv4Addr>> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let id: u16 = (std::process::id() as u16) ^ 0x5a5a;
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send_to(&q, (server, 53))?;
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf)?;
    let r = &buf[..n];
    if n < 12 || r[0..2] != id.to_be_bytes() {
        bail!("bad DNS reply");
    }
    let rcode = r[3] & 0x0f;
    if rcode != 0 {
        bail!("DNS rcode {rcode}");
    }
    let ancount = u16::from_be_bytes([r[6], r[7]]) as usize;
    // Skip the question, then walk the answers.
    let mut i = q.len();
    let mut ips = Vec::new();
    for _ in 0..ancount {
        // name: pointer (2 bytes) or labels
        while i < n {
            if r[i] & 0xc0 == 0xc0 {
                i += 2;
                break;
            } else if r[i] == 0 {
                i += 1;
                break;
            } else {
                i += r[i] as usize + 1;
            }
        }
        if i + 10 > n {
            break;
        }
        let typ = u16::from_be_bytes([r[i], r[i + 1]]);
        let len = u16::from_be_bytes([r[i + 8], r[i + 9]]) as usize;
        i += 10;
        if typ == 1 && len == 4 && i + 4 <= n {
            ips.push(std::net::Ipv4Addr::new(r[i], r[i + 1], r[i + 2], r[i + 3]));
        }
        i += len;
    }
    Ok(ips)
}
