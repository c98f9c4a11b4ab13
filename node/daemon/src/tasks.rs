//! The node's tasks: every task that can outlive the request that started it is
//! spawned here, owned in one [`JoinSet`] together with the node's
//! [`CancellationToken`], and stopped by [`Tasks::stop`] (which `Node::shutdown` calls):
//! the token is cancelled, the set is joined for a bounded time, and whatever has not
//! stopped by then is aborted, with a warning naming it.
//!
//! Owns: [`Tasks`].
//!
//! May use: `tokio`, `tokio_util`'s cancellation token and `tracing`.
//!
//! # Which tasks are here
//! The overlay task, the dispatcher, the heal task, maintenance and scrub, the API
//! server (with its connections, through its graceful shutdown), each request a peer
//! sends (it may divert, reclaim or check an order: several round trips), the overlay's
//! sends and timers, and the answers to routed locates. What stays outside is scoped:
//! the tasks of one operation or one request live in a `JoinSet` of that operation,
//! dropped (and so aborted) with it, and blocking-pool work is awaited by its caller.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::lock;
use std::time::Duration;

use tokio::task::{self, JoinSet};
use tokio_util::sync::CancellationToken;

/// The tasks a node owns, and the token that tells them to stop.
#[derive(Debug, Default)]
pub(crate) struct Tasks {
    token: CancellationToken,
    running: Mutex<Running>,
}

#[derive(Debug, Default)]
struct Running {
    set: JoinSet<()>,
    /// The name of each task in `set` that has not been joined yet (for the warning of
    /// [`Tasks::stop`]).
    names: HashMap<task::Id, &'static str>,
}

impl Running {
    /// Joins the tasks that have ended, so that the set holds only running ones (a
    /// node spawns a task per request and per overlay message).
    fn reap(&mut self) {
        while let Some(ended) = self.set.try_join_next_with_id() {
            self.ended(ended);
        }
    }

    fn ended(&mut self, ended: Result<(task::Id, ()), task::JoinError>) {
        match ended {
            Ok((id, ())) => {
                self.names.remove(&id);
            }
            Err(error) => {
                let name = self.names.remove(&error.id()).unwrap_or("a task");
                if error.is_panic() {
                    tracing::error!(task = name, "the node's task panicked: {error}");
                }
            }
        }
    }
}

impl Tasks {
    /// The token every task of the node watches.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether the node has been told to stop.
    pub(crate) fn is_stopping(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Spawns `task`, named `name` in logs, owned by the node: it is dropped at its next
    /// `.await` once the token is cancelled. Not started if the node is stopping.
    pub(crate) fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let token = self.token.clone();
        self.spawn_graceful(name, async move {
            token.run_until_cancelled(task).await;
        });
    }

    /// Spawns `task`, owned by the node, that watches [`Tasks::token`] itself and ends
    /// in its own time once it is cancelled (bounded by [`Tasks::stop`]'s patience).
    /// Not started if the node is stopping.
    pub(crate) fn spawn_graceful<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut running = lock(&self.running);
        running.reap();
        // Checked under the lock `stop` takes after cancelling: a task is either in the
        // set `stop` joins, or never started.
        if self.token.is_cancelled() {
            return;
        }
        let handle = running.set.spawn(task);
        running.names.insert(handle.id(), name);
    }

    /// How many tasks are still running.
    pub(crate) fn running(&self) -> usize {
        let mut running = lock(&self.running);
        running.reap();
        running.set.len()
    }

    /// Cancels the token only: the tasks end on their own, nobody waits (a crash, for
    /// tests).
    pub(crate) fn cancel(&self) {
        self.token.cancel();
    }

    /// Cancels the token and waits for every task to end, at most `patience`; the ones
    /// still running then are aborted, each named in a warning. Returns their names.
    pub(crate) async fn stop(&self, patience: Duration) -> Vec<&'static str> {
        self.token.cancel();
        let mut running = std::mem::take(&mut *lock(&self.running));
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match tokio::time::timeout_at(deadline, running.set.join_next_with_id()).await {
                Ok(Some(ended)) => running.ended(ended),
                Ok(None) => return Vec::new(),
                Err(_) => break,
            }
        }
        let mut stuck: Vec<&'static str> = running.names.values().copied().collect();
        stuck.sort_unstable();
        for name in &stuck {
            tracing::warn!(
                task = name,
                "a task of the node did not stop within {patience:?}; aborted"
            );
        }
        running.set.abort_all();
        // An aborted task ends at its next poll; one that never yields is left to the
        // runtime (dropping the set detaches nothing: it aborts again).
        let _ = tokio::time::timeout(ABORT_PATIENCE, async {
            while running.set.join_next().await.is_some() {}
        })
        .await;
        stuck
    }
}

/// How long [`Tasks::stop`] waits for aborted tasks to go.
const ABORT_PATIENCE: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_ends_every_task_and_aborts_and_names_the_ones_that_ignore_the_token() {
        let tasks = Tasks::default();
        let token = tasks.token().clone();
        tasks.spawn("sleeper", std::future::pending());
        tasks.spawn_graceful("polite", async move { token.cancelled().await });
        tasks.spawn_graceful("stubborn", std::future::pending());
        assert_eq!(tasks.running(), 3);
        let stuck = tasks.stop(Duration::from_millis(200)).await;
        assert_eq!(stuck, vec!["stubborn"]);
        assert_eq!(tasks.running(), 0);
        // A node that is stopping starts nothing more.
        tasks.spawn("late", std::future::pending());
        assert_eq!(tasks.running(), 0);
    }

    #[tokio::test]
    async fn ended_tasks_leave_the_set() {
        let tasks = Tasks::default();
        for _ in 0..10 {
            tasks.spawn("short", async {});
        }
        // Bounded: ten trivial tasks end within a few yields.
        for _ in 0..1000 {
            if tasks.running() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(tasks.running(), 0);
    }
}
