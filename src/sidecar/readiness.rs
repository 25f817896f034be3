//! Readiness: the app is ready when it accepts TCP connections on its port. Probed with
//! exponential backoff while it is not (so a fast-starting app is seen within milliseconds), and
//! every `READY_INTERVAL` once it is (so a crash is noticed); a refused connection on the proxy
//! path also marks it not ready at once.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::state::Tracker;

const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
const READY_INTERVAL: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Probe `app` forever, recording the result in `tracker`.
pub async fn probe(app: SocketAddr, tracker: Tracker) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let ok = matches!(tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(app)).await, Ok(Ok(_)));
        let was = tracker.is_ready();
        tracker.set_ready(ok);
        if ok != was {
            tracing::info!(ready = ok, %app, "app readiness changed");
        }
        if ok {
            backoff = FIRST_BACKOFF;
            tokio::time::sleep(READY_INTERVAL).await;
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
