//! The `mllp` destination: HL7 v2 over MLLP (TCP, optional TLS), one
//! message at a time per connection, waiting for each ACK.
//!
//! ```toml
//! type = "mllp"
//! address = "lab.example.org:2575"
//! connections = 2
//! ack_timeout = "30s"
//! on_nak = "dead_letter"
//! tls = { ca_file = "certs/lab-ca.pem" }
//! ```
//!
//! # Connections
//!
//! The destination keeps a small pool of at most `connections` open
//! connections, shared by its workers: a send takes an idle connection (or
//! opens one), writes the frame, waits for the ACK and puts the connection
//! back. A connection is never shared by two messages at once, so an ACK
//! always answers the message just sent. Connections idle for longer than
//! `idle_timeout` are closed rather than reused, since receivers commonly
//! drop idle peers without telling them.
//!
//! Before an idle connection is reused, whatever it received meanwhile is
//! read without waiting: a close (the receiver dropped it) makes the send
//! open a new one, and stray frames (an application ACK following a commit
//! ACK, a duplicate answer) are discarded so they are not taken for the
//! next message's answer. When a reused connection still turns out to be
//! dead (the write fails, or it closes before any answer), the message is
//! sent once more on a fresh connection within the same attempt: the
//! receiver closed it while idle, so it most likely never saw the message,
//! and a receiver that did is expected to deduplicate on MSH-10.
//!
//! Failed connection attempts back off exponentially with jitter
//! (`reconnect_backoff` doubling up to `reconnect_backoff_max`), shared by
//! every worker of the destination: while a receiver is down, each send
//! waits for the backoff before its single attempt instead of hammering the
//! receiver, and the first success resets it. The delivery's own retries
//! are the store's (see [`super`]).
//!
//! # Answers
//!
//! The ACK is parsed as HL7 v2. Its MSA-2 must be the control id (MSH-10)
//! of the message sent, else the error is [`DeliveryError::AckMismatch`]
//! (transient; the connection is closed, as it can no longer be trusted to
//! pair answers with messages). `AA`/`CA` is success. `AE`/`AR`/`CE`/`CR`
//! is [`DeliveryError::Nak`], retried or dead-lettered as `on_nak` says.
//! No ACK within `ack_timeout` closes the connection (a late ACK would
//! otherwise be read as the answer to the next message) and is transient.
//!
//! In enhanced mode (MSH-15 of the content asks for a commit ACK) the `CA`
//! completes the delivery: the receiver has the message in safe storage.
//! Waiting for the application ACK as well was considered and left out on
//! purpose: HL7 lets the receiver send it much later, on a connection of
//! its own, and the delivery's lease would hold the patient's order key
//! for that whole time. An application ACK arriving on the same connection
//! is discarded before reuse (below).
//!
//! The content is sent with CR between segments, as MLLP receivers expect,
//! whatever separators the stored message used.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration as StdDuration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Framed;
use tokio_util::either::Either;
use tracing::{debug, info, warn};

use super::{
    Backoff, BuildContext, DeliveryError, DeliveryResponse, DestinationError, ErrorClass, Outbound,
    RESPONSE_EXCERPT_MAX, ResponseKind, TlsClientConfig,
};
use crate::config::{ByteSize, ConfigErrors, Duration};

/// Configuration of an `mllp` destination.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MllpConfig {
    /// The receiver, `host:port`.
    pub address: String,
    /// TLS to the receiver; absent means plain TCP.
    #[serde(default)]
    pub tls: Option<TlsClientConfig>,
    /// The most connections open at once to the receiver (default 1). Set
    /// it to the destination's worker count to let every worker send at
    /// once; messages of one order key are still sent one after the other.
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Time allowed to open a connection, TLS handshake included (default 10s).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Time allowed for the ACK once the message is written (default 30s).
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: Duration,
    /// An idle connection older than this is closed instead of reused
    /// (default 60s).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// What an AE/AR answer means: `retry` (the default: a transient error,
    /// retried by the store's policy) or `dead_letter` (a permanent error).
    #[serde(default)]
    pub on_nak: OnNak,
    /// First delay after a failed connection attempt (default 500ms).
    #[serde(default = "default_reconnect_backoff")]
    pub reconnect_backoff: Duration,
    /// Longest delay between connection attempts (default 30s).
    #[serde(default = "default_reconnect_backoff_max")]
    pub reconnect_backoff_max: Duration,
    /// The largest ACK accepted (default 1MiB); a bigger answer fails the
    /// attempt and closes the connection.
    #[serde(default = "default_max_ack_size")]
    pub max_ack_size: ByteSize,
}

