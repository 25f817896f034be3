//! The sidecar's configuration: flags, each also read from a `SPAWNER_*` variable (the
//! controller sets the variables in the pod).

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

pub use crate::process::LogFormat;

/// WebSocket-aware reverse proxy in front of a session-lived backend's app.
#[derive(Clone, Debug, Parser)]
#[command(name = "spawner-sidecar", version)]
pub struct Config {
    /// Port the app listens on (on 127.0.0.1).
    #[arg(long, env = "SPAWNER_APP_PORT")]
    pub app_port: u16,
    /// Address the app listens on.
    #[arg(long, env = "SPAWNER_APP_HOST", default_value = "127.0.0.1")]
    pub app_host: IpAddr,
    /// Address the proxy and admin ports listen on.
    #[arg(long, env = "SPAWNER_LISTEN_ADDRESS", default_value = "0.0.0.0")]
    pub listen_address: IpAddr,
    /// Public port (the backend's Service targets it); 0 picks a free port.
    #[arg(long, env = "SPAWNER_PROXY_PORT", default_value_t = crate::names::SIDECAR_PROXY_PORT)]
    pub proxy_port: u16,
    /// Admin port: event stream, health, metrics; 0 picks a free port.
    #[arg(long, env = "SPAWNER_ADMIN_PORT", default_value_t = crate::names::SIDECAR_ADMIN_PORT)]
    pub admin_port: u16,
    /// File holding the backend's token; unset turns auth off.
    #[arg(long, env = "SPAWNER_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// A pool's warm pod: file holding the claim key. The public port answers 503 until the
    /// controller claims the pod (`POST /claim` on the admin port with this key), handing over
    /// the backend's token.
    #[arg(long, env = "SPAWNER_CLAIM_KEY_FILE", conflicts_with = "token_file")]
    pub claim_key_file: Option<PathBuf>,
    /// Seconds the app may take to start answering a request before the client gets 504.
    #[arg(long = "upstream-timeout", env = "SPAWNER_UPSTREAM_TIMEOUT", default_value_t = 60.0)]
    pub upstream_timeout_secs: f64,
    /// Seconds allowed to connect to the app before the client gets 502.
    #[arg(long = "connect-timeout", env = "SPAWNER_CONNECT_TIMEOUT", default_value_t = 5.0)]
    pub connect_timeout_secs: f64,
    /// Seconds a client may take to send a request's headers (bounds slowloris clients and idle
    /// keep-alive connections).
    #[arg(long = "header-read-timeout", env = "SPAWNER_HEADER_READ_TIMEOUT", default_value_t = 30.0)]
    pub header_read_timeout_secs: f64,
    /// Largest request head in bytes; larger ones get 431.
    #[arg(long, env = "SPAWNER_MAX_HEADER_BYTES", default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,
    /// Most header fields in a request; more get 431.
    #[arg(long, env = "SPAWNER_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long = "drain-timeout", env = "SPAWNER_DRAIN_TIMEOUT", default_value_t = 20.0)]
    pub drain_timeout_secs: f64,
    /// Seconds an upgraded stream gets to complete its close handshake on shutdown.
    #[arg(long = "close-timeout", env = "SPAWNER_CLOSE_TIMEOUT", default_value_t = 2.0)]
    pub close_timeout_secs: f64,
    /// Runtime threads: 1 runs everything on one thread (a pod usually has one core).
    #[arg(long, env = "SPAWNER_THREADS", default_value_t = 1)]
    pub threads: usize,
    #[arg(long, env = "SPAWNER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The session's settings, JSON (a cold backend's; a warm pod's come with the claim).
    #[arg(long, env = super::session::SESSION_ENV, value_parser = parse_session)]
    pub session: Option<super::session::Session>,
}

fn parse_session(s: &str) -> Result<super::session::Session, String> {
    serde_json::from_str(s).map_err(|e| format!("not a session: {e}"))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

impl Config {
    pub fn upstream_timeout(&self) -> Duration {
        secs(self.upstream_timeout_secs)
    }
    pub fn connect_timeout(&self) -> Duration {
        secs(self.connect_timeout_secs)
    }
    pub fn header_read_timeout(&self) -> Duration {
        secs(self.header_read_timeout_secs)
    }
    pub fn drain_timeout(&self) -> Duration {
        secs(self.drain_timeout_secs)
    }
    pub fn close_timeout(&self) -> Duration {
        secs(self.close_timeout_secs)
    }
}
