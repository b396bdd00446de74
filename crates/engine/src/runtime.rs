//! The running engine: the store, every channel's ingest path, sources,
//! destination workers and the HTTP listener, started from a [`Config`] and
//! stopped in order.
//!
//! # Start
//!
//! 1. Open the store (creating and migrating it).
//! 2. Register every enabled channel's ingest path, and connect the
//!    injector that `channel` destinations use to it.
//! 3. Build every destination (the connectors' I/O: folders, TLS, clients)
//!    and spawn its workers.
//! 4. Bind the sources and the HTTP listener, then report ready.
//!
//! Any failure before the engine is ready stops what was started and
//! returns the error: a half-started engine never accepts messages.
//!
//! # Stop
//!
//! Only sources get the shutdown signal first (vector's model): they stop
//! accepting and finish the commits in flight, so every message that got an
//! AA is stored. Then the workers stop claiming and finish the deliveries
//! they hold (up to a grace period; a delivery still running after it is
//! abandoned and its lease expires, so it is delivered again later). Patient
//! sync jobs get the same grace; those still running are recorded as failed
//! (interrupted). Last, the store is closed. Queued deliveries stay queued
//! for the next start.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use store::{SqliteSynchronous, Store, StoreOptions};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, Synchronous};
use crate::destinations::{BuildContext, DestinationError};
use crate::ingest::{ChannelIngest, Ingest, Injector};
use crate::sources::SourceConfig;
use crate::sources::http::{self as http_source, HttpChannel};
use crate::sources::mllp::{MllpStats, SourceError};
use crate::worker::{ChannelStage, DestinationWorkers};

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(store::StoreError),
    /// A destination could not be built.
    #[error("channel {channel:?} destination {destination:?}: {error}")]
    Destination {
        /// The channel.
        channel: String,
        /// The destination.
        destination: String,
        /// What failed.
        error: DestinationError,
    },
    /// A source could not start.
    #[error("channel {channel:?} source: {error}")]
    Source {
        /// The channel.
        channel: String,
        /// What failed.
        error: SourceError,
    },
    /// A `file` source's folders are missing or unusable.
    #[error("channel {channel:?} source: {error}")]
    FileSource {
        /// The channel.
        channel: String,
        /// What failed.
        error: crate::sources::file::FileSourceError,
    },
    /// A flow's channel could not be set up (its FHIR client).
    #[error("channel {channel:?}: {error}")]
    Flow {
        /// The channel.
        channel: String,
        /// What failed.
        error: String,
    },
    /// A notification channel could not be set up (its HTTP clients).
    #[error("channel {channel:?}: {error}")]
    Notification {
        /// The channel.
        channel: String,
        /// What failed.
        error: String,
    },
    /// The API listener's TLS certificate or key could not be loaded.
    #[error("api.tls: {0}")]
    ApiTls(crate::sources::tls::TlsError),
    /// The HTTP listener could not be bound.
    #[error("listening on {addr} ({what}): {error}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// `api` or the channel it serves.
        what: String,
        /// The OS error.
        error: std::io::Error,
    },
}

/// A running engine.
#[derive(Debug)]
pub struct Engine {
    store: Arc<dyn Store>,
    ingest: Arc<Ingest>,
    ready: Arc<AtomicBool>,
    stop_sources: CancellationToken,
    stop_workers: CancellationToken,
    sources: JoinSet<()>,
    workers: JoinSet<()>,
    api_addr: SocketAddr,
    source_addrs: HashMap<String, SocketAddr>,
    mllp_stats: HashMap<String, Arc<MllpStats>>,
    telemetry: Arc<crate::metrics::Telemetry>,
    /// Queue-depth refresh and alerts, scheduled retention.
    background: JoinSet<()>,
    /// Patient sync jobs started over the API (recorded as interrupted on stop).
    sync_jobs: crate::flows::patient_sync::JobRunner,
    /// Counters of each `fhir_poll` channel's poll.
    fhir_polls: HashMap<String, Arc<crate::sources::fhir_poll::PollStats>>,
}

