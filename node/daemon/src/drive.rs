//! The driver of PAST's operations: it carries out what a `cairn_past` machine asks for
//! (locates through the overlay, requests over the transport, paces through the repair
//! budget, all concurrently) and feeds every answer back, until the machine decides.
//! The decisions are the machine's; this module only moves messages.
//!
//! Owns: [`Node::drive`] and [`Node::drive_maintenance`].
//!
//! May use: [`super`] (the node's `locate`, `ask` and repair limiter) and
//! `cairn_past::operation`.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use cairn_past::operation::{self, AskId, Command, Operation, Progress};
use tokio::task::{self, JoinSet};

use super::Node;
use crate::gateway::GatewayError;

type Input = operation::Input<GatewayError>;

impl Node {
    /// Runs `operation` to its decision: every command it returns runs as a task of its
    /// own, and each answer (or the failure that stands for it) is fed back as it
    /// comes. What is still running when the operation decides is aborted.
    ///
    /// The future is boxed and `Send` by declaration: a store asked of this node may
    /// divert, which drives another operation that asks again, and the compiler cannot
    /// see through that cycle on its own.
    pub fn drive<'a, O>(
        &'a self,
        operation: O,
    ) -> Pin<Box<dyn Future<Output = O::Output> + Send + 'a>>
    where
        O: Operation<Failure = GatewayError> + Send + 'a,
        O::Output: Send,
    {
        Box::pin(
            self.drive_inner(operation, None, |mut operation: O, input| {
                let progress = operation.handle(input);
                std::future::ready((operation, progress))
            }),
        )
    }

    /// Runs a maintenance machine to its decision, as [`Node::drive`] does, but with
    /// every ask bounded by the maintenance `call_timeout`, and every
    /// [`Operation::handle`] on the blocking pool (regeneration decodes and re-encodes a
    /// block inside `handle`).
    pub fn drive_maintenance<'a, O>(
        &'a self,
        operation: O,
    ) -> Pin<Box<dyn Future<Output = O::Output> + Send + 'a>>
    where
        O: Operation<Failure = GatewayError> + Send + 'static,
        O::Output: Send + 'static,
    {
        let timeout = self.inner.config.maintenance.call_timeout;
        Box::pin(self.drive_inner(
            operation,
            Some(timeout),
            |mut operation: O, input| async move {
                let handled = task::spawn_blocking(move || {
                    let progress = operation.handle(input);
                    (operation, progress)
                })
                .await;
                match handled {
                    Ok(handled) => handled,
                    // A panic in the machine is a bug: it goes on up, as it would inline.
                    Err(error) => std::panic::resume_unwind(error.into_panic()),
                }
            },
        ))
    }

    /// The loop of both drivers: `handle` feeds one input to the machine (inline, or
    /// on the blocking pool) and gives it back with its progress.
    async fn drive_inner<O, H, F>(
        &self,
        mut operation: O,
        ask_timeout: Option<Duration>,
        mut handle: H,
    ) -> O::Output
    where
        O: Operation<Failure = GatewayError> + Send,
        O::Output: Send,
        H: FnMut(O, Input) -> F + Send,
        F: Future<Output = (O, Progress<O::Output>)> + Send,
    {
        let mut running: JoinSet<Input> = JoinSet::new();
        // Which ask or pace each task answers, so that a task that panicked still
        // answers.
        let mut asks: HashMap<task::Id, (AskId, bool)> = HashMap::new();
        let mut progress = operation.start();
        loop {
            match progress {
                Progress::Done(output) => return output,
                Progress::Continue(commands) => {
                    for command in commands {
                        let node = self.clone();
                        match command {
                            Command::Locate { key, count } => {
                                running.spawn(async move {
                                    operation::Input::Located(node.locate(key.0, count).await)
                                });
                            }
                            Command::Ask { ask, to, request } => {
                                let handle = running.spawn(async move {
                                    let asked = node.ask(&to, request);
                                    let answer = match ask_timeout {
                                        None => asked.await,
                                        Some(after) => {
                                            tokio::time::timeout(after, asked).await.unwrap_or(Err(
                                                GatewayError::Timeout { node: to.id, after },
                                            ))
                                        }
                                    };
                                    operation::Input::Answered(ask, answer)
                                });
                                asks.insert(handle.id(), (ask, false));
                            }
                            Command::Pace { ask, bytes } => {
                                let handle = running.spawn(async move {
                                    node.inner.repair_limiter.take(bytes).await;
                                    operation::Input::Paced(ask)
                                });
                                asks.insert(handle.id(), (ask, true));
                            }
                        }
                    }
                }
            }
            let input = match running.join_next_with_id().await {
                None => return operation.stalled(),
                Some(Ok((id, input))) => {
                    asks.remove(&id);
                    input
                }
                Some(Err(error)) => {
                    let failure = GatewayError::Task(error.to_string());
                    match asks.remove(&error.id()) {
                        Some((ask, false)) => operation::Input::Answered(ask, Err(failure)),
                        Some((ask, true)) => operation::Input::Paced(ask),
                        None => operation::Input::Located(Err(failure)),
                    }
                }
            };
            let (back, next) = handle(operation, input).await;
            operation = back;
            progress = next;
        }
    }
}
