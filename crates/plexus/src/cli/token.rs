//! `plexus token create|list|revoke`: API tokens, in the store the config
//! file names (the same store `plexus serve` uses, so a running engine sees
//! a new or revoked token within its cache time, 10 seconds).
//!
//! `create` prints the token on stdout, alone on its line, and nothing else
//! there (`TOKEN=$(plexus token create ...)` works); the token is shown this
//! once and the store keeps only its hash.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use engine::api::auth;
use engine::config::Config;
use store::{ApiToken, Store, StoreOptions};

/// `plexus token ...`.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (once).
    Create(CreateArgs),
    /// List tokens (never their secrets).
    List(ListArgs),
    /// Revoke the active token with this name or id.
    Revoke(RevokeArgs),
}

/// The configuration file naming the store.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// The configuration file (TOML, `version = 1`); its `[store]` is used.
    #[arg(long, short = 'c', env = "PLEXUS_CONFIG")]
    pub config: PathBuf,
}

/// Arguments of `plexus token create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub common: ConfigArg,
    /// A name for the token, unique among active tokens; audit events record it.
    #[arg(long)]
    pub name: String,
    /// Comma-separated scopes: messages:read, messages:replay,
    /// channels:admin, sync, SEND_TO_EHR, metrics; or `all`.
    #[arg(long)]
    pub scopes: String,
    /// Days until the token stops working (no expiry when absent).
    #[arg(long)]
    pub expires_in_days: Option<u32>,
}

/// Arguments of `plexus token list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub common: ConfigArg,
    /// Print JSON (one array) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `plexus token revoke`.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub common: ConfigArg,
    /// The token's name or id.
    pub token: String,
}

/// Runs one token subcommand.
pub fn run(command: TokenCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        match command {
            TokenCommand::Create(args) => create(args).await,
            TokenCommand::List(args) => list(args).await,
            TokenCommand::Revoke(args) => revoke(args).await,
        }
    })
}

async fn create(args: CreateArgs) -> anyhow::Result<ExitCode> {
    let scopes = auth::parse_scopes(&args.scopes).map_err(|e| {
        if e.0.is_empty() { anyhow::anyhow!("--scopes names no scope") } else { anyhow::anyhow!("--scopes: {e}") }
    })?;
    let expires_at = args.expires_in_days.map(|days| Utc::now() + chrono::Duration::days(i64::from(days)));
    let store = open(&args.common.config).await?;
    let result = auth::issue_token(store.as_ref(), &args.name, &scopes, expires_at).await;
    store.close().await;
    let issued = result.map_err(|e| anyhow::anyhow!("creating the token: {}", e.summary()))?;
    let scopes: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    eprintln!(
        "created token {:?} (id {}) with scopes {}{}; it is shown only this once:",
        issued.token.name,
        issued.token.id,
        scopes.join(","),
        expires_at.map(|at| format!(", expires {}", at.format("%Y-%m-%d %H:%M UTC"))).unwrap_or_default(),
    );
    println!("{}", issued.bearer);
    Ok(ExitCode::SUCCESS)
}

async fn list(args: ListArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.common.config).await?;
    let result = store.api_tokens().await;
    store.close().await;
    let tokens = result.map_err(|e| anyhow::anyhow!("listing tokens: {}", e.summary()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&tokens)?);
    } else {
        print!("{}", table(&tokens, Utc::now()));
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let store = open(&args.common.config).await?;
    let result = store.revoke_api_token(&args.token).await;
    store.close().await;
    match result.map_err(|e| anyhow::anyhow!("revoking the token: {}", e.summary()))? {
        0 => bail!("no active token has the name or id {:?}", args.token),
        _ => {
            eprintln!("revoked {:?}", args.token);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Opens the store of the config file, as `plexus serve` would.
async fn open(path: &Path) -> anyhow::Result<Arc<dyn Store>> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let url = config.store.resolved_url(&config.base_dir);
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let file = Path::new(rest.split('?').next().unwrap_or(rest));
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let options = StoreOptions { pool_size: 1, ..StoreOptions::default() };
    store::open(&url, options)
        .await
        .map_err(|e| anyhow::anyhow!("opening the store ({}): {}", config.store.backend_name(), e.summary()))
}

/// One line per token: name, id, scopes, state, created, last used.
fn table(tokens: &[ApiToken], now: DateTime<Utc>) -> String {
    let day = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M").to_string();
    let mut out = format!("{:<24} {:<16} {:<9} {:<16} {:<16} SCOPES\n", "NAME", "ID", "STATE", "CREATED", "LAST USED");
    for t in tokens {
        let state = if t.revoked_at.is_some() {
            "revoked"
        } else if !t.is_active(now) {
            "expired"
        } else {
            "active"
        };
        let used = t.last_used_at.map(day).unwrap_or_else(|| "never".into());
        out.push_str(&format!(
            "{:<24} {:<16} {:<9} {:<16} {:<16} {}\n",
            t.name,
            t.id,
            state,
            day(t.created_at),
            used,
            t.scopes.join(",")
        ));
    }
    out
}
