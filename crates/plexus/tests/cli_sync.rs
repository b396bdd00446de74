//! `plexus sync search | patient`, run as the real binary against two FHIR
//! peers (the Synthea patient loaded into the EHR one), on the engine's own
//! config file: the search finds the patient, `patient --record` syncs it
//! and records a sync job in the store the config names, a second run
//! changes nothing.

mod e2e_support;

use std::process::{Command, Output};

use e2e_support::{BIN, block_on, config, free_addr, synthea_bundle};
use fhir::{FhirClient, ServerConfig};
use serde_json::Value;
use testkit::FhirPeer;

fn plexus(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run plexus")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Loads the Synthea bundle into the server at `base`; the patient's id.
fn load_ehr(base: &str) -> String {
    block_on(async {
        let ehr = FhirClient::new("ehr", &ServerConfig::new(base.parse().expect("url"))).expect("client");
        let bundle: Value =
            serde_json::from_str(&std::fs::read_to_string(synthea_bundle()).expect("fixture")).expect("json");
        let response = ehr.transaction(&bundle).await.expect("load the bundle");
        fhir::bundle::entry_responses(&response)
            .iter()
            .filter_map(|e| e.written_key())
            .find(|k| k.resource_type == "Patient")
            .expect("the patient")
            .id
    })
}

fn totals(report: &Value, what: &str) -> u64 {
    report["per_type"].as_object().expect("per_type").values().map(|c| c[what].as_u64().unwrap_or(0)).sum()
}

#[test]
fn search_then_sync_with_a_recorded_job_on_the_engine_config() {
    let suite = "plexus::cli_sync";
    let Some(ehr) = FhirPeer::start(suite) else { return };
    let Some(crm) = FhirPeer::start(suite) else { return };
    let patient = load_ehr(&ehr.base_url);

    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = dir.path().join("plexus.toml");
    // The same file `plexus serve` reads (store, api, servers), checked as a whole.
    let servers = format!(
        "\n[fhir_servers.ehr]\nbase_url = \"{}\"\n\n[fhir_servers.crm]\nbase_url = \"{}\"\n",
        ehr.base_url, crm.base_url
    );
    std::fs::write(&cfg, config(free_addr(), &servers)).expect("config");
    let cfg = cfg.to_str().expect("utf-8 path");
    let check = plexus(&["check", "--config", cfg]);
    assert!(check.status.success(), "plexus check: {}{}", text(&check.stdout), text(&check.stderr));

    let out = plexus(&[
        "sync",
        "search",
        "--config",
        cfg,
        "--source",
        "ehr",
        "--family",
        "Brekke496",
        "--given",
        "Aaron697",
        "--birthdate",
        "1945-12-10",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let found: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(found["candidates"].as_array().map(Vec::len), Some(1), "{found}");
    assert_eq!(found["candidates"][0]["id"], patient.as_str());

    let sync = |record: bool| {
        let mut args = vec![
            "sync",
            "patient",
            "--config",
            cfg,
            "--source",
            "ehr",
            "--target",
            "crm",
            "--patient",
            &patient,
            "--resources",
            "all",
            "--json",
        ];
        if record {
            args.push("--record");
        }
        plexus(&args)
    };
    let out = sync(true);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report json");
    assert_eq!(report["status"], "succeeded");
    assert_eq!((totals(&report, "fetched"), totals(&report, "created")), (319, 319), "{report}");
    let stderr = text(&out.stderr);
    let job_id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("sync job "))
        .unwrap_or_else(|| panic!("no job id in {stderr}"))
        .trim()
        .to_owned();
    // Patient data stays off stderr (the log).
    assert!(!stderr.contains(&patient) && !stderr.contains("Brekke496"), "{stderr}");

    // The job, in the store the config names.
    block_on(async {
        let url = format!("sqlite://{}", dir.path().join("data/plexus.db").display());
        let store = store::open(&url, store::StoreOptions::default()).await.expect("open store");
        let job = store.sync_job(job_id.parse().expect("job id")).await.expect("read").expect("recorded");
        assert_eq!(job.status, store::SyncJobStatus::Succeeded);
        assert_eq!(job.requested_by, "cli");
        assert_eq!(job.patient_id, patient);
        assert_eq!(job.counts.values().map(|c| c.created).sum::<u64>(), 319);
        assert!(job.started_at.is_some() && job.finished_at.is_some());
        store.close().await;
    });

    // Again, without recording: nothing to write.
    let out = sync(false);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("report json");
    assert_eq!((totals(&report, "created"), totals(&report, "updated")), (0, 0), "{report}");
    assert_eq!(totals(&report, "unchanged"), 319);

    // An unknown server is named, with the configured ones.
    let out = plexus(&["sync", "patient", "--config", cfg, "--source", "ehr", "--target", "epic", "--patient", "x"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no [fhir_servers.epic] (it has: crm, ehr)"), "{}", text(&out.stderr));
}
