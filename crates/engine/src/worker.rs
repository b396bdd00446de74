//! Destination workers: claim deliveries from the store, filter and
//! transform them, send them, record the outcome.
//!
//! # Design
//!
//! Each destination runs `workers` tasks. A worker claims a batch of
//! deliveries from the store as leases; the store only hands out the head of
//! each order key and never two deliveries of one key, so the deliveries of
//! a batch belong to different keys and are processed concurrently (which
//! also lets their completions share group commits), while one patient's
//! messages still go out strictly one after the other, in arrival order.
//!
//! For each delivery the worker parses the stored message and runs, in this
//! order: the channel's filter rules, the channel's transform steps, the
//! destination's filter rules, the destination's transform steps; then it
//! sends the result and completes the delivery as `Filtered` (with the rule
//! that dropped it), `Sent` (with the response and the transformed content)
//! or `Failed` (with the error's class and reason; the store applies the
//! retry policy). Filters and transforms run here, at delivery time, rather
//! than at the source, to keep the acknowledging path short; a retry runs
//! them again, which is why transforms must be deterministic functions of
//! the message.
//!
//! The deliveries of a batch for a `file` destination are written together
//! ([`crate::destinations::FileDestination::send_named`]: one fsync per
//! folder instead of one per file, the contents handed over rather than
//! copied). While a full batch's completions commit, the worker already
//! claims the next batch, so both share one store transaction (the keys
//! still in flight are not claimable, so a patient's next message waits for
//! the completion of the one before). A batch smaller than asked for means
//! the store had nothing else to hand out, so the worker claims again only
//! once it is completed: claiming ahead then would mostly come back empty
//! and be made a second time anyway, for the keys the completions free. A
//! channel and destination without filters or transforms send the stored
//! bytes as they are, without parsing them again.
//!
//! A worker with nothing to claim sleeps until the store reports new work
//! ([`store::Store::changes`]), until the next retry or lease expiry the
//! store announced, or at most [`IDLE_POLL`] (other processes sharing a
//! PostgreSQL store do not wake this one). It never busy-polls.
//!
//! While a batch is being attempted, its leases are extended every third
//! of a lease ([`store::Store::extend_lease`]), so an attempt slower than
//! the lease (a slow receiver, an MLLP send waiting out a reconnect backoff
//! and its ACK timeout) is not taken over and sent a second time by
//! another worker or node meanwhile.
//!
//! On shutdown a worker finishes the batch it holds and stops; deliveries
//! it has not claimed stay queued for the next start.
//!
//! A panic in an attempt (a bug in a connector, a transform step, a flow)
//! is caught at the attempt: it becomes a failed attempt of that delivery
//! alone ([`panicked`]), transient so the retry policy bounds it and the
//! order key stays blocked meanwhile, and the worker goes on. Uncaught, it
//! would end the worker's task: the destination would run one worker
//! short without a word, and the batch's deliveries would wait for their
//! leases to expire.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt as _;
use futures::future::join_all;
use store::{ClaimRequest, ClaimedDelivery, FailureClass, Outcome, Store};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::ContentKind;
use crate::destinations::file::NamedContent;
use crate::destinations::{DeliveryError, DeliveryResponse, Destination, FileDestination, Outbound};
use crate::filter::{Filter, first_rejecting};
use crate::flows::FlowOutput;
use crate::transform::{Staged, Transform, TransformContext};

/// The longest an idle worker sleeps without looking at the store.
pub const IDLE_POLL: Duration = Duration::from_secs(5);

/// The most deliveries one claim takes (each of a different order key)
/// for destinations that can take many at once (files, channels).
pub const CLAIM_BATCH: u32 = 32;

/// How many deliveries one worker of `destination` claims at a time: about
/// what the connector can send at once, so a claimed delivery starts at
/// once instead of waiting for a connection while its lease runs out.
pub fn claim_batch(destination: &crate::destinations::DestinationConfig, workers: usize) -> u32 {
    use crate::destinations::DestinationConfig as D;
    let share = |capacity: usize| u32::try_from(capacity.div_ceil(workers.max(1))).unwrap_or(1).clamp(1, CLAIM_BATCH);
    match destination {
        // One message at a time per pooled connection.
        D::Mllp(c) => share(c.connections),
        // reqwest pools connections itself; keep a modest number in flight.
        D::Http(_) => share(16),
        // A transaction per delivery: a few at once per FHIR server.
        D::Fhir(_) => share(8),
        D::File(_) | D::Channel(_) => CLAIM_BATCH,
    }
}

