//! `cargo xtask bench sweeper`: the sweeper's footprint and precision with 110 backends.
//!
//! Starts one tiny HTTP app and 110 real `spawner-sidecar` processes on loopback in front of it,
//! makes one request through each sidecar (spread over about a second, so deadlines are spread
//! too) to start its idle time at a known moment, and holds a long request open through ten of
//! them (active backends). Then it runs the real `spawner-sweeper` binary in its test mode
//! (`--static-targets`: follows the sidecars' event streams and prints sweeps instead of
//! deleting) with a 5 s grace period and reports:
//! - sweep lateness after the deadline, end to end: the sweeper's print time minus (the end of
//!   the request through that sidecar + grace), p50/p99/max;
//! - the sweeper's RSS (now and peak) and CPU;
//! - that no active backend was swept and that SIGTERM stops the sweeper cleanly.
//!
//! Targets: RSS <= 16 MiB, lateness p99 <= 1 s (reported as met or missed). It fails (non-zero
//! exit) only on wrong behaviour: an active backend swept, an idle one not swept or swept before
//! its deadline, or an unclean exit on SIGTERM.
//! Release binaries are built first (`cargo build --release`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};

const BACKENDS: usize = 110;
const ACTIVE: usize = 10;
const GRACE: Duration = Duration::from_secs(5);
const REQUEST_SPACING: Duration = Duration::from_millis(10);
const RSS_TARGET_KIB: u64 = 16 * 1024;
const LATENESS_P99_TARGET: Duration = Duration::from_secs(1);