fn default_connections() -> usize {
    1
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_ack_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_reconnect_backoff() -> Duration {
    Duration::from_millis(500)
}
fn default_reconnect_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ack_size() -> ByteSize {
    ByteSize::mib(1)
}

/// See [`MllpConfig::on_nak`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNak {
    /// A NAK is transient: the store retries it.
    #[default]
    Retry,
    /// A NAK is permanent: the delivery is dead-lettered.
    DeadLetter,
}

impl OnNak {
    fn class(self) -> ErrorClass {
        match self {
            OnNak::Retry => ErrorClass::Transient,
            OnNak::DeadLetter => ErrorClass::Permanent,
        }
    }
}

impl MllpConfig {
    /// A configuration with every default, for `address`.
    pub fn new(address: impl Into<String>) -> Self {
        MllpConfig {
            address: address.into(),
            tls: None,
            connections: default_connections(),
            connect_timeout: default_connect_timeout(),
            ack_timeout: default_ack_timeout(),
            idle_timeout: default_idle_timeout(),
            on_nak: OnNak::default(),
            reconnect_backoff: default_reconnect_backoff(),
            reconnect_backoff_max: default_reconnect_backoff_max(),
            max_ack_size: default_max_ack_size(),
        }
    }

    /// Checks address, limits and TLS fields (no I/O, no DNS).
    pub fn validate(&self, path: &str, errors: &mut ConfigErrors) {
        if let Err(e) = split_address(&self.address) {
            errors.push(format!("{path}.address"), e);
        }
        if self.connections == 0 {
            errors.push(format!("{path}.connections"), "must be at least 1");
        } else if self.connections > 1024 {
            errors.push(format!("{path}.connections"), "must be at most 1024");
        }
        for (field, value) in [
            ("connect_timeout", self.connect_timeout),
            ("ack_timeout", self.ack_timeout),
            ("reconnect_backoff", self.reconnect_backoff),
            ("reconnect_backoff_max", self.reconnect_backoff_max),
        ] {
            if value.get().is_zero() {
                errors.push(format!("{path}.{field}"), "must be more than 0");
            }
        }
        if self.reconnect_backoff_max < self.reconnect_backoff {
            errors.push(format!("{path}.reconnect_backoff_max"), "must not be less than reconnect_backoff");
        }
        if self.max_ack_size.0 < 64 {
            errors.push(format!("{path}.max_ack_size"), "must be at least 64 bytes");
        }
        if let Some(tls) = &self.tls {
            tls.validate(&format!("{path}.tls"), errors);
            if tls.server_name.is_none()
                && let Ok((host, _)) = split_address(&self.address)
                && rustls::pki_types::ServerName::try_from(host).is_err()
            {
                errors.push(format!("{path}.tls.server_name"), "needed: the address's host is not a valid name");
            }
        }
    }

    /// Reads the TLS files; opens no connection (the first send does).
    pub fn build(&self, ctx: &BuildContext) -> Result<MllpDestination, DestinationError> {
        let (host, _port) = split_address(&self.address).map_err(|e| {
            let mut errors = ConfigErrors::default();
            errors.push("address", e);
            DestinationError::Invalid(errors)
        })?;
        let tls = match &self.tls {
            None => None,
            Some(tls) => {
                let name = tls.server_name.clone().unwrap_or_else(|| host.to_owned());
                let server_name = rustls::pki_types::ServerName::try_from(name)
                    .map_err(|e| DestinationError::Tls { field: "tls.server_name", reason: e.to_string() })?;
                Some((TlsConnector::from(tls.build_rustls(ctx)?), server_name))
            }
        };
        Ok(MllpDestination {
            address: self.address.clone(),
            tls,
            permits: Semaphore::new(self.connections.max(1)),
            idle: Mutex::new(Vec::new()),
            reconnect: Mutex::new(ReconnectState::default()),
            backoff: Backoff { initial: self.reconnect_backoff.get(), max: self.reconnect_backoff_max.get() },
            connect_timeout: self.connect_timeout.get(),
            ack_timeout: self.ack_timeout.get(),
            idle_timeout: self.idle_timeout.get(),
            on_nak: self.on_nak,
            max_ack_size: self.max_ack_size.as_usize(),
            label: Arc::from(format!("{}/{}", ctx.channel, ctx.destination)),
        })
    }
}

