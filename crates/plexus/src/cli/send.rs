//! `plexus send`: sends HL7 v2 messages over MLLP and reports the ACKs; also
//! a load generator.
//!
//! ```text
//! plexus send --to 127.0.0.1:2575 samples/*.hl7
//! plexus send --to 127.0.0.1:2575 --generate oru --count 100000 --connections 32 --window 8
//! ```
//!
//! # Design
//!
//! Each connection is one task that owns its socket and keeps up to
//! `--window` messages written but not yet acknowledged (pipelining). It
//! writes until the window is full, flushes them in one write, then reads
//! ACKs, refilling the window as they come; `--window 1` is the classic
//! send-wait-send. MLLP receivers answer in order, so an ACK is paired with
//! the oldest message in flight, checked by MSA-2 (the control id).
//!
//! Message `i` (0-based) goes on connection `i % connections`. With
//! `--generate`, each patient belongs to one connection, so the messages of
//! a patient are sent in order on one connection and a test can check that
//! the receiver kept that order; the control id is
//! `<run id><i as 10 digits>`, unique across runs.
//!
//! When a connection fails (closed, reset, no ACK within `--ack-timeout`),
//! the messages still in flight are unacknowledged. The connection is
//! opened again with backoff (for at most `--reconnect-timeout`), and with
//! `--retry-unacked` those messages are sent again first, in their order,
//! with their control ids (a receiver that committed one before failing
//! recognises the duplicate and replays its ACK). Without it they are
//! counted as not acknowledged.
//!
//! Files may hold one message or several (each starting with MSH; FHS/BHS
//! batch envelopes are skipped); LF and CRLF line ends become CR. With
//! `--count` the files' messages are repeated up to that count, as they
//! are (so a receiver sees duplicates).
//!
//! The exit status is 0 only if every message got an ACK and, unless
//! `--allow-nak`, every ACK was AA (or CA).

use std::collections::{BTreeMap, VecDeque};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use engine::destinations::mllp::parse_ack;
use engine::destinations::{BuildContext, TlsClientConfig};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::either::Either;

/// Arguments of `plexus send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// The receiver, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,
    /// Files of HL7 v2 messages to send (one or more messages per file).
    #[arg(value_name = "FILE", required_unless_present = "generate", conflicts_with = "generate")]
    pub files: Vec<PathBuf>,
    /// Generate messages instead of reading files: `oru` (ORU^R01 with 12
    /// results, about 1.7 KB) or `adt` (ADT^A01, about 0.35 KB).
    #[arg(long, value_enum)]
    pub generate: Option<Generate>,
    /// How many messages to send in all (default: each file message once,
    /// or 1000 generated).
    #[arg(long)]
    pub count: Option<u64>,
    /// Connections opened in parallel.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Messages written ahead of their ACK per connection (1 = wait for
    /// each ACK before sending the next).
    #[arg(long, default_value_t = 1)]
    pub window: usize,
    /// Distinct patients in generated messages.
    #[arg(long, default_value_t = 100)]
    pub patients: u64,
    /// After a reconnect, send again the messages that were not acknowledged.
    #[arg(long)]
    pub retry_unacked: bool,
    /// Exit 0 even if some ACKs are AE/AR (every message must still get one).
    #[arg(long)]
    pub allow_nak: bool,
    /// Print the summary as one JSON line (non-AA ACKs then go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Time allowed for an ACK (e.g. "30s", "500ms").
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ack_timeout: Duration,
    /// How long to keep trying to reconnect after a connection is lost.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub reconnect_timeout: Duration,
    /// Prefix of generated control ids (8 hex digits by default, random).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Use TLS, trusting the system's roots (or --tls-ca).
    #[arg(long)]
    pub tls: bool,
    /// PEM file of the CAs to trust (implies --tls).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate chain for mutual TLS (with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client private key for mutual TLS (with --tls-cert).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The name to verify the server's certificate against (default: the host).
    #[arg(long)]
    pub tls_server_name: Option<String>,
}

/// What `--generate` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Generate {
    /// ORU^R01: a CBC panel with 12 results.
    Oru,
    /// ADT^A01: an admission.
    Adt,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<engine::config::Duration>().map(|d| d.get())
}