pub fn run() -> Result<()> {
    let root = &crate::project_root();
    let bins = build_release()?;

    let release = Arc::new(AtomicBool::new(false));
    let app = start_app(release.clone())?;
    println!("app on {app}; starting {BACKENDS} sidecars");
    let started = Instant::now();
    let mut sidecars = Vec::with_capacity(BACKENDS);
    for _ in 0..BACKENDS {
        sidecars.push(Sidecar::start(&bins.sidecar, app)?);
    }
    for sidecar in &sidecars {
        sidecar.wait_ready(Duration::from_secs(30))?;
    }
    println!("{BACKENDS} sidecars ready in {:.1?}", started.elapsed());

    // Ten active backends: a request that stays open (a live connection) for the whole run.
    let mut holds = Vec::new();
    for sidecar in &sidecars[..ACTIVE] {
        let mut stream = TcpStream::connect(sidecar.proxy)?;
        write!(stream, "GET /hold HTTP/1.1\r\nhost: bench\r\n\r\n")?;
        holds.push(stream);
    }
    // The others: one short request each; its end starts the idle time.
    let mut idle_since: HashMap<String, Duration> = HashMap::new();
    for sidecar in &sidecars[ACTIVE..] {
        request(sidecar.proxy).with_context(|| format!("request through the sidecar on {}", sidecar.proxy))?;
        idle_since.insert(sidecar.events_url(), unix_now());
        thread::sleep(REQUEST_SPACING);
    }

    let targets: Vec<String> = sidecars.iter().map(Sidecar::events_url).collect();
    let log_path = root.join("target/bench-sweeper.log");
    let log = std::fs::File::create(&log_path)?;
    let mut sweeper = Command::new(&bins.sweeper)
        .arg("--static-targets")
        .arg(targets.join(","))
        .args(["--static-grace-seconds", &GRACE.as_secs_f64().to_string()])
        .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "text"])
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("starting spawner-sweeper")?;
    let sweeper_started = Instant::now();
    let pid = sweeper.id();
    let sweeps = read_lines(sweeper.stdout.take().context("sweeper stdout")?);

    // Collect the sweeps of the idle backends, then watch a little longer for wrong ones.
    let expected = BACKENDS - ACTIVE;
    let mut swept: Vec<serde_json::Value> = Vec::new();
    let collect_until = Instant::now() + GRACE + Duration::from_secs(30);
    while swept.len() < expected {
        let left = collect_until.saturating_duration_since(Instant::now());
        match sweeps.recv_timeout(left) {
            Ok(line) => swept.push(serde_json::from_str(&line).with_context(|| format!("sweep line {line:?}"))?),
            Err(_) => bail!("only {} of {expected} idle backends swept; see {}", swept.len(), log_path.display()),
        }
    }
    let steady_from = (Instant::now(), cpu_ticks(pid)?);
    let extra_wait = Duration::from_secs(3);
    while let Ok(line) = sweeps.recv_timeout(extra_wait) {
        swept.push(serde_json::from_str(&line)?);
    }
    let steady_cpu = cpu_share(pid, steady_from)?;
    let total_cpu = cpu_share(pid, (sweeper_started, 0))?;
    let (rss_kib, peak_kib) = memory_kib(pid)?;

    // Graceful shutdown: SIGTERM, and the sweeper exits 0 by itself.
    let term = Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    ensure!(term.success(), "kill -TERM {pid} failed");
    let exit = wait_with_timeout(&mut sweeper, Duration::from_secs(10))?;
    release.store(true, Ordering::SeqCst);
    drop(holds);
    for mut sidecar in sidecars {
        let _ = sidecar.child.kill();
        let _ = sidecar.child.wait();
    }

    let active_urls: Vec<String> = targets[..ACTIVE].to_vec();
    let mut wrongly_swept = 0;
    let mut lateness: Vec<f64> = Vec::new();
    let mut timer_lateness: Vec<f64> = Vec::new();
    for sweep in &swept {
        let target = sweep["target"].as_str().unwrap_or_default();
        if active_urls.iter().any(|u| u == target) {
            wrongly_swept += 1;
            continue;
        }
        let at = Duration::from_micros(sweep["sweptAtUnixMicros"].as_u64().unwrap_or_default());
        let since = idle_since.get(target).with_context(|| format!("unknown target {target}"))?;
        lateness.push(at.as_secs_f64() - (*since + GRACE).as_secs_f64());
        timer_lateness.push(sweep["latenessUs"].as_u64().unwrap_or_default() as f64 / 1e6);
    }
    lateness.sort_by(f64::total_cmp);
    timer_lateness.sort_by(f64::total_cmp);
    let p = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q).round() as usize];

    println!();
    println!(
        "sweeper benchmark: {BACKENDS} sidecars ({ACTIVE} active), grace {GRACE:?}, sweeper in --static-targets mode"
    );
    println!("  idle backends swept          {} / {expected}", lateness.len());
    println!("  active backends swept        {wrongly_swept} (must be 0)");
    println!(
        "  lateness after deadline      p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, min {:.1} ms  (target p99 <= {} ms)",
        p(&lateness, 0.5) * 1e3,
        p(&lateness, 0.99) * 1e3,
        lateness[lateness.len() - 1] * 1e3,
        lateness[0] * 1e3,
        LATENESS_P99_TARGET.as_millis()
    );
    println!(
        "  sweeper's own timer lateness p50 {:.2} ms, p99 {:.2} ms",
        p(&timer_lateness, 0.5) * 1e3,
        p(&timer_lateness, 0.99) * 1e3
    );
    println!(
        "  sweeper RSS                  {:.1} MiB now, {:.1} MiB peak  (target <= 16 MiB)",
        rss_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0
    );
    println!(
        "  sweeper CPU                  {:.2}% over its life, {:.2}% following {} quiet streams",
        total_cpu * 100.0,
        steady_cpu * 100.0,
        ACTIVE
    );
    println!("  SIGTERM                      exited with {exit}");
    let verdict = |met: bool| if met { "met" } else { "MISSED" };
    println!(
        "  targets                      lateness p99 <= 1 s: {}; RSS <= 16 MiB: {}",
        verdict(p(&lateness, 0.99) <= LATENESS_P99_TARGET.as_secs_f64()),
        verdict(peak_kib <= RSS_TARGET_KIB)
    );
    println!("  sweeper log                  {}", log_path.display());

    ensure!(wrongly_swept == 0, "{wrongly_swept} active backends were swept");
    ensure!(lateness.len() == expected, "{} idle backends swept, expected {expected}", lateness.len());
    ensure!(lateness[0] >= -0.005, "a backend was swept {:.1} ms before its deadline", -lateness[0] * 1e3);
    ensure!(exit.success(), "sweeper did not exit cleanly on SIGTERM: {exit}");
    Ok(())
}

