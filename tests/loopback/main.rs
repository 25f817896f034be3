//! Tests that need no cluster: the real `spawner-sidecar` binary on loopback in front of a real
//! app, the sweeper's follower against it, and the generated nginx.conf in a real nginx.

mod proxy;
mod sidecar_http;
mod sidecar_websocket;
mod support;
mod sweeper_follower;