impl Engine {
    /// Starts everything `config` describes. Returns once every listener is
    /// bound and the engine is ready.
    pub async fn start(config: Config) -> Result<Engine, StartError> {
        let url = config.store.resolved_url(&config.base_dir);
        create_sqlite_folder(&url).map_err(StartError::Store)?;
        let store = store::open(&url, store_options(&config)).await.map_err(StartError::Store)?;
        info!(backend = config.store.backend_name(), "store open");
        Self::start_with_store(config, store).await
    }

    /// Starts the engine on a store opened by the caller (tests, embedding);
    /// `config.store` is ignored.
    pub async fn start_with_store(config: Config, store: Arc<dyn Store>) -> Result<Engine, StartError> {
        let started = std::time::Instant::now();

        let mut engine = Engine {
            store: Arc::clone(&store),
            ingest: Arc::new(Ingest::new()),
            ready: Arc::new(AtomicBool::new(false)),
            stop_sources: CancellationToken::new(),
            stop_workers: CancellationToken::new(),
            sources: JoinSet::new(),
            workers: JoinSet::new(),
            api_addr: config.api.listen,
            source_addrs: HashMap::new(),
            mllp_stats: HashMap::new(),
            telemetry: crate::metrics::Telemetry::new(config.health.window.get()),
            background: JoinSet::new(),
            sync_jobs: crate::flows::patient_sync::JobRunner::new(Arc::clone(&store)),
            fhir_polls: HashMap::new(),
        };
        match engine.start_components(config).await {
            Ok(()) => {
                engine.ready.store(true, Ordering::Release);
                info!(elapsed_ms = started.elapsed().as_millis() as u64, "engine ready");
                Ok(engine)
            }
            Err(e) => {
                engine.shutdown(Duration::from_secs(5)).await;
                Err(e)
            }
        }
    }