/// What every destination of a channel applies first.
#[derive(Debug)]
pub struct ChannelStage {
    /// The channel's name.
    pub name: String,
    /// What the channel carries.
    pub content: ContentKind,
    /// Channel filter rules.
    pub filter: Vec<Filter>,
    /// Channel transform steps.
    pub transform: Arc<Transform>,
    /// The channel's flow (partner notifications, send-to-ehr), which
    /// prepares what is sent and follows up after delivery; see
    /// [`crate::flows::FlowStage`].
    pub flow: Option<Arc<dyn crate::flows::FlowStage>>,
    /// Stopped from the API: workers do not claim ([`crate::api::control`]).
    pub switch: Arc<crate::api::control::ChannelSwitch>,
}

/// One destination's runtime, shared by its workers.
#[derive(Debug)]
pub struct DestinationWorkers {
    /// The channel's stage.
    pub channel: Arc<ChannelStage>,
    /// The destination's name within the channel.
    pub name: String,
    /// The built connector.
    pub destination: Destination,
    /// Destination filter rules.
    pub filter: Vec<Filter>,
    /// Destination transform steps.
    pub transform: Arc<Transform>,
    /// Applied by the store on failures.
    pub retry: store::RetryPolicy,
    /// How long a claim is held.
    pub lease: Duration,
    /// Deliveries claimed at once by one worker ([`claim_batch`]).
    pub batch: u32,
    /// Worker tasks to run.
    pub workers: usize,
    /// The store.
    pub store: Arc<dyn Store>,
    /// Names workers in the attempt log: `host/channel/destination/N`.
    pub node: String,
    /// Prometheus handles and health state ([`crate::metrics`]).
    pub metrics: Arc<crate::metrics::DestinationMetrics>,
}

impl DestinationWorkers {
    /// Spawns the worker tasks; they stop when `shutdown` is cancelled.
    pub fn spawn(self: &Arc<Self>, shutdown: &CancellationToken, tasks: &mut tokio::task::JoinSet<()>) {
        for index in 0..self.workers {
            let this = Arc::clone(self);
            let shutdown = shutdown.clone();
            tasks.spawn(async move { this.run(index, shutdown).await });
        }
    }

