//! `cargo xtask bench sidecar`: the sidecar side by side with nginx and HAProxy on this machine.
//!
//! One run, all on loopback, in front of the same app (`spawner-testapp`, the sidecar tests'
//! app): direct to the app, through `spawner-sidecar`, through nginx and through HAProxy (Debian
//! packages, each configured as an equivalent single-worker reverse proxy with keep-alive to
//! the upstream, WebSocket-capable, no response buffering). For each it measures
//! - HTTP: `wrk` with small bodies over keep-alive connections: req/s, p50 and p99 latency
//!   (medians of interleaved 2-second rounds: the machine is shared, bursts hit all alike);
//! - WebSocket: sequential echo round trips of a 32-byte message on one connection: p50, p99;
//! - memory: the proxy's RSS (`VmRSS`, summed over its processes) idle, with 1,000 open idle
//!   WebSockets through it, and after a workout (those WebSockets, then a 64 MiB download and
//!   a 32 MiB upload through it, then 5 s quiet): what a pod keeps paying after a busy spell.
//!
//! and prints a table with each number's ratio to nginx. Not a test: numbers depend on the
//! machine; the issue's targets are printed next to them (throughput >= nginx, p99 added
//! latency <= nginx's, idle RSS <= 4 MiB, RSS with 1,000 WebSockets <= 24 MiB, RSS after the
//! workout <= nginx's).
//! Missing packages are installed with `apt-get install -y nginx haproxy wrk`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// Options of `cargo xtask bench sidecar`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Seconds of wrk load per target (in interleaved 2-second rounds).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 50)]
    pub connections: u32,
    /// WebSocket echo round trips per target.
    #[arg(long, default_value_t = 20_000)]
    pub round_trips: u32,
    /// Idle WebSockets held open for the memory measurement.
    #[arg(long, default_value_t = 1000)]
    pub websockets: usize,
    /// Use the release binaries already in target/ instead of building them first.
    #[arg(long)]
    pub no_build: bool,
}

impl Default for Args {
    fn default() -> Self {
        Self { duration: 10, connections: 50, round_trips: 20_000, websockets: 1000, no_build: false }
    }
}

const IDLE_RSS_TARGET_KIB: u64 = 4 * 1024;
const WS_RSS_TARGET_KIB: u64 = 24 * 1024;

