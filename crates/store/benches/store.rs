//! Store throughput: accepted messages per second with 1 and 32 concurrent
//! producers, and claim-and-complete deliveries per second, on SQLite
//! (synchronous FULL, in a temp dir on the machine's disk) and on PostgreSQL
//! / MariaDB when PLEXUS_TEST_POSTGRES_URL / PLEXUS_TEST_MYSQL_URL are set.
//!
//!     cargo bench -p plexus-store --bench store
//!
//! Each figure is the median of `ROUNDS` runs on a fresh database. The
//! "peer" figure printed next to each backend is the same database driven
//! the naive way (one INSERT transaction per message on one connection, no
//! group commit), measured in the same run, so the ratio shows what group
//! commit buys on this disk.
//!
//! The accept cases run twice. The cold run starts on a new store, whose
//! write-ahead log file is still growing. The warm run ("warm log") first
//! accepts a warm-up share of messages, untimed. A long-running server
//! reuses its log file from the start after each checkpoint, so it writes
//! over blocks it already wrote. A flush that extends the file also writes
//! the file's inode: on this machine's ext4, two device writes instead of
//! one. The warm run measures the server's steady state. The cold run is
//! what a store pays for its first ~30 MiB of log after it opens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::Connection;
use store::*;

const ROUNDS: usize = 3;
const MESSAGE: &str = "ADT-A09-01.hl7";

fn raw_message() -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hl7v2/tests/fixtures").join(MESSAGE);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn message(raw: &[u8], n: usize) -> NewMessage {
    NewMessage {
        channel: "adt".into(),
        received_at: Utc::now(),
        peer_addr: Some("10.0.0.7:51234".into()),
        content_type: "x-application/hl7-v2+er7".into(),
        raw: raw.to_vec(),
        control_id: Some(format!("BENCH{n:09}")),
        sender_key: "LAB^HOSP".into(),
        message_type: Some("ADT".into()),
        event: Some("A09".into()),
        order_key: Some(format!("MRN{:05}", n % 5000)),
        patient_ids: vec![format!("MRN{:05}", n % 5000)],
        ack: Some(
            format!("MSH|^~\\&|PLEXUS|HOSP|LAB|HOSP|20261121||ACK^A09|A{n}|P|2.5\rMSA|AA|BENCH{n:09}\r").into_bytes(),
        ),
        deliveries: vec![NewDelivery::queued("ehr")],
    }
}

/// A fresh database for one round; dropped afterwards.
enum Db {
    Sqlite(tempfile::TempDir),
    Server { kind: &'static str, base: String, name: String },
}

impl Db {
    async fn create(kind: &'static str, base: Option<&str>) -> Db {
        match (kind, base) {
            ("sqlite", _) => {
                Db::Sqlite(tempfile::Builder::new().prefix("plexus-bench").tempdir_in(bench_dir()).unwrap())
            }
            (kind, Some(base)) => {
                let name = format!("plexus_bench_{}_{}", std::process::id(), rand_suffix());
                admin(kind, base, &format!("CREATE DATABASE {name}")).await;
                Db::Server { kind, base: base.to_owned(), name }
            }
            _ => unreachable!("server backends need a URL"),
        }
    }

    fn url(&self) -> String {
        match self {
            Db::Sqlite(dir) => format!("sqlite://{}", dir.path().join("bench.db").display()),
            Db::Server { base, name, .. } => replace_database(base, name),
        }
    }

