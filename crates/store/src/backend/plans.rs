//! Query-plan checks: the exact SQL the store runs for the common filters,
//! the claim, the duplicate lookup and retention is EXPLAINed on each
//! backend (over a few thousand messages) and must use the intended index,
//! never a full table scan.
//!
//! PostgreSQL plans are taken with `enable_seqscan = off`: a sequential scan
//! that still shows up then means that no index can serve the query.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use sqlx::Connection;

use super::common::*;
use crate::StoreOptions;
use crate::model::*;

const CHANNELS: usize = 30;
const MESSAGES: usize = 3000;

/// A named query, its binds, and the indexes of which one must serve it.
struct Case {
    name: &'static str,
    sql: String,
    params: Vec<Param>,
    indexes: &'static [&'static str],
}

fn search(name: &'static str, q: SearchQuery, indexes: &'static [&'static str]) -> Case {
    let s = build_search(&q).expect("search sql");
    Case { name, sql: s.sql, params: s.params, indexes }
}

/// `now_binds`: how many times the claim query binds "now" (MariaDB's
/// plain `?` placeholders cannot repeat one).
fn cases(claim_candidates: &str, now_binds: usize, claim_indexes: &'static [&'static str]) -> Vec<Case> {
    let now = Utc::now();
    let text = |s: &str| Param::Text(s.to_owned());
    vec![
        search(
            "search by channel",
            SearchQuery { channel: Some("c3".into()), ..Default::default() },
            &["messages_channel_time"],
        ),
        search(
            "search by channel and time",
            SearchQuery {
                channel: Some("c3".into()),
                received_from: Some(now - TimeDelta::hours(1)),
                received_to: Some(now),
                ..Default::default()
            },
            &["messages_channel_time"],
        ),
        search(
            "search by time",
            SearchQuery { received_from: Some(now - TimeDelta::minutes(5)), ..Default::default() },
            &["messages_time"],
        ),
        search(
            "search by control id",
            SearchQuery { control_id: Some("C17".into()), ..Default::default() },
            &["messages_control_id"],
        ),
        search(
            "search by order key",
            SearchQuery { order_key: Some("K17".into()), ..Default::default() },
            &["messages_order_key"],
        ),
        search(
            "search by patient",
            SearchQuery { patient_id: Some("MRN17".into()), ..Default::default() },
            &["message_patients_patient"],
        ),
        search(
            "search by message type",
            SearchQuery { message_type: Some("ORU".into()), event: Some("R01".into()), ..Default::default() },
            &["messages_type"],
        ),
        search(
            "search by channel and state",
            SearchQuery { channel: Some("c3".into()), state: Some(DeliveryState::Error), ..Default::default() },
            // Walk the channel and probe each message's deliveries, or (a
            // rare state) start from the deliveries in that state.
            &["messages_channel_time", "deliveries_state", "deliveries_message"],
        ),
        Case {
            name: "duplicate lookup",
            sql: "SELECT id, channel, sender_key, control_id, received_at, ack FROM messages \
                  WHERE control_id IN (?, ?) AND received_at >= ?"
                .into(),
            params: vec![text("C1"), text("C2"), Param::I64(0)],
            indexes: &["messages_control_id"],
        },
        Case {
            name: "claim candidates",
            sql: claim_candidates.into(),
            params: [text("c3"), text("ehr")]
                .into_iter()
                .chain(std::iter::repeat_n(Param::I64(i64::MAX / 2), now_binds))
                .chain([Param::I64(8)])
                .collect(),
            indexes: claim_indexes,
        },
        Case {
            name: "next due",
            sql: NEXT_DUE.into(),
            params: vec![text("c3"), text("ehr"), Param::I64(0), Param::I64(0)],
            indexes: &["deliveries_queue", "deliveries_queue_key", "deliveries_state"],
        },
        Case {
            name: "retention of contents",
            sql: retention_candidates(true, ""),
            params: vec![Param::I64(i64::MAX / 2), Param::I64(100)],
            indexes: &["messages_contents_time"],
        },
        Case {
            name: "retention of messages",
            sql: retention_candidates(false, ""),
            params: vec![Param::I64(i64::MAX / 2), Param::I64(100)],
            indexes: &["messages_time"],
        },
        Case {
            name: "deliveries of a message",
            sql: format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE message_id = ?"),
            params: vec![Param::Uuid(uuid::Uuid::now_v7())],
            indexes: &["deliveries_message"],
        },
        Case {
            name: "counts",
            sql:
                "SELECT channel, destination, state, COUNT(*) AS n FROM deliveries GROUP BY channel, destination, state"
                    .into(),
            params: vec![],
            indexes: &["deliveries_state"],
        },
    ]
}