/// `host:port` (IPv6 as `[::1]:2575`) into its parts, checked.
fn split_address(address: &str) -> Result<(&str, u16), String> {
    let (host, port) = address.rsplit_once(':').ok_or_else(|| format!("{address:?} is not host:port"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() {
        return Err(format!("{address:?} has no host"));
    }
    let port: u16 = port.parse().map_err(|_| format!("{address:?}: port {port:?} is not a number 1-65535"))?;
    if port == 0 {
        return Err(format!("{address:?}: port must not be 0"));
    }
    Ok((host, port))
}

type Stream = Either<TcpStream, TlsStream<TcpStream>>;
type Conn = Framed<Stream, hl7v2::mllp::MllpCodec>;

struct IdleConn {
    conn: Conn,
    since: Instant,
}

#[derive(Debug, Default)]
struct ReconnectState {
    /// Consecutive failed connection attempts.
    failures: u32,
    /// No attempt before this instant.
    not_before: Option<Instant>,
}

/// A built `mllp` destination: a pool of connections to one receiver.
pub struct MllpDestination {
    address: String,
    tls: Option<(TlsConnector, rustls::pki_types::ServerName<'static>)>,
    /// One permit per connection that may be open and busy.
    permits: Semaphore,
    idle: Mutex<Vec<IdleConn>>,
    reconnect: Mutex<ReconnectState>,
    backoff: Backoff,
    connect_timeout: StdDuration,
    ack_timeout: StdDuration,
    idle_timeout: StdDuration,
    on_nak: OnNak,
    max_ack_size: usize,
    label: Arc<str>,
}

impl std::fmt::Debug for MllpDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MllpDestination")
            .field("address", &self.address)
            .field("tls", &self.tls.is_some())
            .field("on_nak", &self.on_nak)
            .finish_non_exhaustive()
    }
}

/// How one exchange on a connection ended, before classification.
enum Exchange {
    /// An answer frame arrived.
    Answer(Bytes),
    /// The connection failed before any answer: safe to try a fresh one
    /// when the connection was reused.
    DeadBeforeAnswer(String),
    /// Anything else: fail the attempt.
    Failed(DeliveryError),
}

impl MllpDestination {
    /// The receiver's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends one message and waits for its ACK.
    pub async fn send(&self, out: &Outbound<'_>) -> Result<DeliveryResponse, DeliveryError> {
        let (frame, control_id) = prepare(out.content)?;
        let _permit = self.permits.acquire().await.map_err(|_| DeliveryError::Connection {
            address: self.address.clone(),
            reason: "destination closed".to_owned(),
        })?;

        let (mut conn, reused) = match self.take_idle() {
            Some(conn) => (conn, true),
            None => (self.connect().await?, false),
        };
        let mut answer = self.exchange(&mut conn, frame.clone()).await;
        if reused && let Exchange::DeadBeforeAnswer(reason) = &answer {
            debug!(destination = %self.label, message_id = out.message_id, %reason, "pooled connection was dead; reconnecting");
            conn = self.connect().await?;
            answer = self.exchange(&mut conn, frame).await;
        }
        let ack = match answer {
            Exchange::Answer(ack) => ack,
            Exchange::DeadBeforeAnswer(reason) => {
                return Err(DeliveryError::Connection { address: self.address.clone(), reason });
            }
            Exchange::Failed(e) => return Err(e),
        };
        let outcome = self.read_ack(&ack, &control_id);
        // Only a well-paired answer leaves the connection usable.
        if !matches!(outcome, Err(DeliveryError::AckMismatch { .. } | DeliveryError::BadAck { .. })) {
            self.put_idle(conn);
        }
        debug!(destination = %self.label, message_id = out.message_id, ok = outcome.is_ok(), "mllp answered");
        outcome
    }

    /// An idle connection that is still open, if any.
    fn take_idle(&self) -> Option<Conn> {
        loop {
            let entry = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                idle.pop()?
            };
            // Too old: the receiver has likely dropped it; drop it here too.
            if entry.since.elapsed() >= self.idle_timeout {
                continue;
            }
            let mut conn = entry.conn;
            if drain_stale(&mut conn, &self.label) {
                return Some(conn);
            }
        }
    }

    fn put_idle(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.push(IdleConn { conn, since: Instant::now() });
    }

    /// One connection attempt, after the shared backoff allows it.
    async fn connect(&self) -> Result<Conn, DeliveryError> {
        let wait = {
            let state = self.reconnect.lock().unwrap_or_else(|e| e.into_inner());
            state.not_before.map(|t| t.saturating_duration_since(Instant::now()))
        };
        if let Some(wait) = wait.filter(|w| !w.is_zero()) {
            debug!(destination = %self.label, ?wait, "waiting before reconnecting");
            tokio::time::sleep(wait).await;
        }
        match tokio::time::timeout(self.connect_timeout, self.open()).await {
            Ok(Ok(conn)) => {
                let mut state = self.reconnect.lock().unwrap_or_else(|e| e.into_inner());
                if state.failures > 0 {
                    info!(destination = %self.label, address = %self.address, "reconnected");
                }
                *state = ReconnectState::default();
                Ok(conn)
            }
            result => {
                let reason = match result {
                    Ok(Err(reason)) => reason,
                    _ => format!("no connection within {:?}", self.connect_timeout),
                };
                let mut state = self.reconnect.lock().unwrap_or_else(|e| e.into_inner());
                state.failures = state.failures.saturating_add(1);
                let delay = self.backoff.delay(state.failures);
                state.not_before = Some(Instant::now() + delay);
                warn!(destination = %self.label, address = %self.address, failures = state.failures, ?delay, "cannot connect");
                Err(DeliveryError::Connect { address: self.address.clone(), reason })
            }
        }
    }

    async fn open(&self) -> Result<Conn, String> {
        let tcp = TcpStream::connect(&self.address).await.map_err(|e| e.to_string())?;
        // One small frame each way per message: Nagle would only add delay.
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let stream = match &self.tls {
            None => Either::Left(tcp),
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await.map_err(|e| format!("TLS handshake: {e}"))?;
                Either::Right(tls)
            }
        };
        debug!(destination = %self.label, address = %self.address, "connected");
        Ok(Framed::new(stream, hl7v2::mllp::MllpCodec::new(self.max_ack_size)))
    }

    /// Writes one frame and reads one answer frame.
    async fn exchange(&self, conn: &mut Conn, frame: Bytes) -> Exchange {
        if let Err(e) = conn.send(frame).await {
            return Exchange::DeadBeforeAnswer(format!("write: {e}"));
        }
        match tokio::time::timeout(self.ack_timeout, conn.next()).await {
            Err(_) => {
                Exchange::Failed(DeliveryError::Timeout { address: self.address.clone(), after: self.ack_timeout })
            }
            Ok(None) => Exchange::DeadBeforeAnswer("closed by the receiver before answering".to_owned()),
            // The socket failed before any byte of an answer: like a close.
            Ok(Some(Err(hl7v2::mllp::MllpError::Io(e)))) => Exchange::DeadBeforeAnswer(format!("read: {e}")),
            Ok(Some(Err(e @ hl7v2::mllp::MllpError::IncompleteFrame { .. }))) => {
                Exchange::Failed(DeliveryError::Connection { address: self.address.clone(), reason: e.to_string() })
            }
            Ok(Some(Err(e))) => Exchange::Failed(DeliveryError::BadAck { reason: e.to_string() }),
            Ok(Some(Ok(ack))) => Exchange::Answer(ack.into()),
        }
    }

    /// Classifies the answer to the message whose MSH-10 is `control_id`.
    fn read_ack(&self, ack: &[u8], control_id: &str) -> Result<DeliveryResponse, DeliveryError> {
        let parsed = parse_ack(ack)?;
        if parsed.control_id != control_id {
            return Err(DeliveryError::AckMismatch { sent: control_id.to_owned(), received: parsed.control_id });
        }
        let excerpt = super::excerpt(ack, RESPONSE_EXCERPT_MAX);
        match parsed.code.as_str() {
            "AA" | "CA" => Ok(DeliveryResponse { kind: ResponseKind::Ack, summary: parsed.code, body: Some(excerpt) }),
            "AE" | "AR" | "CE" | "CR" => Err(DeliveryError::Nak {
                code: parsed.code,
                text: parsed.text,
                class: self.on_nak.class(),
                ack: excerpt,
            }),
            other => Err(DeliveryError::BadAck { reason: format!("MSA-1 {other:?} is not an acknowledgment code") }),
        }
    }
}

