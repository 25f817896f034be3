//! The reverse proxy's configuration: the `nginx.conf` that routes `/p/<namespace>/<backend>/...`
//! to each backend's pod, at the address `spawner-router` gives it.
//!
//! `cargo xtask manifests` puts [`nginx_conf`]`(&ProxyConfig::default())` into the
//! `spawner-proxy` ConfigMap; tests/loopback/proxy.rs runs the same text in a real nginx with a
//! real router. Routing rules:
//!
//! - `/p/<ns>/<name>/<rest>?<query>` → `http://<podIP>:<podPort>/<rest>?<query>`, the address
//!   from the router (an `auth_request` subrequest to `GET /route/<ns>/<name>`, which holds a
//!   backend that is still starting until it is Ready). The path and query pass byte for byte
//!   (no re-encoding, so `%2F` survives), HTTP/1.1 with WebSocket upgrades, no buffering either
//!   way (SSE, long polls and uploads stream), 1 h read and send timeouts,
//!   `X-Forwarded-For/-Proto/-Host` and `X-Forwarded-Prefix: /p/<ns>/<name>`.
//! - The router refused (no such backend, Failed, being deleted, not Ready in time) → its JSON
//!   error from `GET /explain/<ns>/<name>`: 404, 502 or 504. The router down → 503 JSON. The
//!   pod gone between lookup and connect → 502 JSON; no answer in time → 504 JSON. A backend's
//!   own responses pass through untouched.
//! - `/p/<ns>/<name>` → 301 to `/p/<ns>/<name>/`, query kept, relative `Location` (the proxy
//!   does not know the port its NodePort or Ingress is reached on).
//! - `/healthz` → 200; every other path → 404.
//!
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
/// Port the router answers nginx's lookups on, on the pod's loopback.
pub const ROUTER_PORT: u16 = 8082;
/// Where the ConfigMap is mounted and the key that holds the config.
pub const CONFIG_DIR: &str = "/etc/spawner-proxy";
pub const CONFIG_KEY: &str = "nginx.conf";

/// What varies between the cluster and a test on loopback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Port to listen on.
    pub listen_port: u16,
    /// Where `spawner-router` answers route lookups (`host:port`).
    pub router_addr: String,
    /// The router's hold cap in seconds: nginx waits a little longer for a lookup.
    pub hold_seconds: u64,
    /// Writable directory for the pid file and temp files.
    pub runtime_dir: String,
    /// Worker processes (`auto` = one per core).
    pub worker_processes: String,
    /// Where `spawner-api` answers (`host:port`); `None`: no `/api/`.
    pub api_addr: Option<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen_port: LISTEN_PORT,
            // The router is a container of the same pod.
            router_addr: format!("127.0.0.1:{ROUTER_PORT}"),
            hold_seconds: crate::router::Config::default().hold_cap.as_secs(),
            runtime_dir: "/tmp".into(),
            worker_processes: "auto".into(),
            // Its Service, resolved when nginx starts (config/default creates both at once).
            api_addr: Some(format!("{}.{}.svc:80", crate::names::API, crate::names::SYSTEM_NAMESPACE)),
        }
    }
}

/// A DNS-1123 label: what Service names and namespaces are made of.
const LABEL: &str = "[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?";

