//! `plexus sync`: patient synchronisation between FHIR servers from the
//! command line.
//!
//! - `search --config FILE --source NAME --family F --given G --birthdate
//!   YYYY-MM-DD [--gender G] [--identifier I]`: the candidates on the source,
//!   with what tells them apart (identifiers, address, phone); exits 1 when
//!   there is none.
//! - `patient --config FILE --source NAME --target NAME --patient ID
//!   [--resources Observation,Condition,...|all]`: syncs one patient with a
//!   progress bar (on a terminal only) and prints the report; `--json` prints
//!   the report as JSON instead. `--record` also records the run as a sync
//!   job in the engine's store (as `POST /api/sync/jobs` does), so it shows
//!   in `GET /api/sync/jobs` and the dashboard. Exits 1 unless every
//!   resource synced.
//!
//! The config file is the engine's own (`engine::config::Config::load`, the
//! same file `plexus serve` reads, checked the same way): the servers come
//! from its `[fhir_servers.<name>]` tables ([`fhir::ServerConfig`], secrets
//! named by environment variable), the store from `[store]`.
//!
//! Everything here is printed for the user at the terminal, so it shows
//! patient data (names, identifiers); the log (stderr, `--log`, default
//! `warn`) does not.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use engine::config::Config;
use fhir::sync::{self, PatientQuery, ProgressEvent, SyncOptions, SyncPhase, SyncReport, SyncStatus};
use fhir::{FhirClient, ServerConfig};
use indicatif::{ProgressBar, ProgressStyle};
use store::{NewSyncJob, StoreOptions};

use crate::logging::{self, LogFormat};

/// `plexus sync` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SyncCommand {
    /// Search a source server for patients by name and birth date.
    Search(SearchArgs),
    /// Sync one patient from a source server to a target server.
    Patient(PatientArgs),
}

/// Where the servers are configured, and logging.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// The engine's config file (its `[fhir_servers.<name>]` tables name
    /// the servers).
    #[arg(long)]
    pub config: PathBuf,
    /// Log filter (e.g. `info`, `fhir=debug`); logs go to stderr.
    #[arg(long, default_value = "warn")]
    pub log: String,
}

/// `plexus sync search`.
#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub common: Common,
    /// The source server's name in the config.
    #[arg(long)]
    pub source: String,
    /// Family name (matched by prefix, as FHIR servers do).
    #[arg(long)]
    pub family: String,
    /// Given name.
    #[arg(long)]
    pub given: String,
    /// Birth date, YYYY-MM-DD.
    #[arg(long)]
    pub birthdate: String,
    /// male, female, other or unknown.
    #[arg(long)]
    pub gender: Option<String>,
    /// An identifier, `value` or `system|value`.
    #[arg(long)]
    pub identifier: Option<String>,
    /// The most candidates to show.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Print the candidates as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `plexus sync patient`.
#[derive(Debug, clap::Args)]
pub struct PatientArgs {
    #[command(flatten)]
    pub common: Common,
    /// The source server's name in the config.
    #[arg(long)]
    pub source: String,
    /// The target server's name in the config.
    #[arg(long)]
    pub target: String,
    /// The patient's id on the source (see `plexus sync search`).
    #[arg(long)]
    pub patient: String,
    /// Clinical resource types, comma-separated, or `all`. Default:
    /// AllergyIntolerance, Condition, DiagnosticReport, Encounter,
    /// Immunization, MedicationRequest, Observation, Procedure.
    #[arg(long, value_delimiter = ',')]
    pub resources: Vec<String>,
    /// Levels of references to follow, 0 to 10 (each level can multiply
    /// what is fetched).
    #[arg(long, default_value_t = 3, value_parser = parse_depth)]
    pub depth: usize,
    /// Read the clinical resources with Patient/$everything (falls back to
    /// one search per type when the source lacks it).
    #[arg(long)]
    pub everything: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Also record the run as a sync job in the config's store.
    #[arg(long)]
    pub record: bool,
}