/// Fills a fresh store: 3,000 messages on 30 channels, 200 order keys and
/// patients, two message types, a third of them delivered.
async fn seed(url: &str) {
    let store = crate::open(url, StoreOptions::default()).await.expect("open store");
    let mut tasks = Vec::new();
    for p in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (p..MESSAGES).step_by(10) {
                let oru = i % 4 == 0;
                let m = NewMessage {
                    channel: format!("c{}", i % CHANNELS),
                    received_at: Utc::now(),
                    peer_addr: None,
                    content_type: "x-application/hl7-v2+er7".into(),
                    raw: vec![b'x'; 200],
                    control_id: Some(format!("C{i}")),
                    sender_key: "LAB".into(),
                    message_type: Some(if oru { "ORU" } else { "ADT" }.into()),
                    event: Some(if oru { "R01" } else { "A08" }.into()),
                    order_key: Some(format!("K{}", i % 200)),
                    patient_ids: vec![format!("MRN{}", i % 200)],
                    ack: None,
                    deliveries: vec![NewDelivery::queued("ehr")],
                };
                store.accept(m).await.expect("accept");
            }
        }));
    }
    for t in tasks {
        t.await.expect("seeding task");
    }
    for c in 0..CHANNELS {
        let req = ClaimRequest {
            channel: format!("c{c}"),
            destination: "ehr".into(),
            max: 100,
            lease: Duration::from_secs(60),
            worker: "plans".into(),
        };
        let claim = store.claim(&req).await.expect("claim");
        for d in claim.deliveries {
            let outcome = Outcome::Sent { response: None, transformed: None };
            store.complete(d.id, d.lease, outcome, &RetryPolicy::default()).await.expect("complete");
        }
    }
    store.close().await;
}

fn check(case: &Case, plan: &str, full_scan: impl Fn(&str) -> bool) {
    assert!(!full_scan(plan), "{}: full table scan\n{}\n{plan}", case.name, case.sql);
    assert!(
        case.indexes.iter().any(|i| plan.contains(i)),
        "{}: expected one of {:?}\n{}\n{plan}",
        case.name,
        case.indexes,
        case.sql
    );
}

/// Whether a PostgreSQL plan has an index scan node without an index
/// condition (a scan of the whole index).
fn pg_whole_index_scan(plan: &str) -> bool {
    let lines: Vec<&str> = plan.lines().collect();
    lines.iter().enumerate().any(|(i, l)| {
        if !l.contains("Scan using") {
            return false;
        }
        let indent = l.len() - l.trim_start().len();
        let details = lines[i + 1..].iter().take_while(|n| {
            let n_indent = n.len() - n.trim_start().len();
            n_indent > indent && !n.trim_start().starts_with("->")
        });
        !details.into_iter().any(|d| d.contains("Index Cond"))
    })
}

macro_rules! bind_all {
    ($q:expr, $params:expr) => {{
        let mut q = $q;
        for p in $params {
            q = match p {
                Param::I64(v) => q.bind(*v),
                Param::Text(v) => q.bind(v.clone()),
                Param::Uuid(v) => q.bind(*v),
            };
        }
        q
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_common_queries_use_indexes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("plans.db").display());
    seed(&url).await;
    let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("connect");
    sqlx::query("ANALYZE").execute(&mut conn).await.expect("analyze");
    for case in cases(super::sqlite::CLAIM_CANDIDATES, 1, &["deliveries_queue"]) {
        let q = sqlx::query_as::<_, (i64, i64, i64, String)>(sqlx::AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN {}",
            case.sql
        )));
        let rows = bind_all!(q, &case.params).fetch_all(&mut conn).await.expect("explain");
        let plan: String = rows.into_iter().map(|r| r.3 + "\n").collect();
        // "SCAN t" alone is a full scan; "SCAN t USING [COVERING] INDEX i"
        // walks an index.
        // "SCAN t" reads the whole table, "SCAN t USING [COVERING] INDEX i"
        // a whole index; only the unfiltered counts may do the latter.
        let whole_index_ok = case.name == "counts";
        check(&case, &plan, |p| {
            p.lines().any(|l| l.trim_start().starts_with("SCAN") && (!l.contains("INDEX") || !whole_index_ok))
        });
        if case.name == "claim candidates" {
            // Not deliveries_queue_key (a prefix match above): the walk over
            // the destination's queue in id order. It needs the query to
            // spell the partial index's condition as the index does.
            assert!(
                plan.contains("USING INDEX deliveries_queue ("),
                "claim candidates: the queue walk does not use deliveries_queue\n{plan}"
            );
        }
        if case.name.starts_with("search by channel") || case.name == "search by time" {
            assert!(
                !plan.contains("TEMP B-TREE"),
                "{}: sorts instead of reading the index in order\n{plan}",
                case.name
            );
        }
    }
}