/// Runs `plexus send`.
pub fn run(args: SendArgs) -> anyhow::Result<ExitCode> {
    if args.connections == 0 || args.window == 0 {
        bail!("--connections and --window must be at least 1");
    }
    if args.generate.is_some() && args.patients == 0 {
        bail!("--patients must be at least 1");
    }
    let source = Arc::new(match args.generate {
        Some(kind) => {
            let run_id = match &args.run_id {
                Some(id) => id.clone(),
                None => format!("{:08X}", rand::random::<u32>()),
            };
            if run_id.len() > 10 || !run_id.chars().all(|c| c.is_ascii_alphanumeric()) {
                bail!("--run-id must be at most 10 letters or digits (control ids are limited to 20)");
            }
            Source::Generated(Generator { kind, run_id, patients: args.patients, connections: args.connections as u64 })
        }
        None => Source::Files(read_files(&args.files)?),
    });
    let count = match (&*source, args.count) {
        (_, Some(n)) => n,
        (Source::Files(messages), None) => messages.len() as u64,
        (Source::Generated(_), None) => 1000,
    };
    let tls = tls_config(&args)?;

    // One thread: the connections only wait on sockets, and a load
    // generator that hops between threads spends its CPU on wake-ups that
    // the receiver it measures (often on the same machine) would rather have.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime.block_on(send_all(&args, source, count, tls))?;
    let ok = report.success(&args);
    report.print(&args, count)?;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn tls_config(args: &SendArgs) -> anyhow::Result<Option<Tls>> {
    if !(args.tls || args.tls_ca.is_some() || args.tls_cert.is_some()) {
        return Ok(None);
    }
    let host = args.to.rsplit_once(':').map(|(h, _)| h).unwrap_or(&args.to);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let config = TlsClientConfig {
        ca_file: args.tls_ca.clone(),
        cert_file: args.tls_cert.clone(),
        key_file: args.tls_key.clone(),
        server_name: args.tls_server_name.clone(),
    };
    let client = config.build_rustls(&BuildContext::new("send", "send"))?;
    let name = args.tls_server_name.clone().unwrap_or_else(|| host.to_owned());
    let server_name = rustls::pki_types::ServerName::try_from(name.clone())
        .with_context(|| format!("{name:?} is not a valid TLS server name (use --tls-server-name)"))?;
    Ok(Some(Tls { connector: tokio_rustls::TlsConnector::from(client), server_name }))
}

struct Tls {
    connector: tokio_rustls::TlsConnector,
    server_name: rustls::pki_types::ServerName<'static>,
}

/// Where the messages come from.
enum Source {
    /// Messages read from files, with their origin (`file#n`) for reports.
    Files(Vec<FileMessage>),
    Generated(Generator),
}

impl Source {
    /// Message number `i`: its control id and bytes.
    fn message(&self, i: u64) -> (String, Bytes) {
        match self {
            Source::Files(messages) => {
                let m = &messages[(i % messages.len() as u64) as usize];
                (m.control_id.clone(), m.bytes.clone())
            }
            Source::Generated(g) => (g.control_id(i), g.message(i)),
        }
    }

    /// Message number `i` as reports name it (only built when reporting).
    fn label(&self, i: u64) -> String {
        match self {
            Source::Files(messages) => messages[(i % messages.len() as u64) as usize].label.clone(),
            Source::Generated(_) => format!("message {i}"),
        }
    }
}

/// One message read from a file.
struct FileMessage {
    /// `file` or `file#n` when the file holds several.
    label: String,
    /// Its MSH-10 (empty when it has none).
    control_id: String,
    bytes: Bytes,
}

/// Reads every file, splits it into messages and normalises line ends.
fn read_files(files: &[PathBuf]) -> anyhow::Result<Vec<FileMessage>> {
    let mut messages = Vec::new();
    for file in files {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let split = split_messages(&bytes);
        if split.is_empty() {
            bail!("{}: no HL7 v2 message (nothing starts with MSH)", file.display());
        }
        let several = split.len() > 1;
        for (n, message) in split.into_iter().enumerate() {
            let label = if several { format!("{}#{}", file.display(), n + 1) } else { file.display().to_string() };
            let control_id = control_id_of(&message);
            messages.push(FileMessage { label, control_id, bytes: Bytes::from(message) });
        }
    }
    Ok(messages)
}

/// Splits file content into messages: each starts at an MSH segment;
/// segments end with CR; batch envelopes (FHS, BHS, BTS, FTS) and blank
/// lines are dropped.
fn split_messages(bytes: &[u8]) -> Vec<Vec<u8>> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut messages: Vec<Vec<u8>> = Vec::new();
    for line in bytes.split(|&b| b == b'\r' || b == b'\n') {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let name = &line[..line.len().min(3)];
        if matches!(name, b"FHS" | b"BHS" | b"BTS" | b"FTS") {
            continue;
        }
        if name == b"MSH" {
            messages.push(Vec::new());
        }
        // Lines before the first MSH are not a message: skip them.
        if let Some(current) = messages.last_mut() {
            current.extend_from_slice(line);
            current.push(b'\r');
        }
    }
    messages
}

/// Builds synthetic messages (obviously fake patients, no real data).
struct Generator {
    kind: Generate,
    run_id: String,
    patients: u64,
    connections: u64,
}

impl Generator {
    /// The control id of message `i`.
    fn control_id(&self, i: u64) -> String {
        format!("{}{i:010}", self.run_id)
    }

    /// The patient of message `i`: patients are dealt to connections
    /// (patient p belongs to connection p % connections), and connection c
    /// cycles through its own, so a patient's messages share a connection.
    fn patient(&self, i: u64) -> u64 {
        let c = i % self.connections;
        let j = i / self.connections;
        if c >= self.patients {
            // More connections than patients: this one borrows a patient.
            return c % self.patients;
        }
        let owned = (self.patients - c).div_ceil(self.connections);
        c + self.connections * (j % owned)
    }

    /// Message `i`. Built with plain appends into one buffer (no format
    /// string is parsed, no intermediate string allocated): at 30,000
    /// messages a second the load generator shares the machine's CPU with
    /// the receiver it measures, so what it spends is taken from the
    /// receiver.
    fn message(&self, i: u64) -> Bytes {
        let now: String = hl7_now(chrono::Utc::now()).iter().map(|&d| char::from(d)).collect();
        self.message_at(i, &now)
    }

