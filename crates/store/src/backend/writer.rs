//! Group commit: one writer task per store owns one connection, takes every
//! request waiting in its channel at that moment, runs them in one
//! transaction and answers each caller only after COMMIT returned.
//!
//! The batch grows by itself under load: while one transaction is being
//! fsynced, new requests pile up in the channel and all go into the next one.
//! With a single caller it degenerates into one transaction per request, so
//! latency never waits for a batch to fill.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::common::Stamp;
use crate::model::*;
use crate::{Result, StoreError};

/// Where an answer goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// A request for the writer. PostgreSQL and MariaDB send only accepts this
/// way (their other writes run on pooled connections, concurrently with
/// other processes); SQLite sends every write, since a SQLite database has
/// one writer at a time anyway and waiting in SQLite's busy handler would
/// cost milliseconds.
#[derive(Debug)]
pub(crate) enum Op {
    Accept(NewMessage, Reply<Accepted>),
    /// An accept whose id and digest the caller computed (SQLite, see
    /// [`Stamp`]).
    AcceptStamped(NewMessage, Stamp, Reply<Accepted>),
    Claim(ClaimRequest, Reply<Claim>),
    Complete {
        delivery: DeliveryId,
        lease: LeaseToken,
        outcome: Outcome,
        policy: RetryPolicy,
        retry_after: Option<Duration>,
        reply: Reply<Completion>,
    },
    Extend {
        delivery: DeliveryId,
        lease: LeaseToken,
        by: Duration,
        reply: Reply<chrono::DateTime<chrono::Utc>>,
    },
    Replay(ReplayRequest, Reply<ReplayResult>),
    DeadLetter {
        delivery: DeliveryId,
        actor: String,
        reason: Option<String>,
        reply: Reply<()>,
    },
    Audit(NewAuditEvent, Reply<()>),
    Retention(RetentionRequest, Reply<RetentionBatch>),
}

impl Op {
    /// Answers the request with an error without running it.
    pub(crate) fn fail(self, e: StoreError) {
        match self {
            Op::Accept(_, r) => drop(r.send(Err(e))),
            Op::AcceptStamped(_, _, r) => drop(r.send(Err(e))),
            Op::Claim(_, r) => drop(r.send(Err(e))),
            Op::Complete { reply, .. } => drop(reply.send(Err(e))),
            Op::Extend { reply, .. } => drop(reply.send(Err(e))),
            Op::Replay(_, r) => drop(r.send(Err(e))),
            Op::DeadLetter { reply, .. } => drop(reply.send(Err(e))),
            Op::Audit(_, r) => drop(r.send(Err(e))),
            Op::Retention(_, r) => drop(r.send(Err(e))),
        }
    }
}

/// The outcome of one request inside a batch, to be sent once the batch's
/// fate is known: the request's own result if the batch committed, the
/// batch's error otherwise.
pub(crate) struct Done(Box<dyn FnOnce(Option<Arc<StoreError>>) + Send>);

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Done")
    }
}

impl Done {
    pub(crate) fn new<T: Send + 'static>(reply: Reply<T>, result: Result<T>) -> Done {
        Done(Box::new(move |batch_error| {
            let answer = match (batch_error, result) {
                (None, r) => r,
                (Some(_), Err(own)) => Err(own),
                (Some(e), Ok(_)) => Err(StoreError::Batch(e)),
            };
            // The caller may have gone away (timeout, shutdown): nothing to do.
            let _ = reply.send(answer);
        }))
    }

    /// Sends the answer; `batch_error` is `Some` if the transaction did not
    /// commit.
    pub(crate) fn send(self, batch_error: Option<Arc<StoreError>>) {
        (self.0)(batch_error)
    }
}

/// Waits for the next request, then takes whatever else is already waiting,
/// up to `max`. `None` once the channel is closed and empty.
pub(crate) async fn next_batch<T>(rx: &mut mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = Vec::with_capacity(max.min(64));
    batch.push(first);
    while batch.len() < max {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
    Some(batch)
}

/// Sends one accept per message to the writer, in order, then waits for
/// every answer. The writer takes requests in channel order and commits its
/// batches one after the other, so a message is never committed before one
/// sent ahead of it; sending them all before waiting lets them share a
/// transaction instead of paying one commit each. An invalid message is
/// answered at once and not sent. `make` builds each request.
pub(crate) async fn accept_many(
    tx: &mpsc::Sender<Op>,
    messages: Vec<NewMessage>,
    validate: impl Fn(&NewMessage) -> Result<()>,
    make: impl Fn(NewMessage, Reply<Accepted>) -> Op,
) -> Vec<Result<Accepted>> {
    enum Pending {
        Answered(Result<Accepted>),
        Waiting(oneshot::Receiver<Result<Accepted>>),
    }
    let mut pending = Vec::with_capacity(messages.len());
    for message in messages {
        if let Err(e) = validate(&message) {
            pending.push(Pending::Answered(Err(e)));
            continue;
        }
        let (reply, answer) = oneshot::channel();
        match tx.send(make(message, reply)).await {
            Ok(()) => pending.push(Pending::Waiting(answer)),
            Err(_) => pending.push(Pending::Answered(Err(StoreError::Closed))),
        }
    }
    let mut answers = Vec::with_capacity(pending.len());
    for p in pending {
        answers.push(match p {
            Pending::Answered(r) => r,
            // See `call` for a dropped reply.
            Pending::Waiting(answer) => answer.await.unwrap_or(Err(StoreError::Closed)),
        });
    }
    answers
}

/// Sends `op` to the writer and waits for its answer.
pub(crate) async fn call<T>(tx: &mpsc::Sender<Op>, make: impl FnOnce(Reply<T>) -> Op) -> Result<T> {
    let (reply, answer) = oneshot::channel();
    tx.send(make(reply)).await.map_err(|_| StoreError::Closed)?;
    // A dropped reply means the writer stopped without answering (shutdown
    // mid-batch): the request may or may not have committed, and the caller
    // must treat it as not acknowledged.
    answer.await.unwrap_or(Err(StoreError::Closed))
}
