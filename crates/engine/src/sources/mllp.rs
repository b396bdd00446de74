//! The `mllp` source: HL7 v2 over MLLP (TCP, optional TLS and client
//! certificates).
//!
//! ```toml
//! [channels.adt-in.source]
//! type = "mllp"
//! listen = "0.0.0.0:2575"
//! max_connections = 256
//! max_message_size = "16MiB"
//! idle_timeout = "5m"
//! frame_timeout = "60s"
//! # tls = { cert_file = "server.pem", key_file = "server.key", client_ca_file = "partners.pem" }
//! ```
//!
//! # Design (after mini-redis)
//!
//! [`MllpSource::run`] accepts connections until the shutdown signal. A
//! semaphore is acquired *before* `accept()`, so at most `max_connections`
//! are served and the rest wait in the kernel's backlog instead of costing
//! memory; accept errors (out of file descriptors ...) back off instead of
//! spinning. Each connection is its own task with one read buffer.
//!
//! A connection reads bytes, and hands every complete frame in its buffer
//! (pipelining: a sender may write several messages before reading any
//! ACK) to the channel's ingest path *together*
//! ([`ChannelIngest::ingest_hl7_many`]), then writes their ACKs, in order,
//! in one write. Each frame is stored before its ACK is written (the ingest
//! path returns only after the commit). The frames of one read are
//! committed in arrival order, most often in one transaction with other
//! connections' messages (group commit), so a sender with a window of N
//! pays one commit per N messages rather than N; the next read waits for
//! those answers, which keeps arrival order for the per-patient queues.
//!
//! Bad input never takes the server down:
//! - bytes outside frames are skipped and counted;
//! - a frame that does not parse is answered AE/AR with an ERR (with MSA-2
//!   empty when not even MSH could be read);
//! - a frame over `max_message_size` is answered AR at once (MSA-2 echoes
//!   its MSH-10 when the header could be read) and the rest of it is
//!   discarded as it arrives, without being buffered;
//! - a connection silent for `idle_timeout`, or that takes longer than
//!   `frame_timeout` to complete a frame it started (slow-loris), is closed;
//! - a peer closing in the middle of a frame loses only that frame (it was
//!   never acknowledged).
//!
//! On shutdown a connection finishes the frame it is processing (its
//! commit and its ACK), then closes; frames not yet read stay with the
//! sender, which will send them again.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration as StdDuration;

use bytes::BytesMut;
use hl7v2::mllp::{MllpCodec, MllpError};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::tls::{TlsError, TlsServerConfig};
use crate::config::de::PathBuf as CfgPath;
use crate::config::{ByteSize, ConfigErrors, Duration};
use crate::ingest::{ChannelIngest, Received};

/// Configuration of an `mllp` source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpSourceConfig {
    /// Address and port to listen on, e.g. `0.0.0.0:2575` (all interfaces)
    /// or `127.0.0.1:2575`.
    pub listen: SocketAddr,
    /// Connections served at once; more wait in the listen backlog.
    /// Default 256.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// The largest message accepted; a larger frame is answered AR.
    /// Default `16MiB` (an MDM carrying a scanned PDF fits).
    #[serde(default = "default_max_message_size")]
    pub max_message_size: ByteSize,
    /// A connection that sends nothing for this long is closed. Default
    /// `5m`.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// Once a frame has started, it must be complete within this time or
    /// the connection is closed (guards against slow-loris senders).
    /// Default `60s`.
    #[serde(default = "default_frame_timeout")]
    pub frame_timeout: Duration,
    /// TLS, optionally verifying client certificates. Plain TCP when absent.
    #[serde(default)]
    pub tls: Option<TlsServerConfig>,
}

fn default_max_connections() -> usize {
    256
}
fn default_max_message_size() -> ByteSize {
    ByteSize::mib(16)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_frame_timeout() -> Duration {
    Duration::from_secs(60)
}

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: StdDuration = StdDuration::from_secs(10);

impl MllpSourceConfig {
    /// Checks the settings (no I/O).
    pub fn validate(&self, path: &CfgPath, errors: &mut ConfigErrors) {
        if self.max_connections == 0 {
            errors.push(path.key("max_connections").to_string(), "must be at least 1");
        }
        if self.max_message_size.0 < 64 {
            errors.push(path.key("max_message_size").to_string(), "must be at least 64 bytes");
        }
        if self.idle_timeout.get().is_zero() {
            errors.push(path.key("idle_timeout").to_string(), "must be more than 0");
        }
        if self.frame_timeout.get().is_zero() {
            errors.push(path.key("frame_timeout").to_string(), "must be more than 0");
        }
        if let Some(tls) = &self.tls {
            tls.validate(&path.key("tls"), errors);
        }
    }

    /// Binds the listener and loads the TLS files: the I/O of starting.
    pub async fn bind(&self, base_dir: &Path, ingest: Arc<ChannelIngest>) -> Result<MllpSource, SourceError> {
        let tls = match &self.tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(t.build(base_dir)?)),
            None => None,
        };
        let listener =
            TcpListener::bind(self.listen).await.map_err(|error| SourceError::Bind { addr: self.listen, error })?;
        Ok(MllpSource {
            listener,
            tls,
            settings: Arc::new(Settings {
                max_message_size: self.max_message_size.as_usize(),
                idle_timeout: self.idle_timeout.get(),
                frame_timeout: self.frame_timeout.get(),
            }),
            limit: Arc::new(Semaphore::new(self.max_connections)),
            ingest,
            stats: Arc::new(MllpStats::default()),
        })
    }
}

