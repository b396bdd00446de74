//! Two processes claiming from one database never hold the same order key
//! at once, and each key's messages still go out in arrival order.
//!
//! The parent fills a queue, then starts two child processes (this test
//! binary, re-executed), each with its own store (own pools, own writer) and
//! four workers. A worker that receives a delivery records "I hold this key"
//! in a table with the key as primary key, so a second holder anywhere
//! fails with a unique violation; it logs the send in a table whose serial
//! column orders all sends, releases the key, and completes the delivery.

use std::process::{Command, Stdio};
use std::time::Duration;

use store::{ClaimRequest, Outcome, RetryPolicy, StoreOptions};

use crate::support::{Kind, TestDb, message};

const CHILD_ENV: &str = "PLEXUS_STORE_CLUSTER_CHILD_URL";
const MESSAGES: usize = 600;
const KEYS: usize = 12;

/// The oracle's statements, per database.
struct Oracle {
    create: [&'static str; 2],
    hold: &'static str,
    log: &'static str,
    release: &'static str,
}

fn oracle(url: &str) -> Oracle {
    if url.starts_with("postgres") {
        Oracle {
            create: [
                "CREATE TABLE test_holds (queue_key TEXT PRIMARY KEY, worker TEXT NOT NULL)",
                "CREATE TABLE test_sent (seq BIGSERIAL PRIMARY KEY, order_key TEXT NOT NULL, arrival BIGINT NOT NULL, worker TEXT NOT NULL)",
            ],
            hold: "INSERT INTO test_holds (queue_key, worker) VALUES ($1, $2)",
            log: "INSERT INTO test_sent (order_key, arrival, worker) VALUES ($1, $2, $3)",
            release: "DELETE FROM test_holds WHERE queue_key = $1",
        }
    } else {
        Oracle {
            create: [
                "CREATE TABLE test_holds (queue_key VARCHAR(100) PRIMARY KEY, worker VARCHAR(100) NOT NULL)",
                "CREATE TABLE test_sent (seq BIGINT AUTO_INCREMENT PRIMARY KEY, order_key VARCHAR(100) NOT NULL, arrival BIGINT NOT NULL, worker VARCHAR(100) NOT NULL)",
            ],
            hold: "INSERT INTO test_holds (queue_key, worker) VALUES (?, ?)",
            log: "INSERT INTO test_sent (order_key, arrival, worker) VALUES (?, ?, ?)",
            release: "DELETE FROM test_holds WHERE queue_key = ?",
        }
    }
}

/// A connection pool for the oracle's tables (separate from the store's).
#[derive(Clone)]
enum OraclePool {
    Pg(sqlx::PgPool),
    My(sqlx::MySqlPool),
}

impl OraclePool {
    async fn connect(url: &str) -> OraclePool {
        if url.starts_with("postgres") {
            OraclePool::Pg(sqlx::PgPool::connect(url).await.expect("oracle pool"))
        } else {
            OraclePool::My(sqlx::MySqlPool::connect(url).await.expect("oracle pool"))
        }
    }

    /// Runs one statement; `args` that parse as integers are bound as such.
    async fn exec(&self, sql: &'static str, args: &[&str]) -> Result<(), sqlx::Error> {
        macro_rules! run {
            ($pool:expr) => {{
                let mut q = sqlx::query(sql);
                for a in args {
                    q = match a.parse::<i64>() {
                        Ok(n) => q.bind(n),
                        Err(_) => q.bind(*a),
                    };
                }
                q.execute($pool).await.map(|_| ())
            }};
        }
        match self {
            OraclePool::Pg(p) => run!(p),
            OraclePool::My(p) => run!(p),
        }
    }
}

/// The child's body: four workers claim until the queue stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_child_claim_loop() {
    let Ok(url) = std::env::var(CHILD_ENV) else { return };
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_secs(180)).await;
        std::process::exit(3);
    });
    let store = store::open(&url, StoreOptions { pool_size: 4, ..StoreOptions::default() }).await.expect("child store");
    let o = oracle(&url);
    let pool = OraclePool::connect(&url).await;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        let pool = pool.clone();
        let worker = format!("pid{}-w{w}", std::process::id());
        tasks.push(tokio::spawn(async move {
            let req = ClaimRequest {
                channel: "adt".into(),
                destination: "ehr".into(),
                max: 3,
                lease: Duration::from_secs(120),
                worker: worker.clone(),
            };
            let mut sent = 0usize;
            let mut idle = 0;
            while idle < 40 {
                let claim = store.claim(&req).await.expect("claim");
                if claim.deliveries.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                idle = 0;
                for d in claim.deliveries {
                    let key = d.order_key.clone().expect("keyed messages only");
                    if let Err(e) = pool.exec(o.hold, &[&key, &worker]).await {
                        println!("VIOLATION {key} held twice: {e}");
                        std::process::exit(2);
                    }
                    // Hold the key a little so that overlaps would show.
                    tokio::time::sleep(Duration::from_millis(u64::from(rand_byte() % 4))).await;
                    let arrival = d.control_id.clone().expect("control id");
                    pool.exec(o.log, &[&key, &arrival, &worker]).await.expect("log send");
                    pool.exec(o.release, &[&key]).await.expect("release key");
                    store
                        .complete(
                            d.id,
                            d.lease,
                            Outcome::Sent { response: None, transformed: None },
                            &RetryPolicy::default(),
                        )
                        .await
                        .expect("complete");
                    sent += 1;
                }
            }
            sent
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("worker");
    }
    println!("SENT {total}");
    store.close().await;
}

fn rand_byte() -> u8 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos() as u8).unwrap_or(0)
}