    async fn start_components(&mut self, config: Config) -> Result<(), StartError> {
        let operations = (config.health.interval.get(), config.alerts.clone(), config.retention.clone());
        let metrics_public = config.api.metrics_public;
        let Config { api, channels, base_dir, fhir_servers, .. } = config;
        let channels: Vec<_> = channels.into_iter().filter(|c| c.enabled).collect();
        let api_channels: Vec<_> = channels.iter().map(crate::api::ChannelInfo::from_config).collect();
        // The send-to-ehr channel's patient source client, built before anything runs.
        let send_to_ehr = crate::sources::send_to_ehr::prepare(&channels, &fhir_servers)
            .map_err(|(channel, error)| StartError::Flow { channel, error: error.to_string() })?;

        let mut ingest = Ingest::new();
        for c in &channels {
            let metrics = self.telemetry.channel(&c.name);
            ingest.insert(Arc::new(ChannelIngest::new(c, Arc::clone(&self.store)).with_metrics(metrics)));
        }
        let ingest = Arc::new(ingest);
        // Every source of a channel refuses new messages while the API has
        // it stopped: its ingest path's switch is the one the API flips.
        let switch_of = |name: &str| match ingest.channel(name) {
            Some(c) => Arc::clone(c.switch()),
            None => Arc::default(),
        };

        // Notification channels: endpoint, flow stage and acknowledgement worker each.
        let notifications = crate::sources::notification::prepare(&channels, &self.store, switch_of)
            .map_err(|(channel, error)| StartError::Notification { channel, error })?;
        self.ingest = Arc::clone(&ingest);
        let injector = Arc::new(Injector::new());
        injector.set(Arc::clone(&ingest));

        let node = node_name();
        let mut sources = Vec::new();
        for channel in channels {
            let switch = switch_of(&channel.name);
            let stage = Arc::new(ChannelStage {
                switch,
                name: channel.name.clone(),
                content: channel.content,
                filter: channel.filter,
                transform: Arc::new(channel.transform),
                flow: crate::sources::send_to_ehr::flow_stage(&channel.source)
                    .or_else(|| notifications.get(&channel.name).map(|n| n.stage())),
            });
            for d in channel.destinations {
                let ctx = BuildContext::new(&channel.name, &d.name)
                    .with_base_dir(base_dir.clone())
                    .with_injector(injector.clone());
                let destination = d.connector.build(&ctx).await.map_err(|error| StartError::Destination {
                    channel: channel.name.clone(),
                    destination: d.name.clone(),
                    error,
                })?;
                let batch = crate::worker::claim_batch(&d.connector, d.workers);
                let metrics = self.telemetry.destination(&channel.name, &d.name);
                let workers = Arc::new(DestinationWorkers {
                    channel: Arc::clone(&stage),
                    name: d.name,
                    destination,
                    filter: d.filter,
                    transform: Arc::new(d.transform),
                    retry: d.retry.to_store_policy(),
                    lease: d.lease.get(),
                    batch,
                    workers: d.workers,
                    store: Arc::clone(&self.store),
                    node: node.clone(),
                    metrics,
                });
                workers.spawn(&self.stop_workers, &mut self.workers);
            }
            if let Some(n) = notifications.get(&channel.name) {
                let (ack, node, stop) = (n.ack_worker(), node.clone(), self.stop_workers.clone());
                self.workers.spawn(async move { ack.run(node, stop).await });
            }
            sources.push((channel.name, channel.source));
        }

        // Sources last: nothing is accepted before the workers exist.
        let mut on_api = Vec::new();
        let mut own_http: Vec<(SocketAddr, HttpChannel)> = Vec::new();
        for (name, source) in sources {
            let Some(channel_ingest) = ingest.channel(&name).cloned() else { continue };
            match source {
                SourceConfig::Mllp(c) => {
                    let source = c
                        .bind(&base_dir, channel_ingest)
                        .await
                        .map_err(|error| StartError::Source { channel: name.clone(), error })?;
                    if let Ok(addr) = source.local_addr() {
                        info!(channel = %name, %addr, tls = c.tls.is_some(), "mllp source listening");
                        self.source_addrs.insert(name.clone(), addr);
                    }
                    self.mllp_stats.insert(name.clone(), source.stats());
                    self.sources.spawn(source.run(self.stop_sources.clone()));
                }
                SourceConfig::File(c) => {
                    let source = c
                        .build(&base_dir, channel_ingest)
                        .await
                        .map_err(|error| StartError::FileSource { channel: name.clone(), error })?;
                    info!(channel = %name, folder = %source.directory().display(), "file source polling");
                    self.sources.spawn(source.run(self.stop_sources.clone()));
                }
                SourceConfig::FhirPoll(c) => {
                    let poller = crate::sources::fhir_poll::FhirPoller::new(
                        &c,
                        &fhir_servers,
                        channel_ingest,
                        Arc::clone(&self.store),
                    )
                    .map_err(|error| StartError::Flow { channel: name.clone(), error })?;
                    info!(channel = %name, server = %c.server, "fhir poll scheduled");
                    self.fhir_polls.insert(name.clone(), poller.stats());
                    self.sources.spawn(poller.run(self.stop_sources.clone()));
                }
                // Served on the API listener below (`send_to_ehr`).
                SourceConfig::SendToEhr(_) => {}
                // Served below (`notifications`).
                SourceConfig::Notification(_) => {}
                SourceConfig::Http(c) => {
                    let served = HttpChannel { ingest: channel_ingest, max_body_size: c.max_body_size.as_usize() };
                    match c.listen {
                        Some(addr) => own_http.push((addr, served)),
                        None => on_api.push(served),
                    }
                }
            }
        }
        let mut notifications_on_api = Vec::new();
        for n in notifications.into_values() {
            let Some(addr) = n.listen() else {
                notifications_on_api.push(n);
                continue;
            };
            let listener = TcpListener::bind(addr).await.map_err(|error| StartError::Listen {
                addr,
                what: format!("channel {:?}", n.channel()),
                error,
            })?;
            let bound = listener.local_addr().unwrap_or(addr);
            info!(channel = %n.channel(), addr = %bound, "notification source listening");
            self.source_addrs.insert(n.channel().to_string(), bound);
            self.serve_http(listener, crate::sources::notification::router(&[n]));
        }
        for (addr, served) in own_http {
            let name = served.ingest.name().to_string();
            let listener = TcpListener::bind(addr).await.map_err(|error| StartError::Listen {
                addr,
                what: format!("channel {name:?}"),
                error,
            })?;
            let bound = listener.local_addr().unwrap_or(addr);
            info!(channel = %name, addr = %bound, "http source listening");
            self.source_addrs.insert(name, bound);
            self.serve_http(listener, http_source::router(vec![served]));
        }
        let api_tls = api
            .tls
            .as_ref()
            .map(|t| crate::api::https::acceptor(t, &base_dir))
            .transpose()
            .map_err(StartError::ApiTls)?;
        let listener = TcpListener::bind(api.listen).await.map_err(|error| StartError::Listen {
            addr: api.listen,
            what: "api".into(),
            error,
        })?;
        self.api_addr = listener.local_addr().unwrap_or(api.listen);
        for c in &on_api {
            self.source_addrs.insert(c.ingest.name().to_string(), self.api_addr);
        }
        for n in &notifications_on_api {
            self.source_addrs.insert(n.channel().to_string(), self.api_addr);
        }
        let mut app = health_router(Arc::clone(&self.ready)).merge(http_source::router(on_api));
        if !notifications_on_api.is_empty() {
            app = app.merge(crate::sources::notification::router(&notifications_on_api));
        }
        let app = app.merge(crate::api::dashboard::router());
        let api_auth = match api.auth {
            crate::config::ApiAuth::Token => crate::api::auth::Auth::new(Arc::clone(&self.store)),
            crate::config::ApiAuth::None => crate::api::auth::Auth::disabled(),
        };
        let app = app.merge(crate::metrics::router(Arc::clone(&self.telemetry), api_auth.clone(), metrics_public));
        let app = match send_to_ehr {
            Some(operation) => {
                self.source_addrs.insert(operation.channel().to_string(), self.api_addr);
                let base = format!("{}://{}/fhir", if api_tls.is_some() { "https" } else { "http" }, self.api_addr);
                let switch = switch_of(operation.channel());
                app.merge(operation.router(Arc::clone(&self.store), Arc::new(api_auth.clone()), &base, switch))
            }
            None => app,
        };
        let sync_servers = crate::api::sync::SyncServers::from_config(&fhir_servers);
        // Before any job of this process: jobs a stopped server left unfinished.
        self.sync_jobs.fail_abandoned().await;
        let app = app.merge(crate::api::sync::router(self.sync_jobs.clone(), sync_servers, api_auth.clone()));
        let switches = ingest.channels().map(|c| (c.name().to_owned(), Arc::clone(c.switch()))).collect();
        let api_state = crate::api::ApiState::new(Arc::clone(&self.store), api_auth.clone(), api_channels);
        let app = app.merge(crate::api::router(api_state.with_switches(switches)));
        info!(addr = %self.api_addr, "api listening");
        match api_tls {
            Some(acceptor) => self.serve_https(listener, acceptor, app),
            None => self.serve_http(listener, app),
        }
        let (interval, alerts, retention) = operations;
        let watch = crate::alerts::watch(
            Arc::clone(&self.telemetry),
            Arc::clone(&self.store),
            alerts,
            interval,
            self.stop_sources.clone(),
        );
        self.background.spawn(watch);
        if let Some(retention) = retention {
            let scheduled = crate::retention::schedule(Arc::clone(&self.store), retention, self.stop_sources.clone());
            self.background.spawn(scheduled);
        }
        Ok(())
    }

