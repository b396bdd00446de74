//! Shared by the metrics, alerts and retention tests: config, an MLLP
//! client, an MLLP receiver, polling and a Prometheus text reader.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use engine::config::Config;
use hl7v2::mllp::MllpCodec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Decoder, Encoder};

/// A valid ADT^A08 with control id `control_id`.
pub fn adt(control_id: &str, mrn: &str) -> String {
    format!(
        "MSH|^~\\&|REG|HOSP|EHR|HOSP|20261121120000||ADT^A08^ADT_A01|{control_id}|P|2.5.1\r\
         EVN|A08|20261121120000\r\
         PID|1||{mrn}^^^HOSP^MR||DOE^JANE||19800101|F\r\
         PV1|1|I\r"
    )
}

/// The store and API lines plus `body` (`{dir}` replaced by `dir`).
pub fn config(dir: &Path, body: &str) -> Config {
    let text = format!(
        "version = 1\n[store]\nurl = \"sqlite://{}/plexus.db\"\n[api]\nlisten = \"127.0.0.1:0\"\n{}",
        dir.display(),
        body.replace("{dir}", &dir.display().to_string())
    );
    let mut config = Config::from_toml_str(&text).unwrap_or_else(|e| panic!("config: {e}"));
    config.base_dir = dir.to_path_buf();
    config
}

/// An MLLP client.
pub struct Client {
    stream: TcpStream,
    codec: MllpCodec,
    buf: BytesMut,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client { stream: TcpStream::connect(addr).await.unwrap(), codec: MllpCodec::default(), buf: BytesMut::new() }
    }

    /// Sends one frame and returns the ACK's MSA-1.
    pub async fn exchange(&mut self, message: &str) -> String {
        let mut out = BytesMut::new();
        self.codec.encode(message.as_bytes(), &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf).unwrap() {
                let ack = hl7v2::Message::parse(frame.to_vec()).expect("a well-formed ACK");
                return ack.get("MSA-1").map(|v| v.into_owned()).unwrap_or_default();
            }
            let read = tokio::time::timeout(Duration::from_secs(30), self.stream.read_buf(&mut self.buf))
                .await
                .expect("an answer within 30 s")
                .unwrap();
            assert!(read > 0, "the server closed the connection");
        }
    }
}

/// An MLLP receiver on `listener` that answers AA and records MSH-10s.
pub fn mllp_receiver(listener: TcpListener) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut codec = MllpCodec::default();
                let mut buf = BytesMut::new();
                loop {
                    while let Ok(Some(frame)) = codec.decode(&mut buf) {
                        let msg = hl7v2::Message::parse(frame.to_vec()).unwrap();
                        log.lock().unwrap().push(msg.get("MSH-10").map(|v| v.into_owned()).unwrap_or_default());
                        let ack = hl7v2::ack::Ack::new(hl7v2::ack::AckCode::ApplicationAccept, "R", "20261121")
                            .for_message(&msg);
                        let mut out = BytesMut::new();
                        codec.encode(ack.as_bytes(), &mut out).unwrap();
                        if socket.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                    match socket.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    seen
}

/// Polls `check` until it holds (up to 30 s, which only bounds a hung test).
pub async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// GETs `path` on `addr`; returns the status and body.
pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The value of the sample `series` (name and labels exactly as rendered)
/// in a Prometheus text exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{series}: not a number")))
}