    /// Message `i` sent at `now` (an HL7 DTM).
    fn message_at(&self, i: u64, now: &str) -> Bytes {
        let p = self.patient(i);
        let mut m = String::with_capacity(2048);
        let message_type = match self.kind {
            Generate::Adt => "ADT^A01^ADT_A01",
            Generate::Oru => "ORU^R01^ORU_R01",
        };
        m.push_str("MSH|^~\\&|PLEXUS-SEND|LOADGEN|RECEIVER|HOSP|");
        m.push_str(now);
        m.push_str("||");
        m.push_str(message_type);
        m.push('|');
        m.push_str(&self.run_id);
        push_padded(&mut m, i, 10);
        m.push_str("|P|2.5.1\r");
        if self.kind == Generate::Adt {
            m.push_str("EVN|A01|");
            m.push_str(now);
            m.push('\r');
        }
        // PID: an obviously fake patient derived from its number.
        m.push_str("PID|1||PX");
        push_padded(&mut m, p, 7);
        m.push_str("^^^HOSP^MR||Testpatient");
        push_padded(&mut m, p, 1);
        m.push_str("^Synthetic||");
        push_padded(&mut m, 1940 + p % 70, 1);
        push_padded(&mut m, 1 + p % 12, 2);
        push_padded(&mut m, 1 + p % 28, 2);
        m.push_str(if p.is_multiple_of(2) { "|F|||" } else { "|M|||" });
        push_padded(&mut m, p, 1);
        m.push_str(" Test Street^^Springfield^^12345^USA");
        match self.kind {
            Generate::Adt => {
                m.push_str("||555-0100\rPV1|1|I|WARD1^");
                push_padded(&mut m, 100 + p % 50, 1);
                m.push_str("^1^HOSP||||1234^Attending^Test|||MED||||ADM|||||V");
                push_padded(&mut m, i, 10);
                m.push_str("|||||||||||||||||||||||||");
                m.push_str(now);
                m.push('\r');
            }
            Generate::Oru => {
                m.push_str("\rPV1|1|O|CLINIC^101^1^HOSP\rORC|RE|ORD");
                push_padded(&mut m, i, 1);
                m.push_str("|FIL");
                push_padded(&mut m, i, 1);
                m.push_str("\rOBR|1|ORD");
                push_padded(&mut m, i, 1);
                m.push_str("|FIL");
                push_padded(&mut m, i, 1);
                m.push_str("|58410-2^CBC panel - Blood by Automated count^LN|||");
                m.push_str(now);
                m.push_str("|||||||||1234^Ordering^Test||||||");
                m.push_str(now);
                m.push_str("|||F\r");
                for (n, (head, tail)) in OBX_PARTS.iter().enumerate() {
                    m.push_str("OBX|");
                    push_padded(&mut m, n as u64 + 1, 1);
                    m.push_str(head);
                    push_padded(&mut m, 5 + (i + n as u64) % 40, 1);
                    m.push('.');
                    push_padded(&mut m, p % 10, 1);
                    m.push_str(tail);
                    m.push_str(now);
                    m.push('\r');
                }
            }
        }
        Bytes::from(m)
    }
}

/// The twelve results of a generated CBC panel: each OBX's text before its
/// value (after `OBX|<n>`) and after it (before the observation time).
const OBX_PARTS: [(&str, &str); 12] = [
    ("|NM|6690-2^Leukocytes [#/volume] in Blood by Automated count^LN||", "|10*3/uL|4.5-11.0|N|||F|||"),
    ("|NM|789-8^Erythrocytes [#/volume] in Blood by Automated count^LN||", "|10*6/uL|4.2-5.4|N|||F|||"),
    ("|NM|718-7^Hemoglobin [Mass/volume] in Blood^LN||", "|g/dL|12.0-16.0|N|||F|||"),
    ("|NM|4544-3^Hematocrit [Volume Fraction] of Blood by Automated count^LN||", "|%|37-47|N|||F|||"),
    ("|NM|787-2^MCV [Entitic volume] by Automated count^LN||", "|fL|80-100|N|||F|||"),
    ("|NM|785-6^MCH [Entitic mass] by Automated count^LN||", "|pg|27-33|N|||F|||"),
    ("|NM|786-4^MCHC [Mass/volume] by Automated count^LN||", "|g/dL|32-36|N|||F|||"),
    ("|NM|788-0^Erythrocyte distribution width [Ratio] by Automated count^LN||", "|%|11.5-14.5|N|||F|||"),
    ("|NM|777-3^Platelets [#/volume] in Blood by Automated count^LN||", "|10*3/uL|150-400|N|||F|||"),
    ("|NM|770-8^Neutrophils/100 leukocytes in Blood by Automated count^LN||", "|%|40-70|N|||F|||"),
    ("|NM|736-9^Lymphocytes/100 leukocytes in Blood by Automated count^LN||", "|%|20-40|N|||F|||"),
    ("|NM|5905-5^Monocytes/100 leukocytes in Blood by Automated count^LN||", "|%|2-8|N|||F|||"),
];

/// `n` in decimal, left-padded with zeros to at least `width` digits.
fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let at = at.min(digits.len() - width.min(digits.len()));
    out.extend(digits[at..].iter().map(|&d| char::from(d)));
}