/// Drops the test database when the test ends, passed or failed.
struct DropDb {
    postgres: bool,
    base: String,
    name: String,
}

impl Drop for DropDb {
    fn drop(&mut self) {
        let (postgres, base, name) = (self.postgres, self.base.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                if postgres {
                    let mut c = sqlx::PgConnection::connect(&base).await.expect("connect");
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut c).await.expect("drop db");
                } else {
                    let mut c = sqlx::MySqlConnection::connect(&base).await.expect("connect");
                    let sql = format!("DROP DATABASE IF EXISTS {name}");
                    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut c).await.expect("drop db");
                }
            });
        })
        .join();
    }
}

/// A database of its own on the server at `env`, dropped afterwards.
async fn server_db(env: &str, suite: &str) -> Option<(String, String, String)> {
    let base = testkit::env_or_skip(env, suite)?;
    let name = testkit::unique_name("plexus_plans");
    let url = match base.rsplit_once('/') {
        Some((head, _)) if head.contains("://") && head.split("://").nth(1).is_some_and(|r| !r.is_empty()) => {
            format!("{head}/{name}")
        }
        _ => panic!("{env} must end with /database"),
    };
    Some((base, name, url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_common_queries_use_indexes() {
    let Some((base, name, url)) = server_db("PLEXUS_TEST_POSTGRES_URL", "store::plans::postgres").await else { return };
    let mut admin = sqlx::PgConnection::connect(&base).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.expect("create db");
    let _drop = DropDb { postgres: true, base: base.clone(), name: name.clone() };
    seed(&url).await;
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query("ANALYZE").execute(&mut conn).await.expect("analyze");
    sqlx::query("SET enable_seqscan = off").execute(&mut conn).await.expect("set");
    let claim = super::postgres::CLAIM_CANDIDATES.replace("FOR UPDATE OF d SKIP LOCKED", "");
    for case in cases(&claim, 1, &["deliveries_queue_key", "deliveries_state"]) {
        let sql = if case.name == "claim candidates" { case.sql.clone() } else { numbered_placeholders(&case.sql) };
        let q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")));
        let rows = bind_all!(q, &case.params).fetch_all(&mut conn).await.expect("explain");
        let plan = rows.join("\n");
        let whole_index_ok = case.name == "counts";
        check(&case, &plan, |p| p.contains("Seq Scan") || (!whole_index_ok && pg_whole_index_scan(p)));
    }
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_common_queries_use_indexes() {
    let Some((base, name, url)) = server_db("PLEXUS_TEST_MYSQL_URL", "store::plans::mysql").await else { return };
    let mut admin = sqlx::MySqlConnection::connect(&base).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.expect("create db");
    let _drop = DropDb { postgres: false, base: base.clone(), name: name.clone() };
    seed(&url).await;
    let mut conn = sqlx::MySqlConnection::connect(&url).await.expect("connect");
    super::mysql::session_settings(&mut conn).await.expect("session settings");
    for t in ["messages", "message_patients", "deliveries", "attempts"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("ANALYZE TABLE {t}"))).execute(&mut conn).await.expect("analyze");
    }
    for case in cases(super::mysql::CLAIM_CANDIDATES, 3, &["deliveries_queue"]) {
        let q = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN {}", case.sql)));
        let rows = bind_all!(q, &case.params).fetch_all(&mut conn).await.expect("explain");
        let mut plan = String::new();
        let mut full_scan = false;
        for r in rows {
            use sqlx::Row;
            let table: Option<String> = r.try_get("table").ok().flatten();
            let access: Option<String> = r.try_get("type").ok().flatten();
            let key: Option<String> = r.try_get("key").ok().flatten();
            let extra: Option<String> = r.try_get("Extra").ok().flatten();
            // ALL reads the table, "index" a whole index.
            full_scan |=
                access.as_deref() == Some("ALL") || (access.as_deref() == Some("index") && case.name != "counts");
            plan.push_str(&format!("{table:?} type={access:?} key={key:?} {extra:?}\n"));
        }
        check(&case, &plan, |_| full_scan);
    }
    drop(conn);
}