/// A source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The address is in use, not local, or not permitted.
    #[error("listening on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
    /// The TLS files are missing or unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

#[derive(Debug)]
struct Settings {
    max_message_size: usize,
    idle_timeout: StdDuration,
    frame_timeout: StdDuration,
}

/// Counters of one MLLP source (framing by `hl7v2::mllp::MllpCodec`).
#[derive(Debug, Default)]
pub struct MllpStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Frames received (each answered).
    pub frames: AtomicU64,
    /// Bytes skipped outside frames.
    pub skipped_bytes: AtomicU64,
    /// Frames over the size limit.
    pub oversized: AtomicU64,
    /// Connections closed in the middle of a frame.
    pub truncated: AtomicU64,
    /// Connections closed for silence or a frame taking too long.
    pub timeouts: AtomicU64,
    /// TLS handshakes that failed.
    pub tls_failures: AtomicU64,
}

/// A bound MLLP listener, ready to [`run`](Self::run).
pub struct MllpSource {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    settings: Arc<Settings>,
    limit: Arc<Semaphore>,
    ingest: Arc<ChannelIngest>,
    stats: Arc<MllpStats>,
}

impl std::fmt::Debug for MllpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MllpSource")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .field("channel", &self.ingest.name())
            .finish_non_exhaustive()
    }
}

impl MllpSource {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The source's counters.
    pub fn stats(&self) -> Arc<MllpStats> {
        Arc::clone(&self.stats)
    }

    /// Serves connections until `shutdown`, then waits for every connection
    /// to finish the frame it is processing.
    pub async fn run(self, shutdown: CancellationToken) {
        let channel = self.ingest.name().to_string();
        let addr = self.local_addr().ok();
        let mut connections = tokio::task::JoinSet::new();
        let mut accept_failures: u32 = 0;
        loop {
            // Reap finished connection tasks so the set does not grow.
            while connections.try_join_next().is_some() {}
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = Arc::clone(&self.limit).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.listener.accept() => r,
            };
            let (socket, peer) = match accepted {
                Ok(x) => {
                    accept_failures = 0;
                    x
                }
                Err(e) => {
                    // Typically EMFILE: give the system time to free
                    // descriptors rather than spin on the error.
                    accept_failures = accept_failures.saturating_add(1);
                    let delay = StdDuration::from_millis(10u64 << accept_failures.min(7));
                    warn!(channel = %channel, error = %e, retry_in = ?delay, "accepting a connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            self.stats.connections.fetch_add(1, Ordering::Relaxed);
            let _ = socket.set_nodelay(true);
            let conn = Connection {
                ingest: Arc::clone(&self.ingest),
                settings: Arc::clone(&self.settings),
                stats: Arc::clone(&self.stats),
                peer,
            };
            let tls = self.tls.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let _permit = permit;
                conn.serve_socket(socket, tls, shutdown).await;
            });
        }
        drop(self.listener);
        info!(channel = %channel, addr = ?addr, open = connections.len(), "mllp source stopped accepting; finishing open connections");
        while connections.join_next().await.is_some() {}
    }
}

struct Connection {
    ingest: Arc<ChannelIngest>,
    settings: Arc<Settings>,
    stats: Arc<MllpStats>,
    peer: SocketAddr,
}

/// Why a connection ended (for the debug log).
enum Closed {
    Eof,
    Shutdown,
    Idle,
    SlowFrame,
    Truncated,
    Io(std::io::Error),
}

