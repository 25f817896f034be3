//! The sidecar: a WebSocket-aware reverse proxy in every backend pod (see the README).

pub mod event;
