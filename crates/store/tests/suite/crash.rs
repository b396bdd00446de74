//! Crash test: a child process (this test binary, re-executed) accepts
//! messages from many tasks at once and prints each control id the moment
//! `accept` returned Ok; the parent SIGKILLs it mid-run, reopens the store
//! and checks that every acknowledged message is there exactly once, with
//! its delivery.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use store::{Accepted, SearchQuery, StoreOptions};

use crate::support::{Kind, TestDb, message};

const CHILD_ENV: &str = "PLEXUS_STORE_CRASH_CHILD_URL";
/// Acknowledgements the parent waits for before killing the child.
const KILL_AFTER: usize = 400;

/// The child's body. A no-op unless the parent set `CHILD_ENV`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child_accept_loop() {
    let Ok(url) = std::env::var(CHILD_ENV) else { return };
    let store = store::open(&url, StoreOptions::default()).await.expect("child opens the store");
    // A safety net: never outlive a parent that failed to kill us.
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_secs(120)).await;
        std::process::exit(3);
    });
    let mut tasks = Vec::new();
    for producer in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let control_id = format!("P{producer:02}-{i:06}");
                let key = format!("MRN-{}", i % 11);
                let m = message("adt", &control_id, Some(&key), &["ehr"]);
                match store.accept(m).await {
                    Ok(Accepted::Stored { id }) => {
                        // Straight to the pipe, unbuffered by the test
                        // harness: the parent must see it before the kill.
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "OK {control_id} {id}");
                        let _ = out.flush();
                    }
                    other => panic!("child accept {control_id}: {other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Kills the child if the parent fails before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn acknowledged_accepts_survive_sigkill(kind: Kind) {
    let Some(db) = TestDb::create(kind, &format!("store::crash::{kind:?}")).await else { return };
    // Create the schema first so the child starts accepting at once.
    store::open(&db.url, StoreOptions::default()).await.expect("open").close().await;

    let exe = std::env::current_exe().expect("test binary path");
    let mut child = KillOnDrop(
        Command::new(exe)
            .args(["--exact", "crash::crash_child_accept_loop", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, &db.url)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child"),
    );
    let stdout = child.0.stdout.take().expect("child stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut acked = Vec::new();
    while acked.len() < KILL_AFTER {
        let line = lines.next().expect("child ended before the kill").expect("read child output");
        if let Some(rest) = line.strip_prefix("OK ") {
            let (control_id, id) = rest.split_once(' ').expect("OK line");
            acked.push((control_id.to_owned(), id.to_owned()));
        }
    }
    child.0.kill().expect("SIGKILL the child");
    // Acknowledgements already in the pipe count too.
    for line in lines {
        let Ok(line) = line else { break };
        if let Some((control_id, id)) = line.strip_prefix("OK ").and_then(|rest| rest.split_once(' ')) {
            acked.push((control_id.to_owned(), id.to_owned()));
        }
    }
    let status = child.0.wait().expect("reap child");
    assert!(!status.success(), "the child was killed, not finished");

    let store = store::open(&db.url, StoreOptions::default()).await.expect("reopen after the crash");
    for (control_id, id) in &acked {
        let page = store
            .search(&SearchQuery { control_id: Some(control_id.clone()), ..Default::default() })
            .await
            .expect("search");
        assert_eq!(page.items.len(), 1, "acknowledged {control_id} must be stored exactly once");
        assert_eq!(&page.items[0].id.to_string(), id);
        assert_eq!(page.items[0].deliveries.len(), 1, "{control_id} has its delivery");
    }
    // Nothing half-written: every stored message has its delivery.
    let counts = store.counts().await.expect("counts");
    let deliveries: u64 = counts.iter().map(|c| c.count).sum();
    let mut messages = 0u64;
    let mut cursor = None;
    loop {
        let page = store.search(&SearchQuery { limit: 1000, cursor, ..Default::default() }).await.expect("list");
        messages += page.items.len() as u64;
        assert!(page.items.iter().all(|m| m.deliveries.len() == 1));
        match page.next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(messages, deliveries);
    assert!(messages >= acked.len() as u64);
    eprintln!("crash test ({kind:?}): {} acknowledged before SIGKILL, {messages} stored", acked.len());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_acknowledged_accepts_survive_sigkill() {
    acknowledged_accepts_survive_sigkill(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_acknowledged_accepts_survive_sigkill() {
    acknowledged_accepts_survive_sigkill(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_acknowledged_accepts_survive_sigkill() {
    acknowledged_accepts_survive_sigkill(Kind::Mysql).await;
}
