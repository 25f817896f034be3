//! The reverse proxy's configuration: the `nginx.conf` that routes `/p/<namespace>/<backend>/...`
//! to each backend's Service.
//!
//! `cargo xtask manifests` puts [`nginx_conf`]`(&ProxyConfig::default())` into the
//! `spawner-proxy` ConfigMap; the test below runs the same text in a real nginx. Routing rules:
//!
//! - `/p/<ns>/<name>/<rest>?<query>` → `http://<name>.<ns>.svc.<cluster-domain>:80/<rest>?<query>`,
//!   the path and query passed byte for byte (no re-encoding, so `%2F` survives), HTTP/1.1 with
//!   WebSocket upgrades, no buffering either way (SSE, long polls and uploads stream), 1 h read
//!   and send timeouts, `X-Forwarded-For/-Proto/-Host` and `X-Forwarded-Prefix: /p/<ns>/<name>`.
//! - `/p/<ns>/<name>` → 301 to `/p/<ns>/<name>/`, query kept, relative `Location` (the proxy
//!   does not know the port its NodePort or Ingress is reached on).
//! - A backend whose Service name does not resolve → 404 `no such backend`; one that resolves but
//!   refuses connections (its pod is gone) → 502. A backend that exists but is not ready yet
//!   answers 503 itself, from its sidecar: nginx passes backend responses through untouched.
//! - `/healthz` → 200; every other path → 404.
//!
//! The names are resolved per request through `resolver` with a short `valid=`, so a backend is
//! reachable as soon as its Service exists and a deleted one stops being routed within seconds.
//! nginx runs as non-root on a read-only root filesystem: the pid file, temp paths and logs stay
//! under [`ProxyConfig::runtime_dir`] and stdout/stderr.

use std::fmt::Write as _;

/// Port nginx listens on inside its pod.
pub const LISTEN_PORT: u16 = 8080;
/// Prefix of every backend path.
pub const PATH_PREFIX: &str = "/p";
/// Arguments to start nginx with: the config file is mounted from the ConfigMap, and `-e stderr`
/// keeps nginx from opening its compiled-in error log on the read-only root filesystem before it
/// has read the config.
pub const NGINX_ARGS: &[&str] = &["-e", "stderr", "-c", "/etc/spawner-proxy/nginx.conf"];
/// Where the ConfigMap is mounted and the key that holds the config.
pub const CONFIG_DIR: &str = "/etc/spawner-proxy";
pub const CONFIG_KEY: &str = "nginx.conf";

/// What varies between the cluster and a test on loopback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Port to listen on.
    pub listen_port: u16,
    /// DNS server for backend names, as nginx's `resolver` takes it (`host` or `host:port`).
    pub resolver: String,
    /// Seconds a resolved backend address is reused.
    pub resolver_valid_seconds: u32,
    /// Cluster DNS domain: backends are `<name>.<namespace>.svc.<cluster_domain>`.
    pub cluster_domain: String,
    /// Port of the backends' Services.
    pub backend_port: u16,
    /// Writable directory for the pid file and temp files.
    pub runtime_dir: String,
    /// Worker processes (`auto` = one per core).
    pub worker_processes: String,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen_port: LISTEN_PORT,
            // nginx resolves the resolver's own name once at start-up through the pod's
            // resolv.conf, so the cluster's DNS Service IP need not be known here.
            resolver: "kube-dns.kube-system.svc.cluster.local".into(),
            resolver_valid_seconds: 5,
            cluster_domain: "cluster.local".into(),
            backend_port: 80,
            runtime_dir: "/tmp".into(),
            worker_processes: "auto".into(),
        }
    }
}

/// A DNS-1123 label: what Service names and namespaces are made of.
const LABEL: &str = "[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?";