/// Reads, without waiting, whatever an idle connection has received since
/// its last exchange: frames are stale answers (a receiver sending a commit
/// ACK then an application ACK, or a duplicate) and are discarded so they
/// are not taken for the next message's ACK; end of stream or an error
/// means the receiver closed it. True when the connection is still usable.
fn drain_stale(conn: &mut Conn, label: &str) -> bool {
    use futures::FutureExt as _;
    loop {
        match conn.next().now_or_never() {
            None => return true,
            Some(Some(Ok(_frame))) => {
                debug!(destination = %label, "discarding an unsolicited frame on an idle connection")
            }
            Some(Some(Err(_)) | None) => return false,
        }
    }
}

/// The frame to send (segments separated by CR) and its MSH-10.
fn prepare(content: &[u8]) -> Result<(Bytes, String), DeliveryError> {
    if content.iter().any(|&b| b == 0x0B || b == 0x1C) {
        return Err(DeliveryError::Content {
            reason: "the message contains MLLP framing bytes (0x0B or 0x1C)".to_owned(),
        });
    }
    let message = hl7v2::Message::parse(content.to_vec())
        .map_err(|e| DeliveryError::Content { reason: format!("not an HL7 v2 message: {e}") })?;
    let control_id = message.control_id().map(|c| c.into_owned()).unwrap_or_default();
    let bytes = if content.contains(&b'\n') { message.to_standard_form() } else { message.into_bytes() };
    Ok((Bytes::from(bytes), control_id))
}