    async fn run(self: Arc<Self>, index: usize, shutdown: CancellationToken) {
        let request = ClaimRequest {
            channel: self.channel.name.clone(),
            destination: self.name.clone(),
            max: self.batch.max(1),
            lease: self.lease,
            worker: format!("{}/{}/{}/{index}", self.node, self.channel.name, self.name),
        };
        let mut changes = self.store.changes();
        let mut failures: u32 = 0;
        // The next batch, claimed while the previous one was completing.
        let mut claimed: Option<store::Claim> = None;
        debug!(channel = %self.channel.name, destination = %self.name, worker = index, "worker started");
        loop {
            let claim = match claimed.take() {
                // Claimed while the previous batch completed: held, so it is
                // attempted even if a stop or shutdown came in meanwhile.
                Some(c) => c,
                None => {
                    if shutdown.is_cancelled() {
                        break;
                    }
                    if self.channel.switch.is_stopped() {
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = self.channel.switch.running() => continue,
                        }
                    }
                    // Mark the current change count as seen *before*
                    // claiming, so a message committed during the claim
                    // still wakes the wait below.
                    changes.borrow_and_update();
                    match self.store.claim(&request).await {
                        Ok(c) => {
                            failures = 0;
                            c
                        }
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            let delay = error_backoff(failures);
                            warn!(
                                channel = %self.channel.name, destination = %self.name,
                                error = %e.summary(), class = ?e.class(), retry_in = ?delay,
                                "claiming deliveries failed"
                            );
                            tokio::select! {
                                _ = shutdown.cancelled() => break,
                                _ = tokio::time::sleep(delay) => continue,
                            }
                        }
                    }
                }
            };
            if claim.deliveries.is_empty() {
                let wait = until(claim.next_due).min(IDLE_POLL);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = changes.changed() => {
                        if r.is_err() {
                            // The store was closed: nothing more to claim.
                            break;
                        }
                    }
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            // A full batch suggests more is waiting; a smaller one that the
            // store had nothing else to hand out just now.
            let full = claim.deliveries.len() >= request.max as usize;
            // Different order keys: safe to run side by side. A shutdown
            // signal lets the batch finish; its deliveries are complete or,
            // if the process dies first, their leases expire.
            let done = self.attempt_holding_leases(claim.deliveries).await;
            if !full || shutdown.is_cancelled() || self.channel.switch.is_stopped() {
                // Nothing is claimed ahead: the loop claims once the
                // completions are in (or stops, or waits).
                self.complete_all(done).await;
                continue;
            }
            // Complete this batch and claim the next one at the same time:
            // the store commits both in one transaction. Keys of this batch
            // are still leased during that claim, so it never hands out a
            // patient's next message before this one is completed.
            let ((), next) = tokio::join!(self.complete_all(done), self.store.claim(&request));
            match next {
                Ok(next) if !next.deliveries.is_empty() => claimed = Some(next),
                // Nothing but the keys just completed had work, if any:
                // the loop claims again now that they are free.
                Ok(_) => {}
                Err(e) => {
                    // The loop claims again at once (and backs off if that
                    // fails too); the error says no more than the store's.
                    warn!(
                        channel = %self.channel.name, destination = %self.name,
                        error = %e.summary(), class = ?e.class(),
                        "claiming the next deliveries ahead failed; claiming again"
                    );
                }
            }
        }
        debug!(channel = %self.channel.name, destination = %self.name, worker = index, "worker stopped");
    }

    /// [`attempt_batch`](Self::attempt_batch), extending the batch's leases
    /// every third of a lease while it runs: an attempt may take longer
    /// than the lease (an MLLP send waits for a pooled connection, a
    /// reconnect backoff and its `ack_timeout`; a receiver is slow), and a
    /// lease that runs out mid-attempt lets another worker or node claim
    /// the delivery and send it a second time while the first attempt is
    /// still waiting for its answer. A batch done within a third of its
    /// lease, the usual case, extends nothing. Leases are extended by a
    /// whole `lease` each time, so a worker that stops (a crash, a hung
    /// attempt aborted at shutdown) leaves its deliveries to others at most
    /// one lease later.
    async fn attempt_holding_leases(&self, deliveries: Vec<ClaimedDelivery>) -> Vec<Done> {
        let held: Vec<(store::DeliveryId, store::LeaseToken)> = deliveries.iter().map(|d| (d.id, d.lease)).collect();
        let every = self.lease / 3;
        let attempt = self.attempt_batch(deliveries);
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                done = &mut attempt => return done,
                () = tokio::time::sleep(every) => {}
            }
            // The attempt goes on while the store extends the leases.
            let extend = join_all(held.iter().map(|&(id, lease)| self.extend_lease(id, lease)));
            tokio::select! {
                done = &mut attempt => return done,
                _ = extend => {}
            }
        }
    }

    async fn extend_lease(&self, id: store::DeliveryId, lease: store::LeaseToken) {
        match self.store.extend_lease(id, lease, self.lease).await {
            Ok(_) => debug!(channel = %self.channel.name, destination = %self.name, delivery = %id, "lease extended"),
            Err(e) => warn!(
                channel = %self.channel.name, destination = %self.name, delivery = %id,
                error = %e.summary(), "extending the lease of a delivery in progress failed"
            ),
        }
    }

    /// Makes one attempt at each delivery of a claimed batch (each of a
    /// different order key, so side by side), returning what to record.
    async fn attempt_batch(&self, deliveries: Vec<ClaimedDelivery>) -> Vec<Done> {
        let started = std::time::Instant::now();
        let file = match &self.destination {
            Destination::File(f) if self.channel.flow.is_none() && deliveries.len() > 1 => f,
            _ => {
                return join_all(deliveries.into_iter().map(|d| async move {
                    let for_flow = self.channel.flow.as_ref().map(|_| d.clone());
                    let head = Head::of(&d);
                    let attempt = match AssertUnwindSafe(self.process(d)).catch_unwind().await {
                        Ok(attempt) => attempt,
                        Err(panic) => self.panicked(head.message_id, head.attempt, "attempt", panic.as_ref()),
                    };
                    Done { head, attempt, for_flow, took: started.elapsed() }
                }))
                .await;
            }
        };
        // Files: filter and transform each, then write them all at once.
        let prepared = join_all(deliveries.iter().map(|d| async move {
            match AssertUnwindSafe(self.prepare(d, None)).catch_unwind().await {
                Ok(prepared) => prepared,
                Err(panic) => Err(self.panicked(d.message_id, d.attempt, "attempt", panic.as_ref())),
            }
        }))
        .await;
        let mut done: Vec<Option<Done>> = Vec::with_capacity(deliveries.len());
        let mut ready = Vec::with_capacity(deliveries.len());
        let mut slots = Vec::with_capacity(deliveries.len());
        for (d, p) in deliveries.iter().zip(prepared) {
            match p {
                Ok(r) => {
                    slots.push(done.len());
                    ready.push((d, r));
                    done.push(None);
                }
                Err(attempt) => {
                    done.push(Some(Done { head: Head::of(d), attempt, for_flow: None, took: started.elapsed() }))
                }
            }
        }
        let heads: Vec<Head> = ready.iter().map(|(d, _)| Head::of(d)).collect();
        let attempts = match AssertUnwindSafe(self.write_files(file, ready)).catch_unwind().await {
            Ok(attempts) => attempts,
            // Files written before the panic are rewritten by the retries,
            // as after a crash (names are stable across attempts).
            Err(panic) => {
                heads.iter().map(|h| self.panicked(h.message_id, h.attempt, "file batch", panic.as_ref())).collect()
            }
        };
        for ((slot, head), attempt) in slots.into_iter().zip(heads).zip(attempts) {
            done[slot] = Some(Done { head, attempt, for_flow: None, took: started.elapsed() });
        }
        done.into_iter().flatten().collect()
    }

    /// Names and writes the files of `ready` together, handing their
    /// contents over to the destination (no copy of each body), and returns
    /// one attempt for each, in order.
    async fn write_files(&self, file: &FileDestination, ready: Vec<(&ClaimedDelivery, Ready)>) -> Vec<Attempt> {
        let mut attempts: Vec<Option<Attempt>> = Vec::with_capacity(ready.len());
        let mut files = Vec::with_capacity(ready.len());
        let mut waiting = Vec::with_capacity(ready.len());
        for (d, r) in ready {
            let message_id = d.message_id.to_string();
            let name = file.file_name(&r.outbound(d, &message_id, &self.channel.name));
            match name {
                Ok(name) => {
                    waiting.push((attempts.len(), d, r.transformed));
                    files.push(NamedContent { name, content: r.content });
                    attempts.push(None);
                }
                Err(e) => attempts.push(Some(self.sent(d, r.transformed, Err(e)))),
            }
        }
        let written = file.send_named(files).await;
        for ((slot, d, transformed), result) in waiting.into_iter().zip(written) {
            attempts[slot] = Some(self.sent(d, transformed, result));
        }
        attempts.into_iter().map(|a| a.unwrap_or_else(no_answer)).collect()
    }

    /// Records the outcomes of a batch (side by side: they share commits).
    async fn complete_all(&self, done: Vec<Done>) {
        join_all(done.into_iter().map(|d| self.record(d))).await;
    }

    /// Records the outcome of one attempt with the store.
    async fn record(&self, done: Done) {
        let Done { head, attempt: Attempt { outcome, retry_after }, for_flow, took } = done;
        let Head { id, lease, message_id, attempt } = head;
        self.metrics.attempt(&outcome, took);
        let summary = describe(&outcome);
        let reason = match &outcome {
            Outcome::Failed { reason, .. } => Some(reason.clone()),
            _ => None,
        };
        match self.store.complete_with_retry_after(id, lease, outcome, &self.retry, retry_after).await {
            Ok(done) => {
                self.metrics.completed(done.state);
                if let (Some(flow), Some(d), Some(reason), store::DeliveryState::Error | store::DeliveryState::Dead) =
                    (&self.channel.flow, &for_flow, &reason, done.state)
                    && let Err(panic) = AssertUnwindSafe(flow.failed(d, &self.name, reason)).catch_unwind().await
                {
                    // The outcome is recorded; only the flow's follow-up
                    // was lost, and the worker must go on.
                    let _ = self.panicked(message_id, attempt, "flow follow-up", panic.as_ref());
                }
                debug!(
                    channel = %self.channel.name, destination = %self.name, %message_id,
                    delivery = %id, attempt, outcome = summary, state = done.state.as_str(),
                    "delivery completed"
                );
                if matches!(done.state, store::DeliveryState::Error | store::DeliveryState::Dead) {
                    warn!(
                        channel = %self.channel.name, destination = %self.name, %message_id,
                        delivery = %id, attempt, state = done.state.as_str(),
                        "delivery failed for good"
                    );
                }
            }
            Err(store::StoreError::LeaseLost(_)) => {
                // Another worker took it over after our lease ran out; its
                // attempt counts, ours is void.
                warn!(channel = %self.channel.name, destination = %self.name, %message_id, delivery = %id,
                      "lease lost before completion; the delivery will be attempted again");
            }
            Err(e) => {
                warn!(channel = %self.channel.name, destination = %self.name, %message_id, delivery = %id,
                      error = %e.summary(), "recording a delivery outcome failed; it will be attempted again when the lease expires");
            }
        }
    }

    /// Filters, transforms and sends one delivery, returning what to record.
    /// Never panics on stored content: a message that no longer parses, a
    /// failing script, an unreachable receiver all become outcomes.
    pub async fn process(&self, delivery: ClaimedDelivery) -> Attempt {
        let Some(flow) = self.channel.flow.clone() else { return self.process_content(delivery, None).await };
        let output = match flow.prepare(&delivery, &self.name).await {
            Ok(output) => output,
            Err(e) => {
                info!(
                    channel = %self.channel.name, destination = %self.name, message_id = %delivery.message_id,
                    attempt = delivery.attempt, kind = e.kind(), "flow did not prepare the delivery"
                );
                return e.to_outcome().into();
            }
        };
        // The rest of the attempt works on the flow's output as if stored.
        let prepared =
            ClaimedDelivery { raw: output.content.clone(), content_type: output.content_type.clone(), ..delivery };
        let attempt = self.process_content(prepared.clone(), Some(&output)).await;
        match &attempt.outcome {
            Outcome::Sent { response: Some(response), transformed } => {
                let sent =
                    FlowOutput { content: transformed.clone().unwrap_or_else(|| output.content.clone()), ..output };
                if let Err(e) = flow.delivered(&prepared, &self.name, &sent, response).await {
                    warn!(
                        channel = %self.channel.name, destination = %self.name, message_id = %prepared.message_id,
                        kind = e.kind(), "the flow's follow-up after delivery failed"
                    );
                }
            }
            // A filter or route step dropped the flow's output: final, so a
            // flow waiting for every destination must hear of it too.
            Outcome::Filtered { .. } => {
                if let Err(e) = flow.filtered(&prepared, &self.name).await {
                    warn!(
                        channel = %self.channel.name, destination = %self.name, message_id = %prepared.message_id,
                        kind = e.kind(), "the flow's follow-up after a filtered delivery failed"
                    );
                }
            }
            _ => {}
        }
        attempt
    }

    /// Filters, transforms and sends `delivery`'s content (the flow's output
    /// when `flowed`, which is then always kept as the transformed content).
    async fn process_content(&self, delivery: ClaimedDelivery, flowed: Option<&FlowOutput>) -> Attempt {
        let ready = match self.prepare(&delivery, flowed).await {
            Ok(r) => r,
            Err(attempt) => return attempt,
        };
        if let Destination::File(file) = &self.destination {
            // Through the batch path, which takes the content over.
            let mut attempts = self.write_files(file, vec![(&delivery, ready)]).await;
            return attempts.pop().unwrap_or_else(no_answer);
        }
        let message_id = delivery.message_id.to_string();
        let result = self.destination.send(&ready.outbound(&delivery, &message_id, &self.channel.name)).await;
        self.sent(&delivery, ready.transformed, result)
    }

    /// Filters and transforms `delivery`'s content: what to send, or the
    /// outcome when there is nothing to send (filtered, failed transform).
    async fn prepare(&self, delivery: &ClaimedDelivery, flowed: Option<&FlowOutput>) -> Result<Ready, Attempt> {
        let kind = match flowed {
            Some(o) if o.content_type == crate::destinations::HL7_V2_CONTENT_TYPE => ContentKind::Hl7v2,
            Some(_) => ContentKind::Json,
            None => self.channel.content,
        };
        match kind {
            ContentKind::Hl7v2 => match self.prepare_hl7(delivery).await {
                Prepared::Send { content, content_type, changed } => {
                    let transformed = (changed || flowed.is_some()).then(|| content.clone());
                    Ok(Ready { content, transformed, content_type })
                }
                Prepared::Filtered(rule) => Err(Outcome::Filtered { rule }.into()),
                Prepared::Failed(reason) => {
                    self.metrics.error("transform");
                    Err(Outcome::Failed { class: FailureClass::Permanent, reason, response: None }.into())
                }
            },
            ContentKind::Json | ContentKind::Fhir if flowed.is_none() && self.has_steps() => {
                // mapping_rules / fhir_to_hl7 and what follows them.
                let mut ctx = TransformContext::new(&self.channel.name, &delivery.message_id.to_string());
                ctx.received_at = Some(delivery.received_at);
                let stages = [
                    (&self.channel.filter[..], &self.channel.transform, "channel"),
                    (&self.filter[..], &self.transform, "destination"),
                ];
                match crate::transform::run_json_stages(&delivery.raw, stages, &self.name, ctx).await {
                    Staged::Send { content, content_type, changed } => {
                        Ok(Ready { transformed: changed.then(|| content.clone()), content, content_type })
                    }
                    Staged::Filtered(rule) => Err(Outcome::Filtered { rule }.into()),
                    Staged::Failed(reason) => {
                        self.metrics.error("transform");
                        Err(Outcome::Failed { class: FailureClass::Permanent, reason, response: None }.into())
                    }
                }
            }
            ContentKind::Json | ContentKind::Fhir => Ok(Ready {
                content: delivery.raw.clone(),
                transformed: flowed.map(|o| o.content.clone()),
                content_type: None,
            }),
        }
    }

    /// The attempt to record for a delivery whose attempt panicked in
    /// `stage`: failed, transient (a panic may come from a passing state,
    /// such as a race; a deterministic one ends as the retry policy says
    /// after its attempts, like any failure that does not go away), with a
    /// reason free of content. The panic's own text may quote the message
    /// (a slicing panic quotes the string it slices), so it is logged at
    /// debug level only.
    fn panicked(
        &self,
        message_id: store::MessageId,
        attempt: u32,
        stage: &str,
        panic: &(dyn std::any::Any + Send),
    ) -> Attempt {
        self.metrics.error("panic");
        warn!(
            channel = %self.channel.name, destination = %self.name, %message_id, attempt, stage,
            "internal error: a delivery attempt panicked; recorded as a failed attempt, the worker goes on"
        );
        let text = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        debug!(channel = %self.channel.name, destination = %self.name, %message_id, panic = %text, "panic message");
        Outcome::Failed {
            class: FailureClass::Transient,
            reason: format!(
                "internal error: the {stage} panicked (a bug in Plexus; the panic message is logged at debug level)"
            ),
            response: None,
        }
        .into()
    }

    /// True when the channel or this destination has filter rules or
    /// transform steps.
    fn has_steps(&self) -> bool {
        !(self.channel.filter.is_empty()
            && self.channel.transform.is_empty()
            && self.filter.is_empty()
            && self.transform.is_empty())
    }

    /// The outcome of sending `delivery`.
    fn sent(
        &self,
        delivery: &ClaimedDelivery,
        transformed: Option<Vec<u8>>,
        result: Result<DeliveryResponse, DeliveryError>,
    ) -> Attempt {
        match result {
            Ok(response) => Outcome::Sent { response: Some(response.to_store()), transformed }.into(),
            Err(e) => {
                self.metrics.error(e.kind());
                // The error's text may quote the receiver's answer: it goes
                // to the store (read through the API), the log gets its kind.
                info!(
                    channel = %self.channel.name, destination = %self.name, message_id = %delivery.message_id,
                    attempt = delivery.attempt, kind = e.kind(), class = ?e.class(),
                    "delivery attempt failed"
                );
                // A receiver that said when to come back (HTTP Retry-After,
                // a channel still starting) is not retried sooner.
                Attempt { outcome: e.to_outcome(), retry_after: e.retry_after() }
            }
        }
    }

    async fn prepare_hl7(&self, delivery: &ClaimedDelivery) -> Prepared {
        if !self.has_steps() {
            // Nothing to apply: the stored bytes are what an unchanged
            // message encodes to, so there is no need to parse them again.
            return Prepared::Send { content: delivery.raw.clone(), content_type: None, changed: false };
        }
        let mut message = match hl7v2::Message::parse(delivery.raw.as_slice()) {
            Ok(m) => m,
            Err(e) => return Prepared::Failed(format!("the stored message does not parse: {e}")),
        };
        let mut changed = false;
        // What a conversion step made of the message: sent instead of it.
        let mut converted = None;
        // One context for both stages, so the channel map a channel script
        // fills is there for the destination's steps (as in Mirth).
        let mut ctx = TransformContext::new(&self.channel.name, &delivery.message_id.to_string());
        let stages: [(&[Filter], &Arc<Transform>, &str); 2] = [
            (&self.channel.filter, &self.channel.transform, "channel"),
            (&self.filter, &self.transform, "destination"),
        ];
        for (filter, transform, level) in stages {
            if let Some(rule) = first_rejecting(filter, &message) {
                return Prepared::Filtered(format!("{level} filter: {}", rule.source()));
            }
            if transform.is_empty() {
                continue;
            }
            match Arc::clone(transform).apply_blocking(message, ctx).await {
                Ok((m, c, mut outcome)) => {
                    message = m;
                    ctx = c;
                    changed = true;
                    converted = outcome.take_converted().or(converted);
                    if !outcome.routes_to(&self.name) {
                        let by = outcome.routed_by().unwrap_or(level);
                        return Prepared::Filtered(format!("routed elsewhere by {by}"));
                    }
                }
                Err(e) => return Prepared::Failed(format!("{level} transform: {e}")),
            }
        }
        match converted {
            Some(c) => Prepared::Send { content: c.content, content_type: Some(c.content_type), changed },
            None => Prepared::Send { content: message.encode(), content_type: None, changed },
        }
    }
}