/// Renders `nginx.conf`.
pub fn nginx_conf(config: &ProxyConfig) -> String {
    let ProxyConfig {
        listen_port,
        resolver,
        resolver_valid_seconds,
        cluster_domain,
        backend_port,
        runtime_dir,
        worker_processes,
    } = config;
    let run = runtime_dir.trim_end_matches('/');
    let p = PATH_PREFIX;
    let mut out = String::new();
    // writeln! into a String cannot fail.
    let _ = write!(
        out,
        r#"# nginx.conf of spawner-proxy, rendered by spawner::proxy_config. Routes
# {p}/<namespace>/<backend>/... to http://<backend>.<namespace>.svc.{cluster_domain}:{backend_port}/...
daemon off;
worker_processes {worker_processes};
pid {run}/nginx.pid;
error_log stderr notice;

events {{
    worker_connections 8192;
}}

http {{
    # Read-only root filesystem: everything nginx writes lives under {run}.
    client_body_temp_path {run}/nginx-client-body;
    proxy_temp_path {run}/nginx-proxy;
    fastcgi_temp_path {run}/nginx-fastcgi;
    uwsgi_temp_path {run}/nginx-uwsgi;
    scgi_temp_path {run}/nginx-scgi;

    # The path only: queries carry access tokens (`?token=`), which must not reach the logs.
    log_format spawner escape=json '{{"time":"$time_iso8601","remote":"$remote_addr",'
        '"method":"$request_method","path":"$uri","status":$status,'
        '"bytes":$body_bytes_sent,"duration":$request_time,"upstream":"$upstream_addr",'
        '"upstreamStatus":"$upstream_status","userAgent":"$http_user_agent"}}';
    access_log /dev/stdout spawner;

    server_tokens off;
    default_type application/octet-stream;
    # Relative Location headers: nginx does not know the host and port clients reach it on.
    absolute_redirect off;
    # Uploads go to the backend as they arrive; the backend decides how big is too big.
    client_max_body_size 0;

    # Backend names are looked up per request, so new backends are routed at once and deleted
    # ones stop being routed after `valid`.
    resolver {resolver} valid={resolver_valid_seconds}s ipv6=off;
    resolver_timeout 5s;

    # WebSocket upgrades pass through; other requests close the upstream connection (there is
    # no upstream keep-alive pool when the upstream is a variable).
    map $http_upgrade $spawner_connection {{
        default upgrade;
        ''      close;
    }}

    # Keep the scheme a TLS-terminating load balancer in front of us saw.
    map $http_x_forwarded_proto $spawner_forwarded_proto {{
        default $http_x_forwarded_proto;
        ''      $scheme;
    }}

    # The path after {p}/<namespace>/<backend>, with the query, exactly as the client sent it.
    map $request_uri $spawner_rest {{
        "~^{p}/[^/?]+/[^/?]+(?<rest>/.*)$" $rest;
        default "";
    }}

    server {{
        listen {listen_port} default_server;
        server_name _;

        location = /healthz {{
            access_log off;
            default_type text/plain;
            return 200 "ok\n";
        }}

        # {p}/<namespace>/<backend> without the slash: relative URLs in the backend's pages
        # resolve against the directory, so send the browser there first.
        location ~ "^{p}/(?<spawner_ns>{LABEL})/(?<spawner_backend>{LABEL})$" {{
            return 301 {p}/$spawner_ns/$spawner_backend/$is_args$args;
        }}

        location ~ "^{p}/(?<spawner_ns>{LABEL})/(?<spawner_backend>{LABEL})/" {{
            # A raw path that does not match the normalized one (e.g. `//` or `..` tricks).
            if ($spawner_rest = "") {{
                return 400 "{{\"error\":\"bad backend path\"}}\n";
            }}
            set $spawner_prefix {p}/$spawner_ns/$spawner_backend;
            # nginx's error messages quote the request line, access token and all. The ones
            # this location produces (unknown name, refused connection) are in the access log
            # as 404/502 anyway, so only critical ones are logged here.
            error_log stderr crit;

            proxy_pass http://$spawner_backend.$spawner_ns.svc.{cluster_domain}:{backend_port}$spawner_rest;
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $spawner_connection;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $spawner_forwarded_proto;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Prefix $spawner_prefix;
            proxy_set_header X-Real-IP $remote_addr;

            # WebSockets, SSE and long polls: stream both ways and allow long silences.
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_cache off;
            # Connecting to a pod takes well under a millisecond; a connection that hangs (e.g. a
            # Service whose forwarding rules kube-proxy has not written yet, caught in conntrack)
            # should fail soon enough for the client to retry.
            proxy_connect_timeout 5s;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            proxy_redirect off;

            # nginx's own 502s and 504s (the backend's are passed through untouched): the name
            # did not resolve (no such Service), the Service refused the connection, or the
            # connection did not complete in time.
            error_page 502 = @spawner_unavailable;
            error_page 504 = @spawner_timeout;
        }}

        location @spawner_timeout {{
            default_type application/json;
            return 504 "{{\"error\":\"backend did not answer in time\",\"namespace\":\"$spawner_ns\",\"backend\":\"$spawner_backend\"}}\n";
        }}

        location @spawner_unavailable {{
            default_type application/json;
            # An unresolvable name leaves no upstream address behind.
            if ($upstream_addr = "") {{
                return 404 "{{\"error\":\"no such backend\",\"namespace\":\"$spawner_ns\",\"backend\":\"$spawner_backend\"}}\n";
            }}
            return 502 "{{\"error\":\"backend unavailable\",\"namespace\":\"$spawner_ns\",\"backend\":\"$spawner_backend\"}}\n";
        }}

        location / {{
            default_type application/json;
            return 404 "{{\"error\":\"not found\",\"hint\":\"backends are served under {p}/<namespace>/<name>/\"}}\n";
        }}
    }}
}}
"#
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // The routing itself is proven in a real nginx by tests/loopback/proxy.rs; these pin what the
    // cluster deployment relies on.
    #[test]
    fn the_default_config_fits_a_read_only_non_root_pod_in_the_cluster() {
        let conf = nginx_conf(&ProxyConfig::default());
        for line in [
            "daemon off;",
            "pid /tmp/nginx.pid;",
            "client_body_temp_path /tmp/nginx-client-body;",
            "proxy_temp_path /tmp/nginx-proxy;",
            "listen 8080 default_server;",
            "resolver kube-dns.kube-system.svc.cluster.local valid=5s ipv6=off;",
            "proxy_pass http://$spawner_backend.$spawner_ns.svc.cluster.local:80$spawner_rest;",
            "proxy_read_timeout 1h;",
            "proxy_buffering off;",
            "proxy_set_header X-Forwarded-Prefix $spawner_prefix;",
        ] {
            assert!(conf.contains(line), "missing {line:?} in:\n{conf}");
        }
        // Nothing may be written outside /tmp (logs go to stdout/stderr).
        assert!(!conf.contains("/var/"), "{conf}");
        // Tokens travel in queries; the access log must not record them.
        assert!(!conf.contains("$request_uri\","), "{conf}");
        assert!(!conf.contains("$args\""), "{conf}");
    }
}