/// The parts of an ACK that decide a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckSummary {
    /// MSA-1 (`AA`, `AE`, `AR`, `CA`, `CE`, `CR`).
    pub code: String,
    /// MSA-2: the control id the ACK answers.
    pub control_id: String,
    /// MSA-3 and the ERR segments' texts (ERR-8, else ERR-1), joined by
    /// "; ". May quote message content: do not log it.
    pub text: String,
}

/// Reads MSA-1, MSA-2 and the error texts of an ACK. Used by the MLLP
/// destination and by `plexus send`.
pub fn parse_ack(ack: &[u8]) -> Result<AckSummary, DeliveryError> {
    let message = hl7v2::Message::parse(ack.to_vec())
        .map_err(|e| DeliveryError::BadAck { reason: format!("not HL7 v2: {e}") })?;
    let msa = message.segment("MSA").ok_or_else(|| DeliveryError::BadAck { reason: "no MSA segment".to_owned() })?;
    let field = |n: usize| msa.get(n).map(|v| v.trim().to_owned()).unwrap_or_default();
    let code = field(1).to_ascii_uppercase();
    let control_id = field(2);
    let mut texts = Vec::new();
    let msa3 = field(3);
    if !msa3.is_empty() {
        texts.push(msa3);
    }
    for err in message.segments_named("ERR") {
        let text = [8, 1].into_iter().filter_map(|n| err.get(n)).find(|t| !t.trim().is_empty());
        // Plexus itself, like many engines, repeats MSA-3 in ERR-8: one
        // text said twice is said once.
        if let Some(text) = text.map(|t| t.trim().to_owned())
            && !texts.contains(&text)
        {
            texts.push(text);
        }
    }
    Ok(AckSummary { code, control_id, text: texts.join("; ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        assert_eq!(split_address("lab:2575").unwrap(), ("lab", 2575));
        assert_eq!(split_address("[::1]:2575").unwrap(), ("::1", 2575));
        for bad in ["lab", ":2575", "lab:0", "lab:x", "lab:70000"] {
            assert!(split_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ack_fields_are_read() {
        let ack = b"MSH|^~\\&|R|F|S|F|20261121||ACK^A01|A1|P|2.5\rMSA|AE|C42|bad PID\rERR||PID^1^3|101^Required^HL70357|E||||PID-3 missing\r";
        let summary = parse_ack(ack).unwrap();
        assert_eq!(summary.code, "AE");
        assert_eq!(summary.control_id, "C42");
        assert_eq!(summary.text, "bad PID; PID-3 missing");
        let repeated = b"MSH|^~\\&|R|F|S|F|20261121||ACK^A01|A1|P|2.5\rMSA|CE|C43|the channel is stopped\rERR||||E||||the channel is stopped\r";
        assert_eq!(parse_ack(repeated).unwrap().text, "the channel is stopped");
        assert!(parse_ack(b"MSH|^~\\&|R\r").is_err());
        assert!(parse_ack(b"garbage").is_err());
    }

    #[test]
    fn content_with_lf_is_sent_with_cr() {
        let (frame, control_id) = prepare(b"MSH|^~\\&|A|B|C|D|||ADT^A01|X9|P|2.5\nPID|1\n").unwrap();
        assert_eq!(control_id, "X9");
        assert!(!frame.contains(&b'\n'));
        assert!(prepare(b"MSH|^~\\&|A\x1c\r").is_err());
        assert_eq!(prepare(b"not hl7").unwrap_err().class(), ErrorClass::Permanent);
    }

    #[test]
    fn validate_reports_paths() {
        let mut c = MllpConfig::new("nohost");
        c.connections = 0;
        c.ack_timeout = Duration::from_secs(0);
        let mut errors = ConfigErrors::default();
        c.validate("d", &mut errors);
        let paths: Vec<_> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["d.address", "d.connections", "d.ack_timeout"]);
    }
}
