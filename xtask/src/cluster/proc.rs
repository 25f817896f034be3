//! Background processes of the cluster: started detached (own process group, output to
//! `logs/<name>.log`), tracked by `run/<name>.pid` which holds the pid and the binary path, so a
//! recycled pid is never mistaken for ours.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::Layout;

/// Every process `up` may start, in start order.
pub const COMPONENTS: &[&str] =
    &["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "containerd", "kubelet", "kube-proxy"];

fn pidfile(layout: &Layout, name: &str) -> PathBuf {
    layout.run().join(format!("{name}.pid"))
}

/// Starts `bin args...` in the background unless it already runs; returns its pid.
pub fn start(layout: &Layout, name: &str, bin: &Path, args: &[String]) -> Result<u32> {
    if let Some(pid) = running(layout, name) {
        return Ok(pid);
    }
    std::fs::create_dir_all(layout.logs())?;
    std::fs::create_dir_all(layout.run())?;
    let log_path = layout.log(name);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name} ({})", bin.display()))?;
    let pid = child.id();
    let exe = std::fs::canonicalize(bin).unwrap_or_else(|_| bin.to_path_buf());
    std::fs::write(pidfile(layout, name), format!("{pid}\n{}\n", exe.display()))?;
    // The child is not waited for: it outlives this process (re-parented to init).
    std::mem::forget(child);
    Ok(pid)
}

/// The pid of `name` if its pid file names a live process running the recorded binary.
pub fn running(layout: &Layout, name: &str) -> Option<u32> {
    let text = std::fs::read_to_string(pidfile(layout, name)).ok()?;
    let mut lines = text.lines();
    let pid: u32 = lines.next()?.trim().parse().ok()?;
    let exe = lines.next()?.trim().to_string();
    alive_with_exe(pid, &exe).then_some(pid)
}

/// Whether `pid` is alive (not a zombie) and runs the binary `exe`.
pub fn alive_with_exe(pid: u32, exe: &str) -> bool {
    if !alive(pid) {
        return false;
    }
    match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(p) => {
            let p = p.to_string_lossy().trim_end_matches(" (deleted)").to_string();
            p == exe || Path::new(&p).file_name() == Path::new(exe).file_name()
        }
        Err(_) => false,
    }
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // "pid (comm) S ..." — comm may contain spaces; the state follows the last ')'.
            let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

/// Sends `signal` (e.g. "TERM") to one pid.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops one pid: SIGTERM, then SIGKILL after `grace`; waits until it is gone.
pub fn kill_pid(pid: u32, grace: Duration) -> Result<()> {
    signal(pid, "TERM");
    let deadline = Instant::now() + grace;
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive(pid) {
        signal(pid, "KILL");
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if alive(pid) {
            bail!("pid {pid} survived SIGKILL");
        }
    }
    Ok(())
}

/// Stops the component `name` if it runs, and removes its pid file.
pub fn stop(layout: &Layout, name: &str) -> Result<()> {
    if let Some(pid) = running(layout, name) {
        kill_pid(pid, Duration::from_secs(10)).with_context(|| format!("stopping {name}"))?;
    }
    let _ = std::fs::remove_file(pidfile(layout, name));
    Ok(())
}

/// The last `n` lines of a log file (for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("    | {l}\n")).collect()
}

/// Pids of processes whose command line contains `needle` (used to find containerd shims
/// started on behalf of our containerd: their command line names our socket).
pub fn pids_with_cmdline(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return pids };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) && pid != std::process::id() {
                pids.push(pid);
            }
        }
    }
    pids
}