struct Binaries {
    sidecar: PathBuf,
    sweeper: PathBuf,
}

fn build_release() -> Result<Binaries> {
    let started = Instant::now();
    println!("building release spawner-sidecar and spawner-sweeper");
    let mut paths = crate::images::build_release(&[crate::images::SIDECAR, "spawner-sweeper"])?.into_iter();
    println!("built in {:.0?}", started.elapsed());
    Ok(Binaries { sidecar: paths.next().expect("two binaries"), sweeper: paths.next().expect("two binaries") })
}

/// The shared app: answers every request with `ok`, except `/hold`, which stays open until
/// `release` (a live connection for the sidecar).
fn start_app(release: Arc<AtomicBool>) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let release = release.clone();
            thread::spawn(move || serve_app(stream, &release));
        }
    });
    Ok(addr)
}

fn serve_app(mut stream: TcpStream, release: &AtomicBool) {
    // Readiness probes connect and hang up; reading the head just returns then.
    let Ok(head) = read_head(&mut stream) else { return };
    if head.starts_with("GET /hold ") {
        while !release.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n");
}

fn read_head(stream: &mut TcpStream) -> Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(stream.read(&mut byte)? == 1, "connection closed");
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// One complete request through a sidecar; returns when the response has ended.
fn request(proxy: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect(proxy)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET / HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    ensure!(response.starts_with("HTTP/1.1 200"), "unexpected response {response:?}");
    Ok(())
}

struct Sidecar {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    /// Kept open so the sidecar's stdout stays writable.
    _stdout: BufReader<ChildStdout>,
}

impl Sidecar {
    fn start(binary: &Path, app: SocketAddr) -> Result<Sidecar> {
        let mut child = Command::new(binary)
            .env("SPAWNER_APP_PORT", app.port().to_string())
            .env("SPAWNER_LISTEN_ADDRESS", "127.0.0.1")
            .env("SPAWNER_PROXY_PORT", "0")
            .env("SPAWNER_ADMIN_PORT", "0")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut stdout = BufReader::new(child.stdout.take().context("sidecar stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let field = |name: &str| -> Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .with_context(|| format!("no {name} in the sidecar's line {line:?}"))?
                .parse()
                .context("sidecar address")
        };
        Ok(Sidecar { proxy: field("proxy=")?, admin: field("admin=")?, child, _stdout: stdout })
    }

    fn events_url(&self) -> String {
        format!("http://{}/events", self.admin)
    }

    fn wait_ready(&self, limit: Duration) -> Result<()> {
        let until = Instant::now() + limit;
        loop {
            let ready = (|| -> Result<bool> {
                let mut stream = TcpStream::connect(self.admin)?;
                write!(stream, "GET /readyz HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")?;
                let mut response = String::new();
                stream.read_to_string(&mut response)?;
                Ok(response.starts_with("HTTP/1.1 200"))
            })()
            .unwrap_or(false);
            if ready {
                return Ok(());
            }
            ensure!(Instant::now() < until, "sidecar on {} not ready within {limit:?}", self.admin);
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn read_lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn unix_now() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// User + system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at the state field (3).
    let rest = stat.rsplit_once(')').context("/proc/pid/stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

/// Share of one core used by `pid` since `from` (instant, ticks then).
fn cpu_share(pid: u32, from: (Instant, u64)) -> Result<f64> {
    let ticks_per_second = clock_ticks_per_second();
    let ticks = cpu_ticks(pid)?.saturating_sub(from.1);
    Ok(ticks as f64 / ticks_per_second / from.0.elapsed().as_secs_f64())
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// (VmRSS, VmHWM) of `pid` in KiB.
fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .with_context(|| format!("{name} in /proc/{pid}/status"))?
            .parse()
            .context("a number of KiB")
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
    let until = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= until {
            let _ = child.kill();
            bail!("sweeper still running {limit:?} after SIGTERM");
        }
        thread::sleep(Duration::from_millis(20));
    }
}
