//! The driver of PAST's operations: it carries out what a `cairn_past` machine asks for
//! (locates through the overlay, requests over the transport, all concurrently) and
//! feeds every answer back, until the machine decides. The decisions are the machine's;
//! this module only moves messages.
//!
//! Owns: [`Node::drive`].
//!
//! May use: [`super`] (the node's `locate` and `ask`) and `cairn_past::operation`.

use std::collections::HashMap;
use std::pin::Pin;

use cairn_past::operation::{self, AskId, Command, Operation, Progress};
use tokio::task::{self, JoinSet};

use super::Node;
use crate::gateway::GatewayError;

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
        Box::pin(self.drive_inner(operation))
    }

    async fn drive_inner<O>(&self, mut operation: O) -> O::Output
    where
        O: Operation<Failure = GatewayError> + Send,
        O::Output: Send,
    {
        let mut running: JoinSet<operation::Input<GatewayError>> = JoinSet::new();
        // Which ask each task answers, so that a task that panicked still answers.
        let mut asks: HashMap<task::Id, AskId> = HashMap::new();
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
                                    operation::Input::Answered(ask, node.ask(&to, request).await)
                                });
                                asks.insert(handle.id(), ask);
                            }
                        }
                    }
                }
            }
            progress = match running.join_next_with_id().await {
                None => return operation.stalled(),
                Some(Ok((id, input))) => {
                    asks.remove(&id);
                    operation.handle(input)
                }
                Some(Err(error)) => {
                    let failure = GatewayError::Task(error.to_string());
                    operation.handle(match asks.remove(&error.id()) {
                        Some(ask) => operation::Input::Answered(ask, Err(failure)),
                        None => operation::Input::Located(Err(failure)),
                    })
                }
            };
        }
    }
}