async fn two_processes_never_hold_one_key(kind: Kind) {
    let Some(db) = TestDb::create(kind, &format!("store::cluster::{kind:?}")).await else { return };
    let store = store::open(&db.url, StoreOptions::default()).await.expect("open");
    let o = oracle(&db.url);
    let pool = OraclePool::connect(&db.url).await;
    for sql in o.create {
        pool.exec(sql, &[]).await.expect("oracle table");
    }
    for i in 0..MESSAGES {
        // The control id is the arrival number, for the order check.
        let key = format!("K{}", i % KEYS);
        let m = message("adt", &i.to_string(), Some(&key), &["ehr"]);
        store.accept(m).await.expect("accept");
    }

    let exe = std::env::current_exe().expect("test binary");
    let spawn = || {
        Command::new(&exe)
            .args(["--exact", "cluster::cluster_child_claim_loop", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, &db.url)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child")
    };
    let children = [spawn(), spawn()];
    let outputs: Vec<_> = tokio::task::spawn_blocking(move || {
        children.map(|c| c.wait_with_output().expect("child output")).into_iter().collect()
    })
    .await
    .expect("join");
    let mut per_child = Vec::new();
    for out in &outputs {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("VIOLATION"), "two holders of one key:\n{text}");
        assert!(out.status.success(), "child failed: {:?}\n{text}", out.status);
        // The harness prints "test ... " on the same line before it.
        let sent: usize = text
            .split("SENT ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("child reports its count:\n{text}"));
        per_child.push(sent);
    }
    assert_eq!(per_child.iter().sum::<usize>(), MESSAGES, "every delivery sent once: {per_child:?}");
    assert!(per_child.iter().all(|n| *n > 0), "both processes took part: {per_child:?}");

    // Per key, the global send order equals arrival order.
    let log = "SELECT order_key, arrival FROM test_sent ORDER BY seq";
    let rows: Vec<(String, i64)> = match &pool {
        OraclePool::Pg(p) => sqlx::query_as(log).fetch_all(p).await.expect("read log"),
        OraclePool::My(p) => sqlx::query_as(log).fetch_all(p).await.expect("read log"),
    };
    assert_eq!(rows.len(), MESSAGES);
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    for (key, arrival) in rows {
        if let Some(prev) = last.insert(key.clone(), arrival) {
            assert!(prev < arrival, "key {key}: {arrival} sent after {prev}");
        }
    }
    eprintln!("cluster test ({kind:?}): {MESSAGES} deliveries over {KEYS} keys, per process {per_child:?}");
    match pool {
        OraclePool::Pg(p) => p.close().await,
        OraclePool::My(p) => p.close().await,
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_processes_never_hold_one_key() {
    two_processes_never_hold_one_key(Kind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_two_processes_never_hold_one_key() {
    two_processes_never_hold_one_key(Kind::Mysql).await;
}

/// Work accepted by one process wakes idle workers of another (PostgreSQL
/// LISTEN/NOTIFY), so they need not wait for their next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_accept_in_one_process_wakes_another() {
    let Some(db) = TestDb::create(Kind::Postgres, "store::cluster::wake").await else { return };
    let a = store::open(&db.url, StoreOptions::default()).await.expect("open a");
    let b = store::open(&db.url, StoreOptions::default()).await.expect("open b");
    let mut changes = b.changes();
    changes.mark_unchanged();
    a.accept(message("adt", "1", Some("K1"), &["ehr"])).await.expect("accept");
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("the other store was notified")
        .expect("store alive");
    a.close().await;
    b.close().await;
}