/// What [`DestinationWorkers::prepare`] made of a delivery: the content to
/// send.
struct Ready {
    content: Vec<u8>,
    /// The content to keep with the attempt when it differs from the stored
    /// message (or came from a flow).
    transformed: Option<Vec<u8>>,
    /// Set when a conversion step made the content.
    content_type: Option<&'static str>,
}

impl Ready {
    fn outbound<'a>(&'a self, delivery: &'a ClaimedDelivery, message_id: &'a str, channel: &'a str) -> Outbound<'a> {
        Outbound {
            content: &self.content,
            // A conversion step (hl7_to_fhir) changed what is sent.
            content_type: self.content_type.unwrap_or(&delivery.content_type),
            message_id,
            channel,
            control_id: delivery.control_id.as_deref(),
            received_at: delivery.received_at,
        }
    }
}

/// What identifies a delivery's attempt to the store.
struct Head {
    id: store::DeliveryId,
    lease: store::LeaseToken,
    message_id: store::MessageId,
    attempt: u32,
}

impl Head {
    fn of(d: &ClaimedDelivery) -> Self {
        Head { id: d.id, lease: d.lease, message_id: d.message_id, attempt: d.attempt }
    }
}

/// One attempt made, waiting to be recorded.
struct Done {
    head: Head,
    attempt: Attempt,
    /// The delivery, for the flow's `failed` hook (only with a flow).
    for_flow: Option<ClaimedDelivery>,
    /// How long the attempt took (for the metrics).
    took: std::time::Duration,
}