/// Renders `nginx.conf`.
pub fn nginx_conf(config: &ProxyConfig) -> String {
    let ProxyConfig { listen_port, router_addr, hold_seconds, runtime_dir, worker_processes, api_addr } = config;
    let (api_upstream, api_location) = match api_addr {
        Some(addr) => (
            format!(
                r#"
    # spawner-api: the HTTP API for web applications.
    upstream spawner_api {{
        server {addr};
        keepalive 16;
    }}
"#
            ),
            r#"
        # The API. Keys travel in the Authorization header, which the access log leaves out.
        location /api/ {
            proxy_pass http://spawner_api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $spawner_forwarded_proto;
            proxy_set_header X-Forwarded-Host $http_host;
            # Status streams: pass events on as they come, allow long quiet spells.
            proxy_buffering off;
            proxy_read_timeout 1h;
            # The API answers 413 itself (as JSON) past its own limit; nginx past this one.
            client_max_body_size 1m;
            error_page 413 = @spawner_api_too_large;
            error_page 502 503 504 = @spawner_api_down;
        }

        location @spawner_api_too_large {
            default_type application/json;
            return 413 "{\"error\":\"payload_too_large\",\"message\":\"the body exceeds 1 MiB\"}\n";
        }

        location @spawner_api_down {
            default_type application/json;
            return 503 "{\"error\":\"unavailable\",\"message\":\"the Spawner API is not reachable; retry shortly\"}\n";
        }
"#
            .to_string(),
        ),
        None => (String::new(), String::new()),
    };
    let run = runtime_dir.trim_end_matches('/');
    let p = PATH_PREFIX;
    // A held lookup ends at the router's cap; nginx gives it a little longer to say so.
    let lookup_timeout = hold_seconds + 10;
    let mut out = String::new();
    // writeln! into a String cannot fail.
    let _ = write!(
        out,
        r#"# nginx.conf of spawner-proxy, rendered by spawner::proxy_config. Routes
# {p}/<namespace>/<backend>/... to the backend's pod, at the address spawner-router gives.
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

    # spawner-router, beside nginx in this pod: where each backend is, per request.
    upstream spawner_router {{
        server {router_addr};
        keepalive 16;
    }}
{api_upstream}
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

            # Where the backend's pod is. The router holds the lookup while the backend starts,
            # so a request sent before Ready is answered once it is, and a Ready backend is
            # routable at once (no Service rules to wait for).
            auth_request /_spawner/route;
            auth_request_set $spawner_upstream $upstream_http_x_spawner_upstream;

            proxy_pass http://$spawner_upstream$spawner_rest;
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
            # Connecting to a Ready pod takes well under a millisecond; one that hangs has gone.
            proxy_connect_timeout 5s;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
            proxy_redirect off;

            # nginx's own errors only (a backend's pass through untouched): the router refused
            # (403), the router is unreachable (500), the pod refused the connection (502) or
            # did not complete it in time (504).
            error_page 403 = @spawner_refused;
            error_page 500 = @spawner_router_down;
            error_page 502 = @spawner_unavailable;
            error_page 504 = @spawner_timeout;
        }}

        location = /_spawner/route {{
            internal;
            proxy_pass http://spawner_router/route/$spawner_ns/$spawner_backend;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout {lookup_timeout}s;
        }}

        # Why the router refused, in its words: 404 no such backend, 502 failed or shutting
        # down, 504 not Ready in time — JSON with the backend's reason and message.
        location @spawner_refused {{
            proxy_pass http://spawner_router/explain/$spawner_ns/$spawner_backend;
            proxy_method GET;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}

        location @spawner_router_down {{
            default_type application/json;
            return 503 "{{\"error\":\"routing unavailable\",\"namespace\":\"$spawner_ns\",\"backend\":\"$spawner_backend\"}}\n";
        }}

        location @spawner_timeout {{
            default_type application/json;
            return 504 "{{\"error\":\"backend did not answer in time\",\"namespace\":\"$spawner_ns\",\"backend\":\"$spawner_backend\"}}\n";
        }}

        location @spawner_unavailable {{
            default_type application/json;
            return 502 "{{\"error\":\"backend unavailable\",\"namespace\":\"$spawner_ns\",\"backend\":\"$spawner_backend\"}}\n";
        }}

{api_location}
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
            "server 127.0.0.1:8082;",
            "auth_request /_spawner/route;",
            "proxy_pass http://$spawner_upstream$spawner_rest;",
            "proxy_read_timeout 70s;",
            "proxy_read_timeout 1h;",
            "proxy_buffering off;",
            "proxy_set_header X-Forwarded-Prefix $spawner_prefix;",
            "server spawner-api.spawner-system.svc:80;",
            "location /api/ {",
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