pub fn run(args: &Args) -> Result<()> {
    ensure_tools(&["nginx", "haproxy", "wrk"])?;
    if !args.no_build {
        build_release()?;
    }
    let target = crate::target_dir();
    let sidecar_bin = crate::images::release_binary(crate::images::SIDECAR);
    let app_bin = target.join("release/examples/spawner-testapp");

    let work = std::env::temp_dir().join(format!("spawner-bench-sidecar-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;

    let (mut app, app_addr) = start_app(&app_bin)?;

    // All proxies run side by side (idle ones cost nothing), so the measurements below can be
    // interleaved and a burst of load from elsewhere on the machine hits them all alike.
    let mut sidecar = Proc::spawn("sidecar", Command::new(&sidecar_bin).args(sidecar_args(app_addr)))?;
    let banner = sidecar.first_line()?;
    let sidecar_addr = sidecar_addr(&banner)?;

    let (nginx_port, nginx_cmd) = nginx_command(&work, app_addr, "")?;
    let mut nginx = Proc::spawn("nginx", Command::new("nginx").args(nginx_cmd))?;
    let (haproxy_port, haproxy_cmd) = haproxy_command(&work, app_addr)?;
    let mut haproxy = Proc::spawn("haproxy", Command::new("haproxy").args(haproxy_cmd))?;

    let targets: Vec<(&'static str, SocketAddr, Option<Vec<u32>>)> = vec![
        ("direct", app_addr, None),
        ("spawner-sidecar", sidecar_addr, Some(vec![sidecar.pid()])),
        ("nginx", SocketAddr::from(([127, 0, 0, 1], nginx_port)), Some(process_tree(nginx.pid()))),
        ("haproxy", SocketAddr::from(([127, 0, 0, 1], haproxy_port)), Some(process_tree(haproxy.pid()))),
    ];
    let mut results: Vec<Measured> = Vec::new();
    for (name, addr, pids) in &targets {
        wait_http(*addr)?;
        results.push(Measured { name, rss_idle_kib: pids.as_deref().map(rss_kib), ..Measured::default() });
    }
    // HTTP: warm every target, then interleaved rounds; each figure is the median over rounds,
    // so a burst of load from elsewhere on the machine does not decide the comparison.
    for (_, addr, _) in &targets {
        wrk(*addr, 2, args.connections)?;
    }
    let rounds = (args.duration / 2).max(1);
    let mut http: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); targets.len()];
    for round in 1..=rounds {
        eprintln!("wrk round {round}/{rounds}: 2 s through each target");
        for (i, (_, addr, _)) in targets.iter().enumerate() {
            http[i].push(wrk(*addr, 2, args.connections)?);
        }
    }
    for (m, rounds) in results.iter_mut().zip(&http) {
        let median = |f: fn(&(f64, f64, f64)) -> f64| {
            let mut v: Vec<f64> = rounds.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        (m.req_per_s, m.p50_ms, m.p99_ms) = (median(|r| r.0), median(|r| r.1), median(|r| r.2));
    }
    // WebSocket round trips: interleaved rounds, samples pooled per target.
    eprintln!("WebSocket echo round trips");
    let mut sockets = targets.iter().map(|(_, addr, _)| ws_open(*addr)).collect::<Result<Vec<_>>>()?;
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut busy: Vec<Duration> = vec![Duration::ZERO; targets.len()];
    const ROUNDS: u32 = 10;
    for round in 0..=ROUNDS {
        for (i, ws) in sockets.iter_mut().enumerate() {
            // Round 0 warms up and is not recorded.
            let n = if round == 0 { 200 } else { args.round_trips / ROUNDS };
            let started = Instant::now();
            let lat = ws_round_trips(ws, n)?;
            if round > 0 {
                busy[i] += started.elapsed();
                samples[i].extend(lat);
            }
        }
    }
    drop(sockets);
    for ((m, mut s), busy) in results.iter_mut().zip(samples).zip(busy) {
        s.sort_by(f64::total_cmp);
        let pct = |p: f64| s[((s.len() as f64 * p) as usize).min(s.len() - 1)];
        (m.ws_p50_us, m.ws_p99_us, m.ws_per_s) = (pct(0.50), pct(0.99), s.len() as f64 / busy.as_secs_f64());
    }
    // Memory with idle WebSockets, one proxy at a time.
    for ((name, addr, pids), m) in targets.iter().zip(&mut results) {
        let Some(pids) = pids else { continue };
        eprintln!("{} idle WebSockets through {name}", args.websockets);
        let mut held = Vec::with_capacity(args.websockets);
        for _ in 0..args.websockets {
            held.push(ws_open(*addr)?);
        }
        // Prove they are all alive through the proxy, then let it settle before reading.
        for ws in held.iter_mut() {
            ws_echo(ws, b"ping")?;
        }
        std::thread::sleep(Duration::from_millis(500));
        m.rss_ws_kib = Some(rss_kib(pids));
        drop(held);
        // The rest of the workout: a large download and a large upload, then quiet. What a
        // proxy keeps after a busy spell is what a backend pod pays for the rest of its life.
        eprintln!("{name}: {WORKOUT_DOWNLOAD} B down, {WORKOUT_UPLOAD} B up, then {WORKOUT_QUIET:?} quiet");
        download(*addr, WORKOUT_DOWNLOAD)?;
        upload(*addr, WORKOUT_UPLOAD)?;
        std::thread::sleep(WORKOUT_QUIET);
        m.rss_after_work_kib = Some(rss_kib(pids));
    }
    sidecar.stop();
    nginx.stop();
    haproxy.stop();
    app.stop();
    let _ = std::fs::remove_dir_all(&work);

    print_table(&results, args);
    Ok(())
}

/// The sidecar in front of the app at `app`, on loopback, on ports the system picks; its banner
/// names them.
pub(super) fn sidecar_args(app: SocketAddr) -> Vec<String> {
    let port = app.port().to_string();
    ["--app-port", &port, "--listen-address", "127.0.0.1", "--proxy-port", "0", "--admin-port", "0"]
        .map(String::from)
        .to_vec()
}

/// The address in the sidecar's banner line.
pub(super) fn sidecar_addr(banner: &str) -> Result<SocketAddr> {
    Ok(banner.split_whitespace().find_map(|w| w.strip_prefix("proxy=")).context("sidecar banner")?.parse()?)
}

/// The sidecar as the image ships it, and the app in front of which it is measured. Two builds:
/// an example links the dev-dependencies, whose features built together with the sidecar would
/// be unified into it.
pub(super) fn build_release() -> Result<()> {
    eprintln!("building release spawner-sidecar and spawner-testapp");
    crate::images::build_release(&[crate::images::SIDECAR])?;
    let status = crate::cargo()
        .args(["build", "--release", "--example", "spawner-testapp"])
        .status()
        .context("running cargo build")?;
    ensure!(status.success(), "cargo build --release --example spawner-testapp failed");
    Ok(())
}

/// Installs the Debian packages of `tools` that are missing.
pub(super) fn ensure_tools(tools: &[&str]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            Command::new("sh").arg("-c").arg(format!("command -v {t}")).output().map_or(true, |o| !o.status.success())
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing {missing:?} (apt-get)");
    let status = Command::new("apt-get")
        .args(["install", "-y"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()?;
    ensure!(status.success(), "apt-get install -y {} failed (try `apt-get update` first)", missing.join(" "));
    Ok(())
}

/// The app (`spawner-testapp`) on a port the system picks, answering.
pub(super) fn start_app(bin: &Path) -> Result<(Proc, SocketAddr)> {
    let mut app = Proc::spawn("app", Command::new(bin).arg("0"))?;
    let addr: SocketAddr = app.first_line()?.strip_prefix("listening ").context("app banner")?.parse()?;
    wait_http(addr)?;
    Ok((app, addr))
}

/// nginx's port and arguments, its configuration written under `work` with `main` (directives
/// of the main context) at the top.
pub(super) fn nginx_command(work: &Path, app: SocketAddr, main: &str) -> Result<(u16, Vec<std::ffi::OsString>)> {
    let port = free_port()?;
    let dir = work.join("nginx");
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, format!("{main}{}", nginx_conf(port, app, &dir)))?;
    Ok((port, vec!["-p".into(), dir.into(), "-c".into(), conf.into()]))
}

/// HAProxy's port and arguments, its configuration written under `work`.
pub(super) fn haproxy_command(work: &Path, app: SocketAddr) -> Result<(u16, Vec<std::ffi::OsString>)> {
    let port = free_port()?;
    let cfg = work.join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_conf(port, app))?;
    Ok((port, vec!["-db".into(), "-f".into(), cfg.into()]))
}

fn nginx_conf(port: u16, app: SocketAddr, dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"# Equivalent of the sidecar: one worker, keep-alive to the app, WebSockets, no buffering.
worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  # Uploads stream to the app, as through the sidecar (no size limit of its own).
  client_max_body_size 0;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  # No cap on requests per connection, either side (the sidecar has none; nginx's default
  # closes a keep-alive connection after 1,000).
  keepalive_requests 1000000000;
  upstream app {{ server {app}; keepalive 128; keepalive_requests 1000000000; }}
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 3600s;
    }}
  }}
}}
"#
    )
}

