//! `spawner-testapp`: the sidecar tests' app as a standalone process, for
//! `cargo xtask bench sidecar`. Usage: `spawner-testapp [PORT]` (default `$PORT`, else 0);
//! prints `listening ADDR` once bound.

#[path = "testapp.rs"]
mod testapp;

fn main() {
    let port: u16 =
        std::env::args().nth(1).or_else(|| std::env::var("PORT").ok()).and_then(|p| p.parse().ok()).unwrap_or(0);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        // Never cancelled: the process ends on a signal.
        let addr = testapp::serve(listener, tokio_util::sync::CancellationToken::new());
        println!("listening {addr}");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
}
