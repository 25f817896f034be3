//! The status stream: a backend's states as Server-Sent Events, read from the backend cache.
//!
//! Each state has a fixed id, its place in a backend's life ([`State::id`]), so the ids a
//! client sees only grow and a reconnect with `Last-Event-ID` gets exactly the states it
//! missed. On connect the stream replays the states the backend has passed (a Ready backend
//! was Pending, Scheduled and Running before), then sends each change, and ends after Failed
//! or Deleted.

use std::time::Duration;

use bytes::Bytes;
use kube::ResourceExt;

use super::types::StateEvent;
use crate::backend_cache::BackendCache;
use crate::client::why_not_ready;
use crate::crd::{Phase, SessionLivedBackend};

/// A backend's state as the stream reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Pending = 1,
    Scheduled,
    Running,
    Ready,
    Failed,
    Terminating,
    Deleted,
}

impl State {
    pub fn id(self) -> u32 {
        self as u32
    }

    fn name(self) -> &'static str {
        match self {
            State::Pending => "Pending",
            State::Scheduled => "Scheduled",
            State::Running => "Running",
            State::Ready => "Ready",
            State::Failed => "Failed",
            State::Terminating => "Terminating",
            State::Deleted => "Deleted",
        }
    }

    fn of(backend: &SessionLivedBackend) -> State {
        if backend.metadata.deletion_timestamp.is_some() {
            return State::Terminating;
        }
        match backend.status.as_ref().and_then(|s| s.phase).unwrap_or(Phase::Pending) {
            Phase::Pending => State::Pending,
            Phase::Scheduled => State::Scheduled,
            Phase::Running => State::Running,
            Phase::Ready => State::Ready,
            Phase::Failed => State::Failed,
            Phase::Terminating => State::Terminating,
        }
    }

    fn terminal(self) -> bool {
        matches!(self, State::Failed | State::Deleted)
    }
}

/// The states a backend now in `current` has passed through, in order, ending with `current`.
fn path_to(current: State) -> Vec<State> {
    match current {
        State::Pending | State::Scheduled | State::Running | State::Ready => {
            [State::Pending, State::Scheduled, State::Running, State::Ready]
                .into_iter()
                .filter(|s| *s <= current)
                .collect()
        }
        // Where it failed or was deleted from is not recorded; that it was accepted is.
        other => vec![State::Pending, other],
    }
}

/// The event for `state`, said of `backend` (`None` once it is gone).
fn event(state: State, backend: Option<&SessionLivedBackend>) -> StateEvent {
    let status = backend.and_then(|b| b.status.as_ref());
    let (message, reason, url) = match state {
        State::Pending => {
            let why = status.and_then(|s| s.message.clone());
            (why.unwrap_or_else(|| "accepted; waiting for a pod".into()), status.and_then(|s| s.reason.clone()), None)
        }
        State::Scheduled => {
            let node = status.and_then(|s| s.node_name.as_deref()).unwrap_or("a node");
            (format!("the pod is on {node}; its containers are starting"), None, None)
        }
        State::Running => ("the containers run; waiting for the application to answer".into(), None, None),
        State::Ready => ("ready for connections".into(), None, status.and_then(|s| s.url.clone())),
        State::Failed => {
            let why = backend.and_then(why_not_ready).unwrap_or_else(|| "failed".into());
            (why, status.and_then(|s| s.reason.clone()), None)
        }
        State::Terminating => ("being deleted".into(), None, None),
        State::Deleted => ("deleted".into(), None, None),
    };
    StateEvent { state: state.name().into(), message, reason, url }
}

/// One SSE frame.
pub fn frame(state: State, event: &StateEvent) -> Bytes {
    let data = serde_json::to_string(event).expect("a state event serializes");
    Bytes::from(format!("id: {}\nevent: state\ndata: {data}\n\n", state.id()))
}

/// A comment line: keeps idle proxies and load balancers from closing a quiet stream.
const KEEPALIVE: &[u8] = b": keep-alive\n\n";
const KEEPALIVE_EVERY: Duration = Duration::from_secs(15);
/// How long a backend the API server has may be missing from the cache before it counts as
/// deleted (it was, before the watch showed it).
const UNSEEN_WAIT: Duration = Duration::from_secs(5);

/// Sends `namespace/name`'s states (the one with `uid`) into `out` until a terminal state, the
/// client going away, or `stop`.
pub async fn follow(
    cache: BackendCache,
    namespace: String,
    name: String,
    uid: String,
    last_id: u32,
    out: tokio::sync::mpsc::Sender<Bytes>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut sent = last_id;
    // The cache lags a create by a moment: until it has shown the backend once, its absence
    // means "not seen yet", for a while.
    let mut seen = false;
    let unseen_until = tokio::time::Instant::now() + UNSEEN_WAIT;
    loop {
        let notified = cache.changed();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let backend = cache.get(&namespace, &name).filter(|b| b.uid().as_deref() == Some(uid.as_str()));
        let current = match &backend {
            Some(backend) => {
                seen = true;
                State::of(backend)
            }
            None if cache.is_current() && (seen || tokio::time::Instant::now() >= unseen_until) => State::Deleted,
            None => State::Pending,
        };
        for state in path_to(current) {
            if state.id() > sent {
                if out.send(frame(state, &event(state, backend.as_deref()))).await.is_err() {
                    return;
                }
                sent = state.id();
            }
        }
        if current.terminal() {
            return;
        }
        tokio::select! {
            () = &mut notified => {}
            () = stop.cancelled() => return,
            () = out.closed() => return,
            () = tokio::time::sleep_until(unseen_until), if !seen => {}
            () = tokio::time::sleep(KEEPALIVE_EVERY) => {
                if out.send(Bytes::from_static(KEEPALIVE)).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_backend_replays_its_way_there_and_a_failed_one_its_acceptance() {
        assert_eq!(path_to(State::Ready), [State::Pending, State::Scheduled, State::Running, State::Ready]);
        assert_eq!(path_to(State::Pending), [State::Pending]);
        assert_eq!(path_to(State::Failed), [State::Pending, State::Failed]);
        assert_eq!(path_to(State::Deleted), [State::Pending, State::Deleted]);
        // Ids grow along every path, so Last-Event-ID skips exactly what was seen.
        for state in [State::Ready, State::Failed, State::Terminating, State::Deleted] {
            let ids: Vec<u32> = path_to(state).iter().map(|s| s.id()).collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        }
    }

    #[test]
    fn a_frame_is_one_sse_event_with_its_id() {
        let event = StateEvent { state: "Ready".into(), message: "ready".into(), reason: None, url: Some("u".into()) };
        let text = String::from_utf8(frame(State::Ready, &event).to_vec()).unwrap();
        assert_eq!(text, "id: 4\nevent: state\ndata: {\"state\":\"Ready\",\"message\":\"ready\",\"url\":\"u\"}\n\n");
    }
}