    fn serve_http(&mut self, listener: TcpListener, app: Router) {
        let stop = self.stop_sources.clone();
        self.sources.spawn(async move {
            let service = app.into_make_service_with_connect_info::<SocketAddr>();
            if let Err(e) = axum::serve(listener, service).with_graceful_shutdown(stop.cancelled_owned()).await {
                warn!(error = %e, "http listener failed");
            }
        });
    }

    /// Serves `app` over TLS (`[api] tls`); see [`crate::api::https`].
    fn serve_https(&mut self, listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, app: Router) {
        let stop = self.stop_sources.clone();
        self.sources.spawn(async move {
            let listener = match crate::api::https::TlsListener::new(listener, acceptor, stop.clone()) {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, "https listener failed");
                    return;
                }
            };
            if let Err(e) = crate::api::https::serve(listener, app, stop).await {
                warn!(error = %e, "https listener failed");
            }
        });
    }

    /// The address the API (and HTTP ingest) listens on.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The address a channel's source listens on (the API's for an `http`
    /// source without a listener of its own).
    pub fn source_addr(&self, channel: &str) -> Option<SocketAddr> {
        self.source_addrs.get(channel).copied()
    }

    /// The store the engine runs on.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Every channel's ingest path (and counters).
    pub fn ingest(&self) -> &Arc<Ingest> {
        &self.ingest
    }

    /// Metrics and health states.
    pub fn telemetry(&self) -> &Arc<crate::metrics::Telemetry> {
        &self.telemetry
    }

    /// Counters of a `fhir_poll` channel's poll.
    pub fn fhir_poll_stats(&self, channel: &str) -> Option<&Arc<crate::sources::fhir_poll::PollStats>> {
        self.fhir_polls.get(channel)
    }

    /// Counters of a channel's MLLP source.
    pub fn mllp_stats(&self, channel: &str) -> Option<&Arc<MllpStats>> {
        self.mllp_stats.get(channel)
    }

    /// Stops the engine in order (see the module documentation). Workers
    /// get `grace` to finish the deliveries they hold.
    pub async fn shutdown(mut self, grace: Duration) {
        self.ready.store(false, Ordering::Release);
        self.stop_sources.cancel();
        while self.sources.join_next().await.is_some() {}
        info!("sources stopped; every acknowledged message is stored");
        while self.background.join_next().await.is_some() {}
        self.stop_workers.cancel();
        let sync_jobs = self.sync_jobs.clone();
        let sync_jobs = tokio::spawn(async move { sync_jobs.stop(grace).await });
        let drained = tokio::time::timeout(grace, async { while self.workers.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            warn!(grace = ?grace, "workers still busy after the grace period; their deliveries will be retried after the lease expires");
            self.workers.abort_all();
            while self.workers.join_next().await.is_some() {}
        }
        let _ = sync_jobs.await;
        self.store.close().await;
        info!("engine stopped");
    }
}