/// `--depth`: bounded like the REST API's `depth`, so the command line
/// cannot ask for a walk through the whole source server.
fn parse_depth(value: &str) -> Result<usize, String> {
    let depth: usize = value.trim().parse().map_err(|_| format!("{value:?} is not a whole number"))?;
    if depth > sync::MAX_REFERENCE_DEPTH {
        return Err(format!("the reference depth is at most {} (asked for {depth})", sync::MAX_REFERENCE_DEPTH));
    }
    Ok(depth)
}

/// Runs a `plexus sync` subcommand.
pub fn run(cmd: SyncCommand) -> anyhow::Result<ExitCode> {
    let log = match &cmd {
        SyncCommand::Search(a) => &a.common.log,
        SyncCommand::Patient(a) => &a.common.log,
    };
    logging::init(LogFormat::Text, Some(log))?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    match cmd {
        SyncCommand::Search(args) => runtime.block_on(search(args)),
        SyncCommand::Patient(args) => runtime.block_on(patient(args)),
    }
}

/// Loads and checks the whole engine config (every problem at once, as
/// `plexus check` reports them).
fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

fn client(servers: &BTreeMap<String, ServerConfig>, name: &str, path: &Path) -> anyhow::Result<FhirClient> {
    let Some(config) = servers.get(name) else {
        let known: Vec<&str> = servers.keys().map(String::as_str).collect();
        bail!(
            "{} has no [fhir_servers.{name}] (it has: {})",
            path.display(),
            if known.is_empty() { "none".to_owned() } else { known.join(", ") }
        );
    };
    Ok(FhirClient::new(name, config)?)
}