impl Connection {
    async fn serve_socket(
        self,
        socket: TcpStream,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: CancellationToken,
    ) {
        let closed = match tls {
            None => self.serve(socket, &shutdown).await,
            Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                Ok(Ok(stream)) => self.serve(stream, &shutdown).await,
                Ok(Err(e)) => {
                    self.stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                    debug!(channel = %self.ingest.name(), peer = %self.peer, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    self.stats.tls_failures.fetch_add(1, Ordering::Relaxed);
                    debug!(channel = %self.ingest.name(), peer = %self.peer, "tls handshake timed out");
                    return;
                }
            },
        };
        let reason = match &closed {
            Closed::Idle | Closed::SlowFrame => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                if matches!(closed, Closed::Idle) { "idle timeout" } else { "frame timeout" }
            }
            Closed::Eof => "closed by the peer",
            Closed::Shutdown => "shutdown",
            Closed::Truncated => "closed by the peer inside a frame",
            Closed::Io(e) => {
                debug!(channel = %self.ingest.name(), peer = %self.peer, error = %e, "connection error");
                "i/o error"
            }
        };
        debug!(channel = %self.ingest.name(), peer = %self.peer, reason, "connection closed");
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, mut stream: S, shutdown: &CancellationToken) -> Closed {
        // Room for a sender's whole window of typical messages (16 ORU of
        // 1.7 KB is 27 KB) in one read: its frames then share one batch, one
        // commit and one write of ACKs instead of being split across reads.
        // At most 16 MiB at the default 256 connections.
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut codec = MllpCodec::new(self.settings.max_message_size);
        let mut skipped = 0;
        let mut frame_started: Option<Instant> = None;
        let peer = self.peer.to_string();
        let mut frames = Vec::new();
        let mut out = BytesMut::new();
        // One timer and one shutdown waiter for the connection's life,
        // instead of a new timer and waiter per read: moving a timer's
        // deadline later is an atomic store in tokio, while registering and
        // dropping one per read takes the timer driver's lock twice, and a
        // fresh cancellation waiter takes the token's lock twice.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let timer = tokio::time::sleep(self.settings.idle_timeout);
        tokio::pin!(timer);
        loop {
            // Answer every complete frame already buffered, in order: the
            // frames go to the ingest path together (they share a commit),
            // and their answers go back in one write.
            let mut broken = None;
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(payload)) => {
                        frame_started = None;
                        self.stats.frames.fetch_add(1, Ordering::Relaxed);
                        frames.push(Frame::Message(Received::now(payload.to_vec(), Some(peer.clone()))));
                    }
                    Ok(None) => break,
                    Err(MllpError::FrameTooLarge { limit, head }) => {
                        // The codec discards the rest of the frame as it
                        // arrives; the sender reads this answer once it has
                        // written the frame, and the connection goes on.
                        frame_started = None;
                        self.stats.oversized.fetch_add(1, Ordering::Relaxed);
                        frames.push(Frame::Answer(self.ingest.oversized_nak(&head, limit)));
                    }
                    Err(e) => {
                        // Answer what came before the unreadable bytes.
                        broken = Some(std::io::Error::other(e));
                        break;
                    }
                }
            }
            if !frames.is_empty() {
                answer_frames(&self.ingest, &mut frames, &mut out).await;
                if !out.is_empty() {
                    // TLS buffers what it encrypts: flush sends it.
                    let written = match stream.write_all(&out).await {
                        Ok(()) => stream.flush().await,
                        Err(e) => Err(e),
                    };
                    out.clear();
                    if let Err(e) = written {
                        return Closed::Io(e);
                    }
                }
            }
            if let Some(e) = broken {
                return Closed::Io(e);
            }
            let total = codec.skipped_bytes();
            self.stats.skipped_bytes.fetch_add(total - skipped, Ordering::Relaxed);
            skipped = total;
            if shutdown.is_cancelled() {
                return Closed::Shutdown;
            }
            // The codec consumes what it skips or discards, so bytes left in
            // the buffer are the start of a frame.
            if !buf.is_empty() {
                frame_started.get_or_insert_with(Instant::now);
            }
            let idle_deadline = Instant::now() + self.settings.idle_timeout;
            let deadline = match frame_started {
                Some(start) => (start + self.settings.frame_timeout).min(idle_deadline),
                None => idle_deadline,
            };
            timer.as_mut().reset(deadline);
            let read = tokio::select! {
                _ = &mut cancelled => return Closed::Shutdown,
                _ = &mut timer => None,
                r = stream.read_buf(&mut buf) => Some(r),
            };
            match read {
                Some(Ok(0)) => {
                    return match codec.decode_eof(&mut buf) {
                        Err(MllpError::IncompleteFrame { .. }) => {
                            self.stats.truncated.fetch_add(1, Ordering::Relaxed);
                            Closed::Truncated
                        }
                        _ => Closed::Eof,
                    };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Closed::Io(e),
                None if deadline < idle_deadline => return Closed::SlowFrame,
                None => return Closed::Idle,
            }
        }
    }
}

/// A frame read from the connection, waiting for its answer.
enum Frame {
    /// A message for the ingest path.
    Message(Received),
    /// Answered already (a frame over the size limit).
    Answer(Vec<u8>),
}

/// Answers `frames` (drained) in order: the messages between two ready
/// answers go to the ingest path as one batch, and every answer is
/// appended, MLLP-framed, to `out`.
async fn answer_frames(ingest: &ChannelIngest, frames: &mut Vec<Frame>, out: &mut BytesMut) {
    let mut batch = Vec::new();
    for frame in frames.drain(..) {
        match frame {
            Frame::Message(received) => batch.push(received),
            Frame::Answer(answer) => {
                ingest_batch(ingest, std::mem::take(&mut batch), out).await;
                encode_frame(&answer, out);
            }
        }
    }
    ingest_batch(ingest, batch, out).await;
}

async fn ingest_batch(ingest: &ChannelIngest, batch: Vec<Received>, out: &mut BytesMut) {
    if batch.is_empty() {
        return;
    }
    for answer in ingest.ingest_hl7_many(batch).await {
        if let Some(ack) = answer.ack {
            encode_frame(&ack, out);
        }
    }
}

fn encode_frame(payload: &[u8], out: &mut BytesMut) {
    // Encoding into a buffer cannot fail.
    let _ = MllpCodec::default().encode(payload, out);
}