fn haproxy_conf(port: u16, app: SocketAddr) -> String {
    format!(
        r#"# Equivalent of the sidecar: one thread, keep-alive to the app, WebSockets.
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  option forwardfor
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend fe
  bind 127.0.0.1:{port}
  default_backend app
backend app
  http-reuse always
  server app {app}
"#
    )
}

/// A child process, stopped (SIGTERM, then SIGKILL) on drop.
pub(super) struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    pub(super) fn spawn(name: &'static str, cmd: &mut Command) -> Result<Self> {
        let child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().with_context(|| format!("starting {name}"))?;
        Ok(Self { name, child })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn first_line(&mut self) -> Result<String> {
        let mut line = String::new();
        BufReader::new(self.child.stdout.take().context("stdout")?).read_line(&mut line)?;
        ensure!(!line.is_empty(), "{} exited before printing its address", self.name);
        Ok(line.trim().to_owned())
    }

    pub(super) fn stop(&mut self) {
        self.stop_within(Duration::from_secs(5));
    }

    /// SIGTERM, and SIGKILL if it has not exited within `patience`.
    pub(super) fn stop_within(&mut self, patience: Duration) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `pid` and its descendants (nginx: master and worker).
fn process_tree(pid: u32) -> Vec<u32> {
    // Give a forking server a moment to start its workers.
    std::thread::sleep(Duration::from_millis(300));
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", pids[i])).unwrap_or_default();
        pids.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
        i += 1;
    }
    pids
}

fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .sum()
}

/// Wait until `GET /` answers 200.
pub(super) fn wait_http(addr: SocketAddr) -> Result<()> {
    // Long enough for a proxy started under valgrind.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut tcp) = TcpStream::connect(addr) {
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
            if tcp.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").is_ok() {
                let mut out = String::new();
                let _ = tcp.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 200") {
                    return Ok(());
                }
            }
        }
        ensure!(Instant::now() < deadline, "{addr} did not answer 200 within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Debug, Default)]
struct Measured {
    name: &'static str,
    req_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    ws_p50_us: f64,
    ws_p99_us: f64,
    ws_per_s: f64,
    rss_idle_kib: Option<u64>,
    rss_ws_kib: Option<u64>,
    rss_after_work_kib: Option<u64>,
}

/// The workout after the idle WebSockets: bytes down and up through the proxy, then quiet.
const WORKOUT_DOWNLOAD: u64 = 64 * 1024 * 1024;
const WORKOUT_UPLOAD: u64 = 32 * 1024 * 1024;
const WORKOUT_QUIET: Duration = Duration::from_secs(5);

/// `GET /bytes?n=N` through `addr`, every byte read.
fn download(addr: SocketAddr, n: u64) -> Result<()> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(tcp, "GET /bytes?n={n} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tcp.read(&mut buf)?;
        if read == 0 {
            break;
        }
        total += read as u64;
    }
    ensure!(total > n, "the download through {addr} ended after {total} bytes of {n}");
    Ok(())
}

/// `POST /upload` of `n` bytes through `addr`, sent in 64 KiB writes; the app counts them.
fn upload(addr: SocketAddr, n: u64) -> Result<()> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(tcp, "POST /upload HTTP/1.1\r\nHost: bench\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n")?;
    let chunk = vec![b'y'; 64 * 1024];
    let mut sent = 0u64;
    while sent < n {
        let len = (n - sent).min(chunk.len() as u64) as usize;
        tcp.write_all(&chunk[..len])?;
        sent += len as u64;
    }
    let mut answer = String::new();
    tcp.read_to_string(&mut answer)?;
    ensure!(
        answer.starts_with("HTTP/1.1 200") && answer.contains(&format!("\r\n\r\n{n} ")),
        "upload through {addr}: {answer}"
    );
    Ok(())
}

/// Run wrk; returns (req/s, p50 ms, p99 ms).
fn wrk(addr: SocketAddr, secs: u64, connections: u32) -> Result<(f64, f64, f64)> {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{connections}"), &format!("-d{secs}s"), "--latency"])
        .arg(format!("http://{addr}/"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "wrk failed: {text}");
    ensure!(!text.contains("Non-2xx"), "wrk saw errors through {addr}: {text}");
    let field = |prefix: &str| -> Result<&str> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
            .with_context(|| format!("no {prefix:?} in wrk output: {text}"))
    };
    let rps: f64 = field("Requests/sec:")?.parse()?;
    Ok((rps, parse_ms(field("50%")?)?, parse_ms(field("99%")?)?))
}

fn parse_ms(v: &str) -> Result<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).context("a unit")?);
    let n: f64 = num.parse()?;
    Ok(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => bail!("unknown wrk unit {unit}"),
    })
}

/// A WebSocket client over a plain std socket (RFC 6455 framing by hand, small messages).
fn ws_open(addr: SocketAddr) -> Result<TcpStream> {
    let mut tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        tcp,
        "GET /ws HTTP/1.1\r\nHost: bench\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(tcp.read(&mut b)? == 1, "closed during the WebSocket handshake");
        head.push(b[0]);
    }
    ensure!(head.starts_with(b"HTTP/1.1 101"), "handshake refused: {}", String::from_utf8_lossy(&head));
    Ok(tcp)
}