    async fn drop_db(self) {
        if let Db::Server { kind, base, name } = self {
            let sql = if kind == "postgres" {
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            } else {
                format!("DROP DATABASE IF EXISTS {name}")
            };
            admin(kind, &base, &sql).await;
        }
    }
}

/// Where SQLite files go: the target dir (on the real disk, unlike a tmpfs
/// /tmp would be), so that fsync costs what it costs in production.
/// `PLEXUS_BENCH_DIR` overrides it (e.g. /dev/shm to measure CPU cost alone).
fn bench_dir() -> std::path::PathBuf {
    if let Ok(d) = std::env::var("PLEXUS_BENCH_DIR") {
        return std::path::PathBuf::from(d);
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/store-bench");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
}

async fn admin(kind: &str, base: &str, sql: &str) {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    if kind == "postgres" {
        let mut c = sqlx::PgConnection::connect(base).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::MySqlConnection::connect(base).await.unwrap();
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
}

fn replace_database(url: &str, name: &str) -> String {
    let (head, query) = url.split_once('?').map_or((url, None), |(h, q)| (h, Some(q)));
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let path_start = head[scheme_end..].find('/').map_or(head.len(), |i| i + scheme_end);
    let mut out = format!("{}/{}", &head[..path_start], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Accepts `total` messages from `producers` concurrent tasks, numbered
/// from `first` (control ids must not repeat within a store); msgs/s.
async fn accept_rate(store: Arc<dyn Store>, producers: usize, total: usize, first: usize) -> f64 {
    let raw = Arc::new(raw_message());
    let per = total / producers;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..producers {
        let store = store.clone();
        let raw = raw.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                let m = message(&raw, first + p * per + i);
                match store.accept(m).await {
                    Ok(Accepted::Stored { .. }) => {}
                    other => panic!("accept: {other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (per * producers) as f64 / start.elapsed().as_secs_f64()
}

/// Loads `total` messages, then `workers` tasks claim (32 at a time) and
/// complete them as sent until the queue is empty; deliveries/s.
async fn claim_complete_rate(store: Arc<dyn Store>, workers: usize, total: usize) -> f64 {
    accept_rate(store.clone(), 32, total, 0).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let policy = RetryPolicy::default();
            let req = ClaimRequest {
                channel: "adt".into(),
                destination: "ehr".into(),
                max: 32,
                lease: Duration::from_secs(60),
                worker: format!("bench-{w}"),
            };
            let mut done = 0usize;
            let mut idle = 0;
            loop {
                let claim = store.claim(&req).await.unwrap();
                if claim.deliveries.is_empty() {
                    // Other workers hold the last heads; stop once the queue
                    // stays empty.
                    idle += 1;
                    if idle > 20 {
                        return done;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                idle = 0;
                let completions = claim.deliveries.iter().map(|d| {
                    let store = store.clone();
                    let policy = policy.clone();
                    let (id, lease) = (d.id, d.lease);
                    async move {
                        let outcome = Outcome::Sent {
                            response: Some(Response::Ack { text: "MSA|AA".into() }),
                            transformed: None,
                        };
                        store.complete(id, lease, outcome, &policy).await.unwrap();
                    }
                });
                futures::future::join_all(completions).await;
                done += claim.deliveries.len();
            }
        }));
    }
    let mut done = 0;
    for t in tasks {
        done += t.await.unwrap();
    }
    assert_eq!(done, total, "every delivery completed once");
    // The idle tail (20 polls of 2 ms) is not work: leave it out.
    let elapsed = start.elapsed().as_secs_f64() - 0.04;
    done as f64 / elapsed
}

/// The naive peer: one transaction per message on one connection.
async fn naive_rate(kind: &'static str, url: &str, total: usize) -> f64 {
    let raw = raw_message();
    macro_rules! run {
        ($conn:expr, $create:expr, $insert:expr) => {{
            let mut c = $conn;
            sqlx::query($create).execute(&mut c).await.unwrap();
            let start = Instant::now();
            for i in 0..total {
                let mut tx = c.begin().await.unwrap();
                sqlx::query($insert).bind(format!("BENCH{i:09}")).bind(&raw).execute(&mut *tx).await.unwrap();
                tx.commit().await.unwrap();
            }
            total as f64 / start.elapsed().as_secs_f64()
        }};
    }
    match kind {
        "sqlite" => {
            use sqlx::ConnectOptions;
            use std::str::FromStr;
            let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .unwrap()
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Full);
            run!(
                opts.connect().await.unwrap(),
                "CREATE TABLE naive (control_id TEXT, raw BLOB)",
                "INSERT INTO naive VALUES (?, ?)"
            )
        }
        "postgres" => run!(
            sqlx::PgConnection::connect(url).await.unwrap(),
            "CREATE TABLE naive (control_id TEXT, raw BYTEA)",
            "INSERT INTO naive VALUES ($1, $2)"
        ),
        _ => run!(
            sqlx::MySqlConnection::connect(url).await.unwrap(),
            "CREATE TABLE naive (control_id VARCHAR(64), raw LONGBLOB)",
            "INSERT INTO naive VALUES (?, ?)"
        ),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn bench_backend(kind: &'static str, base: Option<&str>) {
    let options = || StoreOptions { sqlite_synchronous: SqliteSynchronous::Full, ..StoreOptions::default() };
    // PLEXUS_BENCH_CASES=accept1,accept32,accept1warm,accept32warm,claim,peer picks cases (all by default).
    let cases_env = std::env::var("PLEXUS_BENCH_CASES").ok();
    let case = |c: &str| cases_env.as_deref().is_none_or(|o| o.split(',').any(|x| x == c));
    // (case, label, producers, timed messages, untimed warm-up messages)
    let cases: [(&str, &str, usize, usize, usize); 4] = [
        ("accept1", "accept, 1 producer", 1, 4_000, 0),
        ("accept32", "accept, 32 producers", 32, 64_000, 0),
        ("accept1warm", "accept, 1 producer, warm log", 1, 4_000, 2_000),
        ("accept32warm", "accept, 32 producers, warm log", 32, 64_000, 32_000),
    ];
    for (id, name, producers, total, warm) in cases {
        if !case(id) {
            continue;
        }
        let mut rates = Vec::new();
        for _ in 0..ROUNDS {
            let db = Db::create(kind, base).await;
            let store = open(&db.url(), options()).await.unwrap();
            if warm > 0 {
                accept_rate(store.clone(), producers, warm, total).await;
            }
            rates.push(accept_rate(store.clone(), producers, total, 0).await);
            store.close().await;
            db.drop_db().await;
        }
        println!("{kind:<9} {name:<34} {:>9.0} msgs/s  (runs: {})", median(rates.clone()), fmt_runs(&rates));
    }
    if case("claim") {
        let mut rates = Vec::new();
        for _ in 0..ROUNDS {
            let db = Db::create(kind, base).await;
            let store = open(&db.url(), options()).await.unwrap();
            rates.push(claim_complete_rate(store.clone(), 4, 20_000).await);
            store.close().await;
            db.drop_db().await;
        }
        println!(
            "{kind:<9} {:<34} {:>9.0} deliveries/s  (runs: {})",
            "claim+complete, 4 workers x 32",
            median(rates.clone()),
            fmt_runs(&rates)
        );
    }
    // The peer runs without the claim case too (accept1,accept32,peer).
    if !case("peer") {
        return;
    }
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let db = Db::create(kind, base).await;
        if let Db::Sqlite(dir) = &db {
            std::fs::File::create(dir.path().join("bench.db")).unwrap();
        }
        rates.push(naive_rate(kind, &db.url(), 2_000).await);
        db.drop_db().await;
    }
    println!(
        "{kind:<9} {:<34} {:>9.0} msgs/s  (runs: {})",
        "peer: naive INSERT+COMMIT per msg",
        median(rates.clone()),
        fmt_runs(&rates)
    );
}

fn fmt_runs(v: &[f64]) -> String {
    v.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ")
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too, in
    // which case only a smoke run is wanted.
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("store bench: run with `cargo bench -p plexus-store --bench store`");
        return;
    }
    let only = std::env::var("PLEXUS_BENCH_ONLY").ok();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        println!(
            "message: {MESSAGE} ({} bytes), median of {ROUNDS} runs, {} cores",
            raw_message().len(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let want = |k: &str| only.as_deref().is_none_or(|o| o.split(',').any(|x| x == k));
        if want("sqlite") {
            bench_backend("sqlite", None).await;
        }
        for (kind, var) in [("postgres", "PLEXUS_TEST_POSTGRES_URL"), ("mysql", "PLEXUS_TEST_MYSQL_URL")] {
            if !want(kind) {
                continue;
            }
            match std::env::var(var) {
                Ok(url) if !url.is_empty() => bench_backend(kind, Some(&url)).await,
                _ => println!("{kind:<9} skipped: {var} is not set"),
            }
        }
    });
}
