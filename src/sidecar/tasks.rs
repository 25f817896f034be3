//! A counted group of spawned tasks, so shutdown can wait for them (with a bound).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct TaskGroup {
    live: Arc<watch::Sender<usize>>,
}

impl Default for TaskGroup {
    fn default() -> Self {
        Self { live: Arc::new(watch::channel(0).0) }
    }
}

struct Member(Arc<watch::Sender<usize>>);

impl Drop for Member {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl TaskGroup {
    /// Spawn `fut` as a member of the group; it counts until it finishes or is aborted.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.live.send_modify(|n| *n += 1);
        let member = Member(self.live.clone());
        tokio::spawn(async move {
            let _member = member;
            fut.await;
        });
    }

    pub fn len(&self) -> usize {
        *self.live.borrow()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait until every member has finished, at most `bound`; true if they all did.
    pub async fn wait(&self, bound: Duration) -> bool {
        let mut rx = self.live.subscribe();
        tokio::time::timeout(bound, rx.wait_for(|n| *n == 0)).await.is_ok()
    }
}
