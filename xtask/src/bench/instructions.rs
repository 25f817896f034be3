//! `cargo xtask bench instructions`: instructions per proxied request, counted by valgrind's
//! callgrind, for the sidecar, nginx and HAProxy in front of the same app.
//!
//! Wall-clock throughput on this shared 2-core machine moves by several percent from one run to
//! the next; an instruction count does not. Each proxy runs under callgrind twice, once for
//! `--requests` and once for three times as many sequential keep-alive `GET /` on one connection;
//! the difference divided by the difference in requests is the cost of one request, with the
//! start-up and shutdown cancelled out. It counts user-space instructions only: the system calls'
//! kernel time, the same kind of work for every proxy, is not in it.
//!
//! The sidecar is the release binary the image ships (as `bench sidecar` builds it); nginx runs
//! one process (`master_process off`), HAProxy one thread, each configured as in `bench sidecar`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use super::sidecar::{Proc, build_release, ensure_tools, haproxy_command, nginx_command, sidecar_addr, sidecar_args};

/// Options of `cargo xtask bench instructions`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Requests of the shorter run (the longer one sends three times as many).
    #[arg(long, default_value_t = 1000)]
    pub requests: u64,
    /// Use the release binaries already in target/ instead of building them first.
    #[arg(long)]
    pub no_build: bool,
}

/// A proxy to count: how to start it under valgrind, given the work dir and the app; returns
/// it and its address (not answering yet).
struct Target {
    name: &'static str,
    start: fn(&Path, SocketAddr, &Path) -> Result<(Proc, SocketAddr)>,
}

const TARGETS: [Target; 3] = [
    Target { name: "spawner-sidecar", start: start_sidecar },
    Target { name: "nginx", start: start_nginx },
    Target { name: "haproxy", start: start_haproxy },
];

pub fn run(args: &Args) -> Result<()> {
    ensure_tools(&["nginx", "haproxy", "valgrind"])?;
    if !args.no_build {
        build_release()?;
    }
    let app_bin = crate::target_dir().join("release/examples/spawner-testapp");
    let work = std::env::temp_dir().join(format!("spawner-bench-instructions-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let (mut app, app_addr) = super::sidecar::start_app(&app_bin)?;

    let (short, long) = (args.requests, args.requests * 3);
    let mut rows = Vec::new();
    for target in &TARGETS {
        let mut counts = Vec::new();
        for requests in [short, long] {
            counts.push(count(target, &work, app_addr, requests).or_else(|e| {
                // Seen once on a loaded machine: an empty callgrind file. A second run settles it.
                eprintln!("{}: {e:#}; once more", target.name);
                count(target, &work, app_addr, requests)
            })?);
        }
        let per_request = (counts[1] as f64 - counts[0] as f64) / (long - short) as f64;
        rows.push((target.name, per_request));
    }
    app.stop();
    let _ = std::fs::remove_dir_all(&work);

    let nginx = rows.iter().find(|(name, _)| *name == "nginx").map_or(f64::NAN, |(_, n)| *n);
    println!();
    println!(
        "instructions per proxied request (callgrind, user space; {short} and {long} keep-alive GETs on one connection):"
    );
    println!("| target | instructions per request | vs nginx |");
    println!("|---|---|---|");
    for (name, per_request) in rows {
        println!("| {name} | {per_request:.0} | {:.2}x |", per_request / nginx);
    }
    Ok(())
}

/// Instructions `target` executed from its start to its exit, serving `requests`.
fn count(target: &Target, work: &Path, app: SocketAddr, requests: u64) -> Result<u64> {
    eprintln!("{}: {requests} requests under callgrind", target.name);
    let out = work.join(format!("{}-{requests}.callgrind", target.name));
    let (mut proxy, addr) = (target.start)(work, app, &out)?;
    super::sidecar::wait_http(addr)?;
    send_requests(addr, requests).with_context(|| format!("requests through {}", target.name))?;
    // callgrind writes its counts when the process exits: give it time to.
    proxy.stop_within(Duration::from_secs(60));
    total_instructions(&out)
}

/// `valgrind --tool=callgrind` writing its counts to `out`, followed by the command.
fn under_callgrind(program: &str, out: &Path) -> Command {
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind").arg(format!("--callgrind-out-file={}", out.display())).arg(program);
    cmd
}

fn start_sidecar(_work: &Path, app: SocketAddr, out: &Path) -> Result<(Proc, SocketAddr)> {
    let bin = crate::images::release_binary(crate::images::SIDECAR);
    let mut proc = Proc::spawn("sidecar", under_callgrind(&bin.to_string_lossy(), out).args(sidecar_args(app)))?;
    let addr = sidecar_addr(&proc.first_line()?)?;
    Ok((proc, addr))
}

fn start_nginx(work: &Path, app: SocketAddr, out: &Path) -> Result<(Proc, SocketAddr)> {
    // One process, so callgrind follows the one that serves.
    let (port, args) = nginx_command(work, app, "master_process off;\n")?;
    Ok((Proc::spawn("nginx", under_callgrind("nginx", out).args(args))?, SocketAddr::from(([127, 0, 0, 1], port))))
}

fn start_haproxy(work: &Path, app: SocketAddr, out: &Path) -> Result<(Proc, SocketAddr)> {
    let (port, args) = haproxy_command(work, app)?;
    Ok((Proc::spawn("haproxy", under_callgrind("haproxy", out).args(args))?, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// `n` sequential `GET /` on one keep-alive connection, each answer read whole and checked.
fn send_requests(addr: SocketAddr, n: u64) -> Result<()> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = tcp.try_clone()?;
    let mut reader = BufReader::new(tcp);
    let mut line = String::new();
    for i in 0..n {
        writer.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        line.clear();
        reader.read_line(&mut line)?;
        ensure!(line.starts_with("HTTP/1.1 200"), "request {i}: {line:?}");
        let mut length = None;
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = Some(value.trim().parse::<usize>()?);
            }
        }
        let length = length.with_context(|| format!("request {i}: no Content-Length"))?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
    }
    Ok(())
}

/// The `totals:` (or `summary:`) line of a callgrind output file: instructions executed.
fn total_instructions(out: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(out)
        .with_context(|| format!("reading {} (did the process exit under callgrind?)", out.display()))?;
    parse_total(&text).with_context(|| format!("no totals in {}", out.display()))
}

fn parse_total(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .find_map(|v| v.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_total_of_a_callgrind_file() {
        let text = "events: Ir\nfn=main\n3 10\nsummary: 123456\ntotals: 123456\n";
        assert_eq!(super::parse_total(text), Some(123456));
        assert_eq!(super::parse_total("events: Ir\n"), None);
    }
}
