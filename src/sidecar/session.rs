//! The session's settings as the application reads them: `GET /session` on the admin port,
//! from the pod's own loopback only.
//!
//! A cold backend's sidecar knows its session from the start (`SPAWNER_SESSION`, JSON, which
//! the controller also gives the application's container). A warm pod's learns it from the
//! claim (`POST /claim` carries it), so an application that started before its session did asks
//! once and waits: `/session` holds the request until the pod is claimed (`?wait=SECONDS`,
//! default 30; `0` answers at once), then answers the JSON, or 204 when there is none yet. A
//! pod is claimed by one backend for life, so a session never sees another's settings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Path on the admin port.
pub const SESSION_PATH: &str = "/session";
/// The variable a cold backend's containers get it in.
pub const SESSION_ENV: &str = "SPAWNER_SESSION";
/// How long `/session` waits for a claim unless asked otherwise.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// The longest a client may ask it to wait.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// What the application learns about its session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    /// The backend's namespace and name.
    pub namespace: String,
    pub backend: String,
    /// The key it was connected by (`spawner connect KEY`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `spec.values`.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
}

/// The sidecar's session: known from the start, or set by the claim.
#[derive(Debug)]
pub struct Slot {
    tx: watch::Sender<Option<Arc<Session>>>,
}

impl Slot {
    pub fn new(initial: Option<Session>) -> Self {
        Slot { tx: watch::Sender::new(initial.map(Arc::new)) }
    }

    pub fn set(&self, session: Session) {
        self.tx.send_replace(Some(Arc::new(session)));
    }

    pub fn current(&self) -> Option<Arc<Session>> {
        self.tx.borrow().clone()
    }

    /// The session, waiting up to `wait` for one to be set.
    pub async fn wait(&self, wait: Duration) -> Option<Arc<Session>> {
        let mut rx = self.tx.subscribe();
        let found = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
        match found {
            Ok(Ok(session)) => session.clone(),
            _ => None,
        }
    }
}

/// `?wait=SECONDS` from a query string: the default when absent, capped, `None` when malformed.
pub fn wait_from_query(query: Option<&str>) -> Option<Duration> {
    let Some(value) = query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| kv.strip_prefix("wait=")) else {
        return Some(DEFAULT_WAIT);
    };
    let seconds: f64 = value.parse().ok().filter(|s: &f64| s.is_finite() && *s >= 0.0)?;
    Some(Duration::from_secs_f64(seconds).min(MAX_WAIT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_comes_from_the_query_capped() {
        assert_eq!(wait_from_query(None), Some(DEFAULT_WAIT));
        assert_eq!(wait_from_query(Some("x=1")), Some(DEFAULT_WAIT));
        assert_eq!(wait_from_query(Some("wait=0")), Some(Duration::ZERO));
        assert_eq!(wait_from_query(Some("a=b&wait=2.5")), Some(Duration::from_millis(2500)));
        assert_eq!(wait_from_query(Some("wait=99999")), Some(MAX_WAIT));
        assert_eq!(wait_from_query(Some("wait=-1")), None);
        assert_eq!(wait_from_query(Some("wait=soon")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_reader_gets_the_session_once_set() {
        let slot = Arc::new(Slot::new(None));
        assert_eq!(slot.wait(Duration::from_secs(1)).await, None, "nothing set: the wait runs out");
        let reader = tokio::spawn({
            let slot = slot.clone();
            async move { slot.wait(Duration::from_secs(30)).await }
        });
        tokio::task::yield_now().await;
        let session = Session { namespace: "ns".into(), backend: "b".into(), ..Default::default() };
        slot.set(session.clone());
        assert_eq!(reader.await.unwrap().as_deref(), Some(&session));
        assert_eq!(slot.current().as_deref(), Some(&session));
    }
}