/// Creates the folder of a SQLite database file, so that a fresh install
/// with `sqlite://plexus-data/plexus.db` starts without set-up.
fn create_sqlite_folder(url: &str) -> Result<(), store::StoreError> {
    let Some(rest) = url.strip_prefix("sqlite://") else { return Ok(()) };
    let path = rest.split_once('?').map_or(rest, |(p, _)| p);
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    match std::path::Path::new(path).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir)
            .map_err(|e| store::StoreError::InvalidUrl(format!("cannot create the folder {}: {e}", dir.display()))),
        _ => Ok(()),
    }
}

fn store_options(config: &Config) -> StoreOptions {
    StoreOptions {
        sqlite_synchronous: match config.store.synchronous {
            Synchronous::Full => SqliteSynchronous::Full,
            Synchronous::Normal => SqliteSynchronous::Normal,
        },
        pool_size: config.store.pool_size,
        duplicate_window: config.store.duplicate_window.get(),
        ..StoreOptions::default()
    }
}

/// `/healthz` (the process is up) and `/readyz` (the engine accepts
/// messages; 503 while starting and stopping).
fn health_router(ready: Arc<AtomicBool>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok\n" })).route(
        "/readyz",
        get(move || {
            let ready = ready.load(Ordering::Acquire);
            async move {
                if ready {
                    (StatusCode::OK, "ready\n").into_response()
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
                }
            }
        }),
    )
}

/// Names this process in the store's attempt log: the host name and the
/// process id.
fn node_name() -> String {
    format!("{}:{}", host_name(), std::process::id())
}

/// This machine's host name (`plexus` when it cannot be read), which tells
/// nodes apart in the attempt log and in the file source's claims.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "plexus".to_string())
}
