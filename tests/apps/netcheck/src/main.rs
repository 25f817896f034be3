//! A tiny program for cluster tests, shipped as the image `localhost/spawner/netcheck`:
//!
//! - `serve`: answers every HTTP request on `$PORT` (default 8080) with 200 and its hostname;
//! - `get URL [TIMEOUT_SECS]`: GETs an `http://host[:port]/path` URL until it answers 200
//!   (exit 0, body on stdout) or the timeout passes (exit 1);
//! - `blocked URL ATTEMPTS`: for NetworkPolicy tests. Waits (up to 60 s: policy agents apply
//!   rules shortly after a pod starts) until a GET gets no HTTP answer at all (refused, reset or
//!   timed out; any status counts as an answer), then requires ATTEMPTS further GETs to get none
//!   either (exit 0); exit 1 when one is answered;
//! - `resolve NAME [TIMEOUT_SECS]`: resolves NAME through the pod's DNS until it answers (exit 0)
//!   or the timeout passes (exit 1);
//! - `exit CODE AFTER_SECS`: serves like `serve`, then exits with CODE (a crashing app).
//!
//! Only std: it must start in any pod and needs no TLS or DNS beyond what libc gives.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(),
        Some("get") => {
            let url = args.get(1).expect("get URL [TIMEOUT_SECS]");
            let timeout = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
            std::process::exit(get(url, Duration::from_secs(timeout)));
        }
        Some("blocked") => {
            let url = args.get(1).expect("blocked URL ATTEMPTS");
            let attempts = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
            std::process::exit(blocked(url, attempts));
        }
        Some("resolve") => {
            let name = args.get(1).expect("resolve NAME [TIMEOUT_SECS]");
            let timeout = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(30);
            std::process::exit(resolve(name, Duration::from_secs(timeout)));
        }
        Some("exit") => {
            let code: i32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1);
            let after: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
            std::thread::spawn(serve);
            std::thread::sleep(Duration::from_secs(after));
            eprintln!("exiting with {code} as asked");
            std::process::exit(code);
        }
        _ => {
            eprintln!(
                "usage: spawner-netcheck serve | get URL [TIMEOUT_SECS] | blocked URL ATTEMPTS | resolve NAME [TIMEOUT_SECS] | exit CODE AFTER_SECS"
            );
            std::process::exit(2);
        }
    }
}

fn serve() {
    let port = std::env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080u16);
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_string();
    let listener = TcpListener::bind(("0.0.0.0", port)).expect("binding $PORT");
    eprintln!("serving on :{port}");
    for stream in listener.incoming().flatten() {
        let host = host.clone();
        std::thread::spawn(move || answer(stream, &host));
    }
}

fn answer(mut stream: TcpStream, host: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("hello from {host}\n");
    let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
}

/// (address to connect to, Host header, path) of an `http://` URL.
fn parse(url: &str) -> (String, String, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) = rest.split_once('/').map(|(a, p)| (a, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let address = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    (address, authority.to_string(), path)
}

fn get(url: &str, timeout: Duration) -> i32 {
    let (address, authority, path) = parse(url);
    let deadline = Instant::now() + timeout;
    loop {
        match try_get(&address, &authority, &path) {
            Ok(body) => {
                print!("{body}");
                return 0;
            }
            Err(e) if Instant::now() >= deadline => {
                eprintln!("GET {url} failed: {e}");
                return 1;
            }
            Err(e) => {
                eprintln!("GET {url}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

fn blocked(url: &str, attempts: u32) -> i32 {
    let (address, authority, path) = parse(url);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match try_answer(&address, &authority, &path) {
            Err(e) => {
                eprintln!("GET {url}: {e}: blocked");
                break;
            }
            Ok(_) if Instant::now() >= deadline => {
                eprintln!("GET {url} kept being answered for 60 s");
                return 1;
            }
            Ok(status) => {
                eprintln!("GET {url} answered {status}; waiting for the policy");
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    for attempt in 1..=attempts {
        match try_answer(&address, &authority, &path) {
            Err(e) => eprintln!("GET {url} (attempt {attempt}): {e}: blocked"),
            Ok(status) => {
                eprintln!("GET {url} (attempt {attempt}) answered {status} after it had been blocked");
                return 1;
            }
        }
    }
    println!("blocked");
    0
}

fn resolve(name: &str, timeout: Duration) -> i32 {
    let deadline = Instant::now() + timeout;
    loop {
        match (name, 0).to_socket_addrs().map(|mut a| a.next()) {
            Ok(Some(addr)) => {
                println!("{name} resolves to {}", addr.ip());
                return 0;
            }
            outcome if Instant::now() >= deadline => {
                eprintln!("{name} did not resolve: {outcome:?}");
                return 1;
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// The status line of any HTTP answer to a GET, or why there was none.
fn try_answer(address: &str, host: &str, path: &str) -> Result<String, String> {
    let response = exchange(address, host, path)?;
    let status = response.lines().next().unwrap_or("").to_string();
    if status.starts_with("HTTP/") { Ok(status) } else { Err(format!("not an HTTP answer: {status:?}")) }
}

fn try_get(address: &str, host: &str, path: &str) -> Result<String, String> {
    let response = exchange(address, host, path)?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("answered {}", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_string())
}

/// One GET over a new connection: the whole response (connect timeout 3 s, read timeout 5 s).
fn exchange(address: &str, host: &str, path: &str) -> Result<String, String> {
    let addr =
        address.to_socket_addrs().map_err(|e| format!("resolving {address}: {e}"))?.next().ok_or("no address")?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}