/// `now` as an HL7 DTM to the second (`YYYYMMDDHHMMSS`), without parsing
/// a format string per message.
fn hl7_now(now: chrono::DateTime<chrono::Utc>) -> [u8; 14] {
    use chrono::{Datelike, Timelike};
    let mut out = [b'0'; 14];
    let parts = [
        (now.year().clamp(0, 9999) as u32, 0, 4),
        (now.month(), 4, 2),
        (now.day(), 6, 2),
        (now.hour(), 8, 2),
        (now.minute(), 10, 2),
        (now.second().min(59), 12, 2),
    ];
    for (mut value, at, width) in parts {
        for k in (at..at + width).rev() {
            out[k] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    out
}

/// What one connection (or all of them) saw.
#[derive(Debug, Default)]
struct Report {
    /// ACKs per MSA-1 code.
    codes: BTreeMap<String, u64>,
    /// ACK latencies in microseconds.
    latencies: Vec<u32>,
    /// Messages that never got an ACK.
    unacked: u64,
    /// Messages written again after a reconnect.
    resent: u64,
    /// Connections opened again after a failure.
    reconnects: u64,
    /// Answers that were not a readable ACK or matched no message in flight.
    bad_acks: u64,
    elapsed: Duration,
}

impl Report {
    fn merge(&mut self, other: Report) {
        for (code, n) in other.codes {
            *self.codes.entry(code).or_default() += n;
        }
        self.latencies.extend(other.latencies);
        self.unacked += other.unacked;
        self.resent += other.resent;
        self.reconnects += other.reconnects;
        self.bad_acks += other.bad_acks;
    }

    /// Every message acknowledged, and with AA/CA unless `--allow-nak`.
    fn success(&self, args: &SendArgs) -> bool {
        self.unacked == 0 && (args.allow_nak || self.non_accept() == 0)
    }

    fn acked(&self) -> u64 {
        self.codes.values().sum()
    }

    fn non_accept(&self) -> u64 {
        self.codes.iter().filter(|(c, _)| !matches!(c.as_str(), "AA" | "CA")).map(|(_, n)| n).sum()
    }

    fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
    }

    fn print(mut self, args: &SendArgs, count: u64) -> anyhow::Result<()> {
        self.latencies.sort_unstable();
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let rate = self.acked() as f64 / secs;
        let p50 = Self::percentile_ms(&self.latencies, 50.0);
        let p95 = Self::percentile_ms(&self.latencies, 95.0);
        let p99 = Self::percentile_ms(&self.latencies, 99.0);
        let max = self.latencies.last().map_or(0.0, |&v| v as f64 / 1000.0);
        let mut stdout = std::io::stdout().lock();
        if args.json {
            let summary = serde_json::json!({
                "to": args.to,
                "connections": args.connections,
                "window": args.window,
                "messages": count,
                "acked": self.acked(),
                "unacked": self.unacked,
                "codes": self.codes,
                "resent": self.resent,
                "reconnects": self.reconnects,
                "bad_acks": self.bad_acks,
                "elapsed_s": secs,
                "msgs_per_s": rate,
                "latency_ms": { "p50": p50, "p95": p95, "p99": p99, "max": max },
            });
            writeln!(stdout, "{summary}")?;
        } else {
            let codes: Vec<String> = self.codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
            writeln!(
                stdout,
                "{count} messages to {} over {} connection(s), window {}: {:.3} s, {rate:.1} msgs/s",
                args.to, args.connections, args.window, secs
            )?;
            writeln!(stdout, "ACK latency: p50 {p50:.3} ms, p95 {p95:.3} ms, p99 {p99:.3} ms, max {max:.3} ms")?;
            writeln!(stdout, "ACK codes: {}", if codes.is_empty() { "none".to_owned() } else { codes.join(", ") })?;
            writeln!(
                stdout,
                "not acknowledged: {}; resent: {}; reconnects: {}; unreadable ACKs: {}",
                self.unacked, self.resent, self.reconnects, self.bad_acks
            )?;
        }
        Ok(())
    }
}

/// Runs every connection to completion and merges their reports.
async fn send_all(args: &SendArgs, source: Arc<Source>, count: u64, tls: Option<Tls>) -> anyhow::Result<Report> {
    let tls = tls.map(Arc::new);
    let settings = Arc::new(Settings {
        to: args.to.clone(),
        window: args.window,
        retry_unacked: args.retry_unacked,
        ack_timeout: args.ack_timeout,
        reconnect_timeout: args.reconnect_timeout,
        json: args.json,
    });
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.connections as u64 {
        // Connection c sends messages c, c + N, c + 2N ...
        let indices: VecDeque<u64> = (c..count).step_by(args.connections).collect();
        if indices.is_empty() {
            continue;
        }
        tasks.push(tokio::spawn(connection(settings.clone(), source.clone(), tls.clone(), indices)));
    }
    let mut report = Report::default();
    for task in tasks {
        report.merge(task.await.context("a connection task failed")?);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

struct Settings {
    to: String,
    window: usize,
    retry_unacked: bool,
    ack_timeout: Duration,
    reconnect_timeout: Duration,
    json: bool,
}

type Stream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;
type Conn = Framed<Stream, hl7v2::mllp::MllpCodec>;

/// A message written and waiting for its ACK.
struct InFlight {
    index: u64,
    control_id: String,
    sent_at: Instant,
}

/// One connection's whole run: connect, pipeline, reconnect.
async fn connection(
    settings: Arc<Settings>,
    source: Arc<Source>,
    tls: Option<Arc<Tls>>,
    mut todo: VecDeque<u64>,
) -> Report {
    let mut report = Report::default();
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut first = true;
    'connections: while !todo.is_empty() || !in_flight.is_empty() {
        let mut conn = match connect_with_backoff(&settings, tls.as_deref()).await {
            Ok(conn) => conn,
            Err(e) => {
                report_line(&settings, &format!("giving up on {}: {e}", settings.to));
                report.unacked += (todo.len() + in_flight.len()) as u64;
                return report;
            }
        };
        if !first {
            report.reconnects += 1;
        }
        first = false;
        // An answer already read without waiting (see the end of the loop).
        let mut ready = None;
        loop {
            // Fill the window, then flush once: pipelined frames go out in
            // as few writes as possible. Not while answers are already
            // waiting: those are taken first, so a window freed by several
            // ACKs is refilled by one write rather than one write per ACK
            // (fewer system calls here and fewer wake-ups at the receiver).
            let mut wrote = false;
            while ready.is_none() && in_flight.len() < settings.window {
                let Some(index) = todo.pop_front() else { break };
                let (control_id, bytes) = source.message(index);
                if let Err(e) = conn.feed(bytes).await {
                    report_line(&settings, &format!("{}: write failed: {e}", settings.to));
                    todo.push_front(index);
                    lose_in_flight(&settings, &source, &mut report, &mut in_flight, &mut todo);
                    continue 'connections;
                }
                in_flight.push_back(InFlight { index, control_id, sent_at: Instant::now() });
                wrote = true;
            }
            if wrote && let Err(e) = SinkExt::<Bytes>::flush(&mut conn).await {
                report_line(&settings, &format!("{}: write failed: {e}", settings.to));
                lose_in_flight(&settings, &source, &mut report, &mut in_flight, &mut todo);
                continue 'connections;
            }
            if in_flight.is_empty() {
                break 'connections;
            }
            let next = match ready.take() {
                Some(answer) => Ok(answer),
                None => tokio::time::timeout(settings.ack_timeout, conn.next()).await,
            };
            let frame = match next {
                Ok(Some(Ok(frame))) => frame,
                Ok(Some(Err(e))) => {
                    report_line(&settings, &format!("{}: unreadable answer: {e}", settings.to));
                    report.bad_acks += 1;
                    lose_in_flight(&settings, &source, &mut report, &mut in_flight, &mut todo);
                    continue 'connections;
                }
                Ok(None) => {
                    report_line(
                        &settings,
                        &format!(
                            "{}: connection closed with {} message(s) unacknowledged",
                            settings.to,
                            in_flight.len()
                        ),
                    );
                    lose_in_flight(&settings, &source, &mut report, &mut in_flight, &mut todo);
                    continue 'connections;
                }
                Err(_) => {
                    report_line(&settings, &format!("{}: no ACK within {:?}", settings.to, settings.ack_timeout));
                    lose_in_flight(&settings, &source, &mut report, &mut in_flight, &mut todo);
                    continue 'connections;
                }
            };
            let ack = match parse_ack(&frame) {
                Ok(ack) => ack,
                Err(e) => {
                    report_line(&settings, &format!("{}: {e}", settings.to));
                    report.bad_acks += 1;
                    // The stream can no longer pair answers with messages.
                    lose_in_flight(&settings, &source, &mut report, &mut in_flight, &mut todo);
                    continue 'connections;
                }
            };
            // Receivers answer in order; look further only if one did not.
            let Some(pos) = in_flight.iter().position(|m| m.control_id == ack.control_id) else {
                report_line(&settings, &format!("ACK for unknown control id {:?}", ack.control_id));
                report.bad_acks += 1;
                continue;
            };
            let Some(done) = in_flight.remove(pos) else { continue };
            let micros = done.sent_at.elapsed().as_micros().min(u32::MAX as u128) as u32;
            report.latencies.push(micros);
            // Looked up before inserting: almost every ACK has a code seen before,
            // and entry() would take an owned key (an allocation) each time.
            match report.codes.get_mut(ack.code.as_str()) {
                Some(n) => *n += 1,
                None => {
                    report.codes.insert(ack.code.clone(), 1);
                }
            }
            if !matches!(ack.code.as_str(), "AA" | "CA") {
                let text = if ack.text.is_empty() { String::new() } else { format!(": {}", ack.text) };
                report_line(
                    &settings,
                    &format!("{}: {} (control id {}){text}", source.label(done.index), ack.code, done.control_id),
                );
            }
            if !in_flight.is_empty() {
                // Polled once: an answer already buffered or readable now,
                // else nothing (and the window is refilled).
                ready = conn.next().now_or_never();
            }
        }
    }
    report
}

/// Handles the messages in flight on a failed connection: queued again
/// (first, in order) with `--retry-unacked`, else counted as unacknowledged.
fn lose_in_flight(
    settings: &Settings,
    source: &Source,
    report: &mut Report,
    in_flight: &mut VecDeque<InFlight>,
    todo: &mut VecDeque<u64>,
) {
    if settings.retry_unacked {
        report.resent += in_flight.len() as u64;
        for m in in_flight.drain(..).rev() {
            todo.push_front(m.index);
        }
    } else {
        report.unacked += in_flight.len() as u64;
        for m in in_flight.drain(..) {
            report_line(settings, &format!("{}: no ACK (control id {})", source.label(m.index), m.control_id));
        }
    }
}

/// Opens the connection, retrying with backoff for `reconnect_timeout`.
async fn connect_with_backoff(settings: &Settings, tls: Option<&Tls>) -> anyhow::Result<Conn> {
    let deadline = Instant::now() + settings.reconnect_timeout;
    let mut delay = Duration::from_millis(50);
    loop {
        match open(&settings.to, tls).await {
            Ok(conn) => return Ok(conn),
            Err(e) if Instant::now() + delay > deadline => return Err(e),
            Err(_) => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn open(to: &str, tls: Option<&Tls>) -> anyhow::Result<Conn> {
    let tcp = TcpStream::connect(to).await.with_context(|| format!("connecting to {to}"))?;
    tcp.set_nodelay(true)?;
    let stream = match tls {
        None => Either::Left(tcp),
        Some(tls) => Either::Right(tls.connector.connect(tls.server_name.clone(), tcp).await.context("TLS handshake")?),
    };
    // ACKs are small; a huge answer is a broken peer.
    Ok(Framed::new(stream, hl7v2::mllp::MllpCodec::new(1024 * 1024)))
}

/// MSH-10 of a message (empty when it has none).
fn control_id_of(bytes: &[u8]) -> String {
    hl7v2::Message::parse(bytes.to_vec())
        .ok()
        .and_then(|m| m.control_id().map(|c| c.trim().to_owned()))
        .unwrap_or_default()
}

/// Non-AA ACKs and connection events: stdout, or stderr when stdout
/// carries the JSON summary.
fn report_line(settings: &Settings, line: &str) {
    if settings.json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_split_into_messages_with_cr() {
        let text = b"FHS|^~\\&\nBHS|^~\\&\nMSH|^~\\&|A|1\nPID|1\n\nMSH|^~\\&|A|2\r\nPID|2\r\nBTS|2\nFTS|1\n";
        let messages = split_messages(text);
        assert_eq!(messages, [b"MSH|^~\\&|A|1\rPID|1\r".to_vec(), b"MSH|^~\\&|A|2\rPID|2\r".to_vec()]);
        assert!(split_messages(b"garbage\n").is_empty());
    }

    #[test]
    fn generated_patients_stay_on_one_connection() {
        for (patients, connections) in [(10, 4), (3, 3), (100, 32), (7, 1)] {
            let g = Generator { kind: Generate::Adt, run_id: "R".into(), patients, connections };
            let mut owner = BTreeMap::new();
            for i in 0..1000 {
                let p = g.patient(i);
                assert!(p < patients);
                let c = i % connections;
                assert_eq!(*owner.entry(p).or_insert(c), c, "patient {p} on two connections");
            }
            assert_eq!(owner.len() as u64, patients, "every patient is used");
        }
    }

    #[test]
    fn generated_messages_parse_and_have_unique_control_ids() {
        for kind in [Generate::Adt, Generate::Oru] {
            let g = Generator { kind, run_id: "0A1B2C3D".into(), patients: 5, connections: 2 };
            let a = hl7v2::Message::parse(g.message(1).to_vec()).unwrap();
            let b = hl7v2::Message::parse(g.message(2).to_vec()).unwrap();
            assert_eq!(a.control_id().as_deref(), Some("0A1B2C3D0000000001"));
            assert_ne!(a.control_id(), b.control_id());
            assert_eq!(a.get("PID-3-1").as_deref(), Some(format!("PX{:07}", g.patient(1)).as_str()));
        }
    }

    #[test]
    fn generated_messages_are_exactly_the_documented_ones() {
        // The same bytes the load generator has always sent (benchmarks
        // stay comparable), given a fixed clock.
        let now = "20261121120000";
        let g = |kind| Generator { kind, run_id: "RUN1".into(), patients: 5, connections: 2 };
        assert_eq!(
            &g(Generate::Adt).message_at(13, now)[..],
            b"MSH|^~\\&|PLEXUS-SEND|LOADGEN|RECEIVER|HOSP|20261121120000||ADT^A01^ADT_A01|RUN10000000013|P|2.5.1\r\
              EVN|A01|20261121120000\r\
              PID|1||PX0000001^^^HOSP^MR||Testpatient1^Synthetic||19410202|M|||1 Test Street^^Springfield^^12345^USA||555-0100\r\
              PV1|1|I|WARD1^101^1^HOSP||||1234^Attending^Test|||MED||||ADM|||||V0000000013|||||||||||||||||||||||||20261121120000\r"
        );
        let oru = g(Generate::Oru).message_at(13, now);
        let segments: Vec<&[u8]> = oru.split(|&b| b == b'\r').collect();
        assert_eq!(segments.len(), 5 + 12 + 1, "12 OBX and a final CR");
        assert_eq!(
            segments[..5].join(&b'\r'),
            b"MSH|^~\\&|PLEXUS-SEND|LOADGEN|RECEIVER|HOSP|20261121120000||ORU^R01^ORU_R01|RUN10000000013|P|2.5.1\r\
              PID|1||PX0000001^^^HOSP^MR||Testpatient1^Synthetic||19410202|M|||1 Test Street^^Springfield^^12345^USA\r\
              PV1|1|O|CLINIC^101^1^HOSP\r\
              ORC|RE|ORD13|FIL13\r\
              OBR|1|ORD13|FIL13|58410-2^CBC panel - Blood by Automated count^LN|||20261121120000|||||||||1234^Ordering^Test||||||20261121120000|||F"
        );
        assert_eq!(
            segments[5],
            b"OBX|1|NM|6690-2^Leukocytes [#/volume] in Blood by Automated count^LN||18.1|10*3/uL|4.5-11.0|N|||F|||20261121120000"
        );
        assert_eq!(
            segments[16],
            b"OBX|12|NM|5905-5^Monocytes/100 leukocytes in Blood by Automated count^LN||29.1|%|2-8|N|||F|||20261121120000"
        );
        assert_eq!(oru.len(), 1665);
    }

    #[test]
    fn timestamps_and_numbers_are_written_like_format() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-03-04T05:06:07Z").unwrap().with_timezone(&chrono::Utc);
        assert_eq!(&hl7_now(t), b"20260304050607");
        for (n, width) in [(0u64, 1), (7, 1), (42, 7), (1234567890123, 10), (u64::MAX, 1), (5, 0)] {
            let mut s = String::new();
            push_padded(&mut s, n, width);
            assert_eq!(s, format!("{n:0width$}"));
        }
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<u32> = (1..=100).map(|n| n * 1000).collect();
        assert_eq!(Report::percentile_ms(&v, 50.0), 50.0);
        assert_eq!(Report::percentile_ms(&v, 99.0), 99.0);
        assert_eq!(Report::percentile_ms(&[], 99.0), 0.0);
    }

    // -----------------------------------------------------------------------
    // Against real sockets: a listener written here, and the MLLP peer.

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use clap::Parser;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Debug, clap::Parser)]
    struct TestCli {
        #[command(flatten)]
        args: SendArgs,
    }

    fn args(line: &[&str]) -> SendArgs {
        let mut argv = vec!["send"];
        argv.extend_from_slice(line);
        TestCli::try_parse_from(argv).unwrap().args
    }

    async fn send(args: &SendArgs) -> Report {
        let source = Arc::new(match args.generate {
            Some(kind) => Source::Generated(Generator {
                kind,
                run_id: args.run_id.clone().unwrap_or_else(|| "T".to_owned()),
                patients: args.patients,
                connections: args.connections as u64,
            }),
            None => Source::Files(read_files(&args.files).unwrap()),
        });
        let count = match (&*source, args.count) {
            (_, Some(n)) => n,
            (Source::Files(m), None) => m.len() as u64,
            (Source::Generated(_), None) => 1000,
        };
        let tls = tls_config(args).unwrap();
        send_all(args, source, count, tls).await.unwrap()
    }

    /// What the test listener does with the `n`-th message it receives
    /// (counted across connections, from 0).
    #[derive(Clone, Copy)]
    enum Answer {
        Code(&'static str),
        /// Close the connection without answering.
        Drop,
    }

    /// Decides the answer to the `n`-th message with this control id.
    type AnswerFn = Arc<dyn Fn(usize, &str) -> Answer + Send + Sync>;

    #[derive(Default)]
    struct Received {
        /// (connection number, control id), in arrival order.
        messages: Mutex<Vec<(usize, String)>>,
        connections: AtomicUsize,
    }

    /// An MLLP listener on 127.0.0.1:0 that reads pipelined frames and
    /// answers each in order; `answer(n, control_id)` decides.
    async fn listener(answer: impl Fn(usize, &str) -> Answer + Send + Sync + 'static) -> (String, Arc<Received>) {
        listener_with(answer, None).await
    }

    /// The same, over TLS with `acceptor` when given.
    async fn listener_with(
        answer: impl Fn(usize, &str) -> Answer + Send + Sync + 'static,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
    ) -> (String, Arc<Received>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let received = Arc::new(Received::default());
        let answer: AnswerFn = Arc::new(answer);
        let counter = Arc::new(AtomicUsize::new(0));
        let r = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let connection = r.connections.fetch_add(1, Ordering::SeqCst);
                let (r, answer, counter) = (r.clone(), answer.clone(), counter.clone());
                match &acceptor {
                    None => drop(tokio::spawn(answer_frames(stream, connection, r, answer, counter))),
                    Some(acceptor) => {
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                answer_frames(tls, connection, r, answer, counter).await;
                            }
                        });
                    }
                }
            }
        });
        (address, received)
    }

    async fn answer_frames<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut stream: S,
        connection: usize,
        r: Arc<Received>,
        answer: AnswerFn,
        counter: Arc<AtomicUsize>,
    ) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            // Answer every complete frame in the buffer, in order.
            while let Some(start) = buf.iter().position(|&b| b == 0x0B) {
                let Some(len) = buf[start..].windows(2).position(|w| w == [0x1C, 0x0D]) else { break };
                let frame = buf[start + 1..start + len].to_vec();
                buf.drain(..start + len + 2);
                let text = String::from_utf8_lossy(&frame).into_owned();
                let control_id = text.split('\r').next().unwrap().split('|').nth(9).unwrap().to_owned();
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let code = match answer(n, &control_id) {
                    Answer::Code(code) => code,
                    Answer::Drop => return,
                };
                r.messages.lock().unwrap().push((connection, control_id.clone()));
                let ack = format!(
                    "\x0bMSH|^~\\&|T|T|S|S|20261121||ACK|A{n}|P|2.5\rMSA|{code}|{control_id}|{}\r\x1c\r",
                    if code == "AA" { "" } else { "test listener says no" }
                );
                if stream.write_all(ack.as_bytes()).await.is_err() {
                    return;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    #[tokio::test]
    async fn counts_ack_codes_and_fails_on_nak_unless_allowed() {
        // AE for every third message.
        let (address, received) =
            listener(|n, _| if n % 3 == 2 { Answer::Code("AE") } else { Answer::Code("AA") }).await;
        let a = args(&["--to", &address, "--generate", "adt", "--count", "30", "--connections", "2", "--window", "4"]);
        let report = send(&a).await;
        assert_eq!(report.codes.get("AA"), Some(&20));
        assert_eq!(report.codes.get("AE"), Some(&10));
        assert_eq!(report.unacked, 0);
        assert_eq!(report.latencies.len(), 30);
        assert!(!report.success(&a), "AE makes the run fail");
        let allowed = args(&["--to", &address, "--generate", "adt", "--allow-nak"]);
        assert!(report.success(&allowed), "--allow-nak accepts AE");
        assert_eq!(received.messages.lock().unwrap().len(), 30);
        assert_eq!(received.connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn pipelined_messages_keep_their_order_per_connection() {
        let (address, received) = listener(|_, _| Answer::Code("AA")).await;
        let a = args(&[
            "--to",
            &address,
            "--generate",
            "oru",
            "--count",
            "200",
            "--connections",
            "3",
            "--window",
            "16",
            "--patients",
            "9",
            "--run-id",
            "ORD",
        ]);
        let report = send(&a).await;
        assert!(report.success(&a));
        let messages = received.messages.lock().unwrap();
        assert_eq!(messages.len(), 200);
        // Control ids end with the message number: increasing per connection.
        for connection in 0..3 {
            let seq: Vec<u64> = messages
                .iter()
                .filter(|(c, _)| *c == connection)
                .map(|(_, id)| id.trim_start_matches("ORD").parse().unwrap())
                .collect();
            assert!(seq.windows(2).all(|w| w[0] < w[1]), "connection {connection}: {seq:?}");
        }
    }

    #[tokio::test]
    async fn retry_unacked_resends_after_a_dropped_connection() {
        // The listener drops the connection at the 5th and 12th messages
        // received, without answering them.
        let (address, received) =
            listener(|n, _| if n == 4 || n == 11 { Answer::Drop } else { Answer::Code("AA") }).await;
        let a = args(&[
            "--to",
            &address,
            "--generate",
            "adt",
            "--count",
            "20",
            "--window",
            "3",
            "--retry-unacked",
            "--run-id",
            "RS",
        ]);
        let report = send(&a).await;
        assert!(report.success(&a), "{report:?}");
        assert_eq!(report.codes.get("AA"), Some(&20));
        assert!(report.resent >= 2, "{report:?}");
        assert_eq!(report.reconnects, 2);
        // Every message was answered once; order within the run is kept.
        let ids: Vec<String> = received.messages.lock().unwrap().iter().map(|(_, id)| id.clone()).collect();
        let mut unique = ids.clone();
        unique.dedup();
        assert_eq!(unique.len(), 20, "{ids:?}");
        let seq: Vec<u64> = unique.iter().map(|id| id.trim_start_matches("RS").parse().unwrap()).collect();
        assert_eq!(seq, (0..20).collect::<Vec<u64>>());
    }

    #[tokio::test]
    async fn without_retry_unacked_lost_messages_fail_the_run() {
        let (address, _received) = listener(|n, _| if n == 4 { Answer::Drop } else { Answer::Code("AA") }).await;
        let a = args(&["--to", &address, "--generate", "adt", "--count", "10"]);
        let report = send(&a).await;
        assert_eq!(report.unacked, 1);
        assert_eq!(report.codes.get("AA"), Some(&9));
        assert!(!report.success(&a));
        let allowed = args(&["--to", &address, "--generate", "adt", "--allow-nak"]);
        assert!(!report.success(&allowed), "--allow-nak does not excuse a missing ACK");
    }

    #[tokio::test]
    async fn nobody_listening_counts_everything_as_unacked() {
        let port = testkit::free_port();
        let a = args(&[
            "--to",
            &format!("127.0.0.1:{port}"),
            "--generate",
            "adt",
            "--count",
            "5",
            "--reconnect-timeout",
            "200ms",
        ]);
        let report = send(&a).await;
        assert_eq!(report.unacked, 5);
        assert!(report.codes.is_empty());
    }

    #[tokio::test]
    async fn sends_over_tls_with_a_ca_file() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("server.pem");
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (address, received) = listener_with(|_, _| Answer::Code("AA"), Some(acceptor)).await;
        let ca = ca.display().to_string();
        let a = args(&[
            "--to",
            &address,
            "--generate",
            "adt",
            "--count",
            "5",
            "--tls-ca",
            &ca,
            "--tls-server-name",
            "localhost",
        ]);
        let report = send(&a).await;
        assert!(report.success(&a), "{report:?}");
        assert_eq!(received.messages.lock().unwrap().len(), 5);

        // Without --tls the same listener gets no readable message.
        let plain = args(&["--to", &address, "--generate", "adt", "--count", "1", "--ack-timeout", "300ms"]);
        let report = send(&plain).await;
        assert_eq!(report.unacked, 1);
        assert_eq!(received.messages.lock().unwrap().len(), 5);
    }

    fn fixtures() -> PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hl7v2/tests/fixtures")
    }

    #[tokio::test]
    async fn sends_the_sample_files_to_the_medplum_peer() {
        let Some(_peers) = testkit::peers_or_skip("plexus::send::peer") else { return };
        let port = testkit::free_port();
        let script = testkit::shared_dir().join("peers").join("mllp-peer-server.js");
        let _peer =
            testkit::PeerProcess::spawn("node", &[script.display().to_string(), port.to_string()], port).unwrap();
        let files: Vec<String> =
            ["ADT-A01-01.hl7", "ORU-R01-01.hl7", "SIU-S12-01.hl7", "MDM-T02-01.hl7", "VXU-V04-01.hl7"]
                .iter()
                .map(|f| fixtures().join(f).display().to_string())
                .collect();
        let to = format!("127.0.0.1:{port}");
        let mut line = vec!["--to", to.as_str(), "--connections", "2"];
        line.extend(files.iter().map(String::as_str));
        let a = args(&line);
        let report = send(&a).await;
        assert_eq!(report.codes.get("AA"), Some(&5), "{report:?}");
        assert!(report.success(&a));
    }
}
