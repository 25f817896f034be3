//! The sidecar's event stream: the contract between the sidecar and the sweeper.
//!
//! `GET /events` on the admin port answers `text/event-stream`. Each event is one SSE `data:`
//! line holding one JSON [`IdleState`], sent on every change and as a heartbeat every
//! [`HEARTBEAT`] otherwise, so a silent stream is a broken stream. Idle time is a **relative**
//! duration measured by the sidecar's own monotonic clock: nobody compares clocks across nodes,
//! and a sweeper that reconnects (or restarts) learns how long the backend has already been idle.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often the sidecar sends its state when nothing changes.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// Path of the event stream on the admin port.
pub const EVENTS_PATH: &str = "/events";

/// One event of the stream.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct IdleState {
    /// The application accepts TCP connections on its port.
    pub ready: bool,
    /// Live connections: open upgraded streams (WebSockets) plus HTTP requests whose response
    /// has not ended.
    pub connections: u64,
    /// Milliseconds since the last connection ended (or since the application became ready, if
    /// none ever came), when `connections` is 0 and the app is ready; `null` otherwise.
    pub idle_ms: Option<u64>,
}