enum Prepared {
    /// `content_type` is set when a conversion step made the content.
    Send {
        content: Vec<u8>,
        content_type: Option<&'static str>,
        changed: bool,
    },
    Filtered(String),
    Failed(String),
}

/// What one delivery attempt came to: the outcome to record and, when the
/// receiver said when to come back (HTTP `Retry-After`), how long to wait at
/// least before the retry.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// What to record.
    pub outcome: Outcome,
    /// The receiver's wish; the store's backoff applies when longer.
    pub retry_after: Option<Duration>,
}

impl From<Outcome> for Attempt {
    fn from(outcome: Outcome) -> Self {
        Attempt { outcome, retry_after: None }
    }
}

/// The outcome of a file that the destination did not answer for (it
/// answers every file; this keeps a bug from losing a delivery): retried.
fn no_answer() -> Attempt {
    Outcome::Failed {
        class: FailureClass::Transient,
        reason: "the file destination gave no answer".to_owned(),
        response: None,
    }
    .into()
}

fn describe(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Sent { .. } => "sent",
        Outcome::Filtered { .. } => "filtered",
        Outcome::Failed { class: FailureClass::Transient, .. } => "failed (transient)",
        Outcome::Failed { class: FailureClass::Permanent, .. } => "failed (permanent)",
    }
}