async fn search(args: SearchArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.common.config)?;
    let source = client(&config.fhir_servers, &args.source, &args.common.config)?;
    let query = PatientQuery {
        family: args.family,
        given: Some(args.given),
        birth_date: Some(args.birthdate),
        gender: args.gender,
        identifier: args.identifier,
    };
    let found = sync::search_patients(&source, &query, args.limit).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else if found.candidates.is_empty() {
        println!("no patient on {} matches", source.name());
    } else {
        for (i, c) in found.candidates.iter().enumerate() {
            println!(
                "{}. {}  {}  born {}  {}",
                i + 1,
                c.id,
                c.name.as_deref().unwrap_or("(no name)"),
                c.birth_date.as_deref().unwrap_or("?"),
                c.gender.as_deref().unwrap_or("?"),
            );
            if let Some(a) = &c.address {
                println!("   address: {a}");
            }
            if let Some(p) = &c.phone {
                println!("   phone: {p}");
            }
            for id in &c.identifiers {
                println!(
                    "   identifier: {}{}|{}",
                    id.kind.as_deref().map(|k| format!("{k} ")).unwrap_or_default(),
                    id.system.as_deref().unwrap_or(""),
                    id.value.as_deref().unwrap_or("")
                );
            }
        }
        if found.truncated {
            println!("(more patients match: narrow the search, or raise --limit)");
        }
    }
    Ok(if found.candidates.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn options(args: &PatientArgs) -> SyncOptions {
    let mut options = match args.resources.as_slice() {
        [] => SyncOptions::default(),
        [all] if all.eq_ignore_ascii_case("all") => SyncOptions::all_types(),
        types => SyncOptions::for_types(&types.iter().map(|t| t.trim()).filter(|t| !t.is_empty()).collect::<Vec<_>>()),
    };
    options.max_reference_depth = args.depth;
    if args.everything {
        options.fetch = sync::ClinicalFetch::Everything;
    }
    options
}

async fn patient(args: PatientArgs) -> anyhow::Result<ExitCode> {
    let config = load_config(&args.common.config)?;
    let source = client(&config.fhir_servers, &args.source, &args.common.config)?;
    let target = client(&config.fhir_servers, &args.target, &args.common.config)?;
    if source.base_url() == target.base_url() {
        bail!("source and target are the same server ({})", source.base_url());
    }
    let options = options(&args);
    let bar = progress_bar();
    let sink = |event: &ProgressEvent| show(&bar, event);
    let report = if args.record {
        let url = config.store.resolved_url(&config.base_dir);
        create_sqlite_folder(&url)?;
        let store_options = StoreOptions { pool_size: 2, ..StoreOptions::default() };
        let store = store::open(&url, store_options)
            .await
            .map_err(|e| anyhow::anyhow!("opening the store ({}): {}", config.store.backend_name(), e.summary()))?;
        let job = store
            .create_sync_job(NewSyncJob {
                source: source.name().to_owned(),
                target: target.name().to_owned(),
                patient_id: args.patient.clone(),
                resource_types: options.resource_types.clone(),
                requested_by: "cli".to_owned(),
            })
            .await
            .map_err(|e| anyhow::anyhow!("recording the sync job: {}", e.summary()))?;
        let report = engine::flows::patient_sync::run_job_observed(
            store.clone(),
            source,
            target,
            job.id,
            args.patient.clone(),
            options,
            &sink,
        )
        .await;
        store.close().await;
        eprintln!("sync job {}", job.id);
        report
    } else {
        sync::sync_patient(&source, &target, &args.patient, &options, &sink).await
    };
    bar.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.status == SyncStatus::Succeeded { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The folder of a SQLite store file, as `plexus serve` creates it.
fn create_sqlite_folder(url: &str) -> anyhow::Result<()> {
    let Some(rest) = url.strip_prefix("sqlite://") else { return Ok(()) };
    let path = rest.split('?').next().unwrap_or(rest);
    match Path::new(path).parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// A bar on stderr when it is a terminal; hidden otherwise (pipes, CI).
fn progress_bar() -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

fn show(bar: &ProgressBar, event: &ProgressEvent) {
    match event {
        ProgressEvent::Phase { phase } => bar.set_message(match phase {
            SyncPhase::FetchClinical => "reading the patient's record",
            SyncPhase::FetchReferences => "reading referenced resources",
            SyncPhase::Match => "looking up the target",
            SyncPhase::Write => "writing",
        }),
        ProgressEvent::Fetched { resources } => bar.set_message(format!("read {resources} resources")),
        ProgressEvent::Planned { create, update, unchanged, failed } => {
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_length((create + update) as u64);
            bar.set_message(format!("to create {create}, update {update}; unchanged {unchanged}, failed {failed}"));
        }
        ProgressEvent::Written { done, .. } => bar.set_position(*done as u64),
    }
}

fn print_report(report: &SyncReport) {
    println!(
        "patient {} on {} -> {} on {}: {}",
        report.patient_id,
        report.source,
        report.target_patient_id.as_deref().unwrap_or("?"),
        report.target,
        match report.status {
            SyncStatus::Succeeded => "succeeded",
            SyncStatus::PartiallyFailed => "partially failed",
            SyncStatus::Failed => "failed",
        }
    );
    if let Some(e) = &report.error {
        println!("error ({}): {}", e.class, e.message);
    }
    if !report.per_type.is_empty() {
        println!(
            "{:<28} {:>8} {:>8} {:>8} {:>10} {:>7}",
            "type", "fetched", "created", "updated", "unchanged", "failed"
        );
        for (t, c) in &report.per_type {
            println!("{t:<28} {:>8} {:>8} {:>8} {:>10} {:>7}", c.fetched, c.created, c.updated, c.unchanged, c.failed);
        }
        let t = report.totals();
        println!(
            "{:<28} {:>8} {:>8} {:>8} {:>10} {:>7}",
            "total", t.fetched, t.created, t.updated, t.unchanged, t.failed
        );
    }
    for f in &report.failures {
        println!("failed {} ({}): {}", f.source, f.class, f.reason);
    }
    for f in &report.fetch_errors {
        println!("could not read {} ({}): {}", f.resource_type, f.class, f.reason);
    }
    for w in &report.warnings {
        println!("warning: {w}");
    }
    let r = &report.requests;
    println!(
        "requests: source {} ({} paging, {} retries), target {} ({} retries); write: {:?}; {} ms (fetch {}, match {}, write {})",
        r.source.requests,
        r.source.paging_requests,
        r.source.retries,
        r.target.requests,
        r.target.retries,
        report.write_mode,
        report.timings.total_ms,
        report.timings.fetch_ms,
        report.timings.match_ms,
        report.timings.write_ms
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_engine_config_and_reports_every_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("plexus.toml");
        std::fs::write(
            &path,
            r#"
            version = 1
            [store]
            url = "sqlite://x.db"

            [fhir_servers.ehr]
            base_url = "http://127.0.0.1:8103/fhir/R4"

            [fhir_servers.crm]
            base_url = "http://127.0.0.1:8104/fhir/R4"
            page_size = 0
            auth = { type = "bearer", token_env = "" }
            "#,
        )
        .expect("write");
        let err = load_config(&path).expect_err("two problems").to_string();
        assert!(err.contains("fhir_servers.crm.page_size"), "{err}");
        assert!(err.contains("fhir_servers.crm.auth.token_env"), "{err}");

        // The same file serves `plexus serve`: channels and the rest are
        // read (and checked), not ignored.
        std::fs::write(
            &path,
            "version = 1\n[fhir_servers.ehr]\nbase_url = \"http://127.0.0.1:1/fhir\"\n[api]\nlisten = \"nonsense\"\n",
        )
        .expect("write");
        let err = load_config(&path).expect_err("bad api.listen").to_string();
        assert!(err.contains("api.listen"), "{err}");

        std::fs::write(&path, "version = 1\n[fhir_servers.ehr]\nbase_url = \"http://127.0.0.1:1/fhir\"\n")
            .expect("write");
        let config = load_config(&path).expect("valid");
        let err = client(&config.fhir_servers, "crm", &path).expect_err("unknown").to_string();
        assert!(err.contains("no [fhir_servers.crm] (it has: ehr)"), "{err}");
    }

    #[test]
    fn resources_option_defaults_lists_and_all() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct T {
            #[command(subcommand)]
            c: SyncCommand,
        }
        let parse = |extra: &[&str]| {
            let mut argv =
                vec!["t", "patient", "--config", "c.toml", "--source", "a", "--target", "b", "--patient", "1"];
            argv.extend_from_slice(extra);
            match T::parse_from(argv).c {
                SyncCommand::Patient(p) => options(&p),
                SyncCommand::Search(_) => unreachable!("parsed a patient command"),
            }
        };
        assert_eq!(parse(&[]).resource_types.len(), sync::DEFAULT_RESOURCE_TYPES.len());
        assert_eq!(parse(&["--resources", "Observation,Condition"]).resource_types, vec!["Observation", "Condition"]);
        assert_eq!(parse(&["--resources", "all"]).resource_types.len(), sync::ALL_RESOURCE_TYPES.len());
        assert_eq!(parse(&["--depth", "1", "--everything"]).fetch, sync::ClinicalFetch::Everything);
    }

    #[test]
    fn depth_is_bounded_with_an_error_naming_the_limit() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct T {
            #[command(subcommand)]
            c: SyncCommand,
        }
        let parse = |depth: &str| {
            T::try_parse_from([
                "t",
                "patient",
                "--config",
                "c.toml",
                "--source",
                "a",
                "--target",
                "b",
                "--patient",
                "1",
                "--depth",
                depth,
            ])
            .map(|t| match t.c {
                SyncCommand::Patient(p) => options(&p).max_reference_depth,
                SyncCommand::Search(_) => unreachable!("parsed a patient command"),
            })
        };
        assert_eq!(parse("0").expect("0"), 0);
        assert_eq!(parse("10").expect("the limit itself"), sync::MAX_REFERENCE_DEPTH);
        let err = parse("11").expect_err("over the limit").to_string();
        assert!(err.contains("the reference depth is at most 10 (asked for 11)"), "{err}");
        assert!(parse("1000000").is_err());
        assert!(parse("-1").is_err());
    }
}