fn ws_echo(tcp: &mut TcpStream, payload: &[u8]) -> Result<()> {
    ensure!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x82, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    tcp.write_all(&frame)?;
    let mut head = [0u8; 2];
    tcp.read_exact(&mut head)?;
    ensure!(head[0] == 0x82 && head[1] as usize == payload.len(), "unexpected frame {head:?}");
    let mut back = vec![0u8; payload.len()];
    tcp.read_exact(&mut back)?;
    ensure!(back == payload, "echo differs");
    Ok(())
}

/// `n` sequential echo round trips of a 32-byte message; the latency of each, in microseconds.
fn ws_round_trips(tcp: &mut TcpStream, n: u32) -> Result<Vec<f64>> {
    let payload = [7u8; 32];
    let mut samples = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        ws_echo(tcp, &payload)?;
        samples.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(samples)
}

fn print_table(results: &[Measured], args: &Args) {
    let nginx = results.iter().find(|r| r.name == "nginx");
    let ratio = |v: f64, base: Option<f64>| match base {
        Some(b) if b > 0.0 => format!("{:.2}x", v / b),
        _ => "-".to_owned(),
    };
    let direct = results.iter().find(|r| r.name == "direct");
    println!();
    println!(
        "wrk: {} x 2 s interleaved rounds per target (medians), {} keep-alive connections, 1 thread, GET / (6-byte body); \
         WebSocket: {} sequential 32-byte echoes per target in 10 interleaved rounds; RSS with {} idle WebSockets",
        (args.duration / 2).max(1),
        args.connections,
        args.round_trips,
        args.websockets
    );
    println!();
    println!(
        "| target | req/s | vs nginx | p50 ms | p99 ms | p99 added ms | vs nginx | ws rtt p50 us | ws rtt p99 us | vs nginx | RSS idle MiB | vs nginx | RSS 1k WS MiB | vs nginx | RSS after work MiB | vs nginx |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let added = |r: &Measured| direct.map(|d| r.p99_ms - d.p99_ms);
    for r in results {
        let mib = |k: Option<u64>| k.map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
        let rss_ratio = |k: Option<u64>, base: Option<u64>| match (k, base) {
            (Some(k), Some(b)) => ratio(k as f64, Some(b as f64)),
            _ => "-".to_owned(),
        };
        println!(
            "| {} | {:.0} | {} | {:.2} | {:.2} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.req_per_s,
            ratio(r.req_per_s, nginx.map(|n| n.req_per_s)),
            r.p50_ms,
            r.p99_ms,
            added(r).map_or("-".to_owned(), |a| format!("{a:.2}")),
            match (added(r), nginx.and_then(added)) {
                (Some(a), Some(n)) if r.name != "direct" => ratio(a.max(0.001), Some(n.max(0.001))),
                _ => "-".to_owned(),
            },
            r.ws_p50_us,
            r.ws_p99_us,
            ratio(r.ws_p99_us, nginx.map(|n| n.ws_p99_us)),
            mib(r.rss_idle_kib),
            rss_ratio(r.rss_idle_kib, nginx.and_then(|n| n.rss_idle_kib)),
            mib(r.rss_ws_kib),
            rss_ratio(r.rss_ws_kib, nginx.and_then(|n| n.rss_ws_kib)),
            mib(r.rss_after_work_kib),
            rss_ratio(r.rss_after_work_kib, nginx.and_then(|n| n.rss_after_work_kib)),
        );
    }
    if let Some(s) = results.iter().find(|r| r.name == "spawner-sidecar") {
        println!();
        let check = |ok: bool| if ok { "met" } else { "MISSED" };
        if let Some(n) = nginx {
            println!("target throughput >= nginx: {}", check(s.req_per_s >= n.req_per_s));
            if let (Some(a), Some(b)) = (added(s), added(n)) {
                println!("target p99 added latency <= nginx: {}", check(a <= b));
            }
        }
        if let Some(k) = s.rss_idle_kib {
            println!("target idle RSS <= 4 MiB: {}", check(k <= IDLE_RSS_TARGET_KIB));
        }
        if let Some(k) = s.rss_ws_kib {
            println!("target RSS with 1,000 WebSockets <= 24 MiB: {}", check(k <= WS_RSS_TARGET_KIB));
        }
        if let (Some(k), Some(n)) = (s.rss_after_work_kib, nginx.and_then(|n| n.rss_after_work_kib)) {
            println!("target RSS after the workout <= nginx's: {}", check(k <= n));
        }
    }
}