/// How long until `due` (zero if past, [`IDLE_POLL`] if none).
fn until(due: Option<DateTime<Utc>>) -> Duration {
    match due {
        Some(t) => (t - Utc::now()).to_std().unwrap_or(Duration::ZERO),
        None => IDLE_POLL,
    }
}

/// Backoff after consecutive store errors: 100 ms doubling to 5 s.
fn error_backoff(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1 << failures.min(7).saturating_sub(1));
    Duration::from_millis(ms.min(5000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_backoff_grows_and_caps() {
        assert_eq!(error_backoff(1), Duration::from_millis(100));
        assert_eq!(error_backoff(2), Duration::from_millis(200));
        assert_eq!(error_backoff(6), Duration::from_millis(3200));
        assert_eq!(error_backoff(60), Duration::from_millis(5000));
    }

    #[test]
    fn claim_batches_follow_what_the_connector_can_send_at_once() {
        let mllp: crate::destinations::DestinationConfig =
            toml::from_str("type = \"mllp\"\naddress = \"h:1\"\nconnections = 4").unwrap();
        assert_eq!(claim_batch(&mllp, 1), 4);
        assert_eq!(claim_batch(&mllp, 2), 2);
        assert_eq!(claim_batch(&mllp, 8), 1);
        let file: crate::destinations::DestinationConfig =
            toml::from_str("type = \"file\"\ndirectory = \"o\"").unwrap();
        assert_eq!(claim_batch(&file, 4), CLAIM_BATCH);
    }

    /// A `channel` destination's injector is the one connector code a test
    /// can supply: this one panics on its first call, quoting the content
    /// as a slicing panic would.
    struct PanicsOnce {
        calls: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl crate::destinations::ChannelInjector for PanicsOnce {
        async fn inject(
            &self,
            m: crate::destinations::Injected<'_>,
        ) -> Result<crate::destinations::Injection, crate::destinations::InjectError> {
            let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if call == 0 {
                panic!("a bug quoting {}", String::from_utf8_lossy(m.content));
            }
            Ok(crate::destinations::Injection {
                message_id: format!("t{call}"),
                ack_code: Some("AA".into()),
                duplicate: false,
            })
        }
    }

    fn adt(control_id: &str, mrn: &str) -> store::NewMessage {
        let raw = format!("MSH|^~\\&|HIS|H|LAB|L|20260101120000||ADT^A01|{control_id}|P|2.5\rPID|1||{mrn}||DOE^JANE\r");
        store::NewMessage {
            channel: "adt-in".into(),
            received_at: Utc::now(),
            peer_addr: None,
            content_type: crate::destinations::HL7_V2_CONTENT_TYPE.into(),
            raw: raw.into_bytes(),
            control_id: Some(control_id.into()),
            sender_key: "HIS^H".into(),
            message_type: Some("ADT".into()),
            event: Some("A01".into()),
            order_key: Some(mrn.into()),
            patient_ids: vec![mrn.into()],
            ack: None,
            deliveries: vec![store::NewDelivery::queued("copy")],
        }
    }

    /// Regression: a panic inside an attempt ended the worker's task, so
    /// the destination lost a worker without a word and the delivery sat
    /// leased. Now the attempt is a failed one with a content-free reason,
    /// and the one worker goes on: it delivers the next message and retries
    /// the one that panicked. Fails before the fix (the second message is
    /// never delivered, the task ends with a panic).
    #[tokio::test]
    async fn a_panicking_attempt_is_recorded_and_the_worker_goes_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/plexus.db", dir.path().display());
        let store = store::open(&url, store::StoreOptions::default()).await.expect("store opened");
        let injector = Arc::new(PanicsOnce { calls: Default::default() });
        let ctx = crate::destinations::BuildContext::new("adt-in", "copy").with_injector(injector.clone());
        let destination = crate::destinations::ChannelConfig { channel: "lab".into() }.build(&ctx).expect("built");
        let workers = Arc::new(DestinationWorkers {
            channel: Arc::new(ChannelStage {
                name: "adt-in".into(),
                content: ContentKind::Hl7v2,
                filter: Vec::new(),
                transform: Arc::default(),
                flow: None,
                switch: Arc::default(),
            }),
            name: "copy".into(),
            destination: Destination::Channel(destination),
            filter: Vec::new(),
            transform: Arc::default(),
            retry: store::RetryPolicy { initial_backoff: Duration::from_millis(50), ..Default::default() },
            lease: Duration::from_secs(30),
            batch: 1,
            workers: 1,
            store: Arc::clone(&store),
            node: "test".into(),
            metrics: crate::metrics::Telemetry::new(Duration::from_secs(60)).destination("adt-in", "copy"),
        });
        let first = match store.accept(adt("C1", "MRN-SECRET-1")).await.expect("stored") {
            store::Accepted::Stored { id } => id,
            other => panic!("{other:?}"),
        };
        let shutdown = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        workers.spawn(&shutdown, &mut tasks);
        let second = match store.accept(adt("C2", "MRN-2")).await.expect("stored") {
            store::Accepted::Stored { id } => id,
            other => panic!("{other:?}"),
        };
        let delivery = |id| {
            let store = Arc::clone(&store);
            async move { store.get_message(id).await.expect("read").expect("found").deliveries.remove(0) }
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while delivery(first).await.state != store::DeliveryState::Sent
            || delivery(second).await.state != store::DeliveryState::Sent
        {
            assert!(
                std::time::Instant::now() < deadline,
                "both deliveries should be sent: {:?} / {:?}",
                delivery(first).await,
                delivery(second).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = delivery(first).await.attempt_log;
        let outcomes: Vec<&str> = log.iter().map(|a| a.outcome.as_str()).collect();
        assert_eq!(outcomes, ["failed", "sent"], "{log:?}");
        assert_eq!(log[0].error_class, Some(FailureClass::Transient));
        let reason = log[0].reason.as_deref().unwrap_or_default();
        assert!(reason.starts_with("internal error: the attempt panicked"), "{reason}");
        assert!(!reason.contains("MRN-SECRET-1"), "the panic's text stays out of the reason: {reason}");
        shutdown.cancel();
        while let Some(ended) = tasks.join_next().await {
            assert!(ended.is_ok(), "the worker task ended normally: {ended:?}");
        }
        store.close().await;
    }

    #[test]
    fn until_is_zero_for_past_times() {
        assert_eq!(until(Some(Utc::now() - chrono::TimeDelta::seconds(3))), Duration::ZERO);
        assert_eq!(until(None), IDLE_POLL);
        assert!(until(Some(Utc::now() + chrono::TimeDelta::seconds(2))) <= Duration::from_secs(2));
    }
}
