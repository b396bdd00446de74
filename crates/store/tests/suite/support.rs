//! Test fixtures: a fresh store per test on each backend, with a manual
//! clock; sample messages.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use store::{Clock, NewDelivery, NewMessage, Store, StoreOptions};

/// The backends the suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
    Mysql,
}

impl Kind {
    fn env(self) -> &'static str {
        match self {
            Kind::Sqlite => "",
            Kind::Postgres => "PLEXUS_TEST_POSTGRES_URL",
            Kind::Mysql => "PLEXUS_TEST_MYSQL_URL",
        }
    }
}

/// A database of its own for one test: a temp dir (SQLite) or a database
/// created under a unique name and dropped when this is dropped.
#[derive(Debug)]
pub struct TestDb {
    pub kind: Kind,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    admin: Option<(String, String)>,
}

impl TestDb {
    /// `None` (after printing SKIPPED) when the backend's variable is unset.
    pub async fn create(kind: Kind, suite: &str) -> Option<TestDb> {
        if kind == Kind::Sqlite {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("plexus.db").display());
            return Some(TestDb { kind, url, _dir: Some(dir), admin: None });
        }
        let base = testkit::env_or_skip(kind.env(), suite)?;
        let name = testkit::unique_name("plexus_store");
        let admin_sql = format!("CREATE DATABASE {name}");
        admin(kind, &base, &admin_sql).await;
        let url = replace_database(&base, &name);
        Some(TestDb { kind, url, _dir: None, admin: Some((base, name)) })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((base, name)) = self.admin.take() else { return };
        let kind = self.kind;
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let sql = match kind {
                Kind::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                _ => format!("DROP DATABASE IF EXISTS {name}"),
            };
            rt.block_on(admin(kind, &base, &sql));
        })
        .join();
    }
}

async fn admin(kind: Kind, base: &str, sql: &str) {
    use sqlx::Connection;
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match kind {
        Kind::Postgres => {
            let mut c = sqlx::PgConnection::connect(base).await.expect("connect to PLEXUS_TEST_POSTGRES_URL");
            sqlx::query(sql).execute(&mut c).await.expect("admin statement");
        }
        Kind::Mysql => {
            let mut c = sqlx::MySqlConnection::connect(base).await.expect("connect to PLEXUS_TEST_MYSQL_URL");
            sqlx::query(sql).execute(&mut c).await.expect("admin statement");
        }
        Kind::Sqlite => {}
    }
}

/// `scheme://user@host:port/old?params` with the database name replaced.
pub fn replace_database(url: &str, name: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = head[scheme_end..].find('/').map(|i| i + scheme_end).unwrap_or(head.len());
    let mut out = format!("{}/{}", &head[..path_start], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A store on a fresh database with a manual clock.
#[derive(Debug)]
pub struct TestStore {
    pub store: Arc<dyn Store>,
    pub clock: Clock,
    db: TestDb,
}

/// 2026-11-21 10:00:00 UTC, where every manual clock starts.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 10, 0, 0).single().expect("valid date")
}

impl TestStore {
    pub async fn open(kind: Kind, suite: &str) -> Option<TestStore> {
        Self::open_with(kind, suite, StoreOptions::default()).await
    }

    pub async fn open_with(kind: Kind, suite: &str, mut options: StoreOptions) -> Option<TestStore> {
        let db = TestDb::create(kind, suite).await?;
        let clock = Clock::manual(t0());
        options.clock = clock.clone();
        let store = store::open(&db.url, options).await.expect("open store");
        Some(TestStore { store, clock, db })
    }

    /// Another store on the same database (another "process").
    pub async fn reopen(&self, options: StoreOptions) -> Arc<dyn Store> {
        let mut options = options;
        options.clock = self.clock.clone();
        store::open(&self.db.url, options).await.expect("reopen store")
    }
}

/// The HL7 v2 sample messages (see crates/hl7v2/tests/fixtures/PROVENANCE.md).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hl7v2/tests/fixtures").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A message for `channel` with one queued delivery per destination.
pub fn message(channel: &str, control_id: &str, order_key: Option<&str>, destinations: &[&str]) -> NewMessage {
    NewMessage {
        channel: channel.into(),
        received_at: t0(),
        peer_addr: Some("127.0.0.1:50000".into()),
        content_type: "x-application/hl7-v2+er7".into(),
        raw: format!(
            "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261121||ADT^A08|{control_id}|P|2.5\rPID|1||{}\r",
            order_key.unwrap_or("-")
        )
        .into_bytes(),
        control_id: Some(control_id.into()),
        sender_key: "LAB^HOSP".into(),
        message_type: Some("ADT".into()),
        event: Some("A08".into()),
        order_key: order_key.map(Into::into),
        patient_ids: order_key.map(|k| vec![k.to_owned()]).unwrap_or_default(),
        ack: Some(
            format!("MSH|^~\\&|EHR|HOSP|LAB|HOSP|20261121||ACK|A{control_id}|P|2.5\rMSA|AA|{control_id}\r")
                .into_bytes(),
        ),
        deliveries: destinations.iter().map(|d| NewDelivery::queued(*d)).collect(),
    }
}

/// Runs each named behaviour (an `async fn(&TestStore)` in `behaviour`) as a
/// test on every backend: `sqlite::NAME`, `postgres::NAME`, `mysql::NAME`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let suite = concat!("store::sqlite::", stringify!($name));
                    if let Some(t) = $crate::support::TestStore::open($crate::support::Kind::Sqlite, suite).await {
                        $crate::behaviour::$name(&t).await;
                        t.store.close().await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let suite = concat!("store::postgres::", stringify!($name));
                    if let Some(t) = $crate::support::TestStore::open($crate::support::Kind::Postgres, suite).await {
                        $crate::behaviour::$name(&t).await;
                        t.store.close().await;
                    }
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let suite = concat!("store::mysql::", stringify!($name));
                    if let Some(t) = $crate::support::TestStore::open($crate::support::Kind::Mysql, suite).await {
                        $crate::behaviour::$name(&t).await;
                        t.store.close().await;
                    }
                }
            )*
        }
    };
}

#[test]
fn replace_database_keeps_credentials_and_params() {
    assert_eq!(
        replace_database("postgres://postgres@127.0.0.1:5432/test", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        replace_database("mysql://root:pw@h/test?ssl-mode=disabled", "y"),
        "mysql://root:pw@h/y?ssl-mode=disabled"
    );
    assert_eq!(replace_database("postgres://h", "z"), "postgres://h/z");
}
