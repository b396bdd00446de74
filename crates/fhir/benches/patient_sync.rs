//! Benchmark: syncing the Synthea patient (319 resources) from one FHIR peer
//! to another, Plexus's sync against a one-request-per-resource sync (what
//! MuleSoft's accelerator does: one search per type, one read per
//! referenced resource, one conditional update per resource) in the same
//! run, each into a fresh target.
//!
//!     PLEXUS_PEERS=/root/.cache/plexus-peers cargo bench -p plexus-fhir --bench patient_sync
//!
//! `PLEXUS_BENCH_RUNS` sets the number of runs (default 5); figures are
//! medians. Starting the peers is not timed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use fhir::reference::{self, RefTarget, Rewrite};
use fhir::sync::{self, SyncOptions};
use fhir::{FhirClient, ResourceKey, Search};
use serde_json::Value;
use testkit::FhirPeer;

/// The integration tests' set-up (clients, fixtures, loading the EHR).
#[path = "../tests/it/support.rs"]
#[allow(dead_code)]
mod support;

use support::client;

/// The bundle's clinical and referenced types (all but the Patient).
fn types() -> &'static [&'static str] {
    &support::BUNDLE_TYPES[1..]
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    wall: Duration,
    /// fetch, match, write (Plexus only).
    phases: Option<(u64, u64, u64)>,
    source_requests: u64,
    source_paging: u64,
    target_requests: u64,
    resources: u64,
}

fn main() {
    if testkit::peers_or_skip("bench fhir patient_sync").is_none() {
        return;
    }
    let runs: usize = std::env::var("PLEXUS_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let ehr_peer = FhirPeer::start("bench fhir patient_sync").expect("ehr peer");
    let ehr = client("ehr", &ehr_peer.base_url);
    let patient_id = rt.block_on(support::load_synthea(&ehr));
    let options = SyncOptions::for_types(types());

    let mut first = Vec::new();
    let mut second = Vec::new();
    let mut known = Vec::new();
    let mut naive = Vec::new();
    let mut naive_create = Vec::new();
    let mut mode = None;
    for run in 0..runs {
        let target_peer = FhirPeer::start("bench").expect("target peer");
        let target = client("crm", &target_peer.base_url);
        let report = rt.block_on(sync::sync_patient(&ehr, &target, &patient_id, &options, &sync::NoProgress));
        assert_eq!(report.status, sync::SyncStatus::Succeeded, "{report:#?}");
        assert_eq!(report.totals().created, 319);
        mode = Some(report.write_mode);
        first.push(figures(&report));
        let target_ids = report.target_ids.clone();
        let report = rt.block_on(sync::sync_patient(&ehr, &target, &patient_id, &options, &sync::NoProgress));
        assert_eq!(report.totals().unchanged, 319);
        second.push(figures(&report));
        // What a sync job does when an earlier job recorded the target ids.
        let hinted = SyncOptions { known_targets: target_ids, ..options.clone() };
        let report = rt.block_on(sync::sync_patient(&ehr, &target, &patient_id, &hinted, &sync::NoProgress));
        assert_eq!(report.totals().unchanged, 319);
        known.push(figures(&report));
        drop(target_peer);

        let naive_peer = FhirPeer::start("bench").expect("naive peer");
        let target = client("naive", &naive_peer.base_url);
        naive.push(rt.block_on(one_request_per_resource(&ehr, &target, &patient_id, true)));
        drop(naive_peer);
        let naive_peer = FhirPeer::start("bench").expect("naive peer");
        let target = client("naive", &naive_peer.base_url);
        naive_create.push(rt.block_on(one_request_per_resource(&ehr, &target, &patient_id, false)));
        eprintln!("run {}/{runs} done", run + 1);
    }

    println!(
        "patient sync, Synthea bundle (319 resources), EHR and target = fhir-server.js peers on loopback, {runs} runs, medians"
    );
    println!(
        "{:<44} {:>9} {:>20} {:>16} {:>11} {:>15} {:>10}",
        "approach", "wall ms", "fetch/match/write ms", "EHR req (+page)", "target req", "total requests", "resources"
    );
    let row = |name: &str, f: &[Figures]| {
        let m = median(f);
        let phases = m.phases.map(|(f, mt, w)| format!("{f}/{mt}/{w}")).unwrap_or_else(|| "-".into());
        println!(
            "{:<44} {:>9.1} {:>20} {:>11} (+{}) {:>11} {:>15} {:>10}",
            name,
            m.wall.as_secs_f64() * 1000.0,
            phases,
            m.source_requests - m.source_paging,
            m.source_paging,
            m.target_requests,
            m.source_requests + m.target_requests,
            m.resources
        );
    };
    row(&format!("plexus sync, first run ({:?})", mode.expect("a run")), &first);
    row("plexus sync, second run (nothing to write)", &second);
    row("second run with the first's target ids", &known);
    row("one request per resource (conditional update)", &naive);
    row("one request per resource (plain create)", &naive_create);
}

fn figures(report: &sync::SyncReport) -> Figures {
    Figures {
        wall: Duration::from_millis(report.timings.total_ms),
        phases: Some((report.timings.fetch_ms, report.timings.match_ms, report.timings.write_ms)),
        source_requests: report.requests.source.requests,
        source_paging: report.requests.source.paging_requests,
        target_requests: report.requests.target.requests,
        resources: report.totals().fetched,
    }
}

fn median(figures: &[Figures]) -> Figures {
    let mut sorted = figures.to_vec();
    sorted.sort_by_key(|f| f.wall);
    sorted[sorted.len() / 2]
}

/// The naive sync: GET the patient, one search per type (every page), GET
/// each referenced resource not yet read, then one write per resource in
/// dependency order: a conditional update keyed by a provenance identifier
/// (idempotent, what an accelerator does), or a plain create (fast but
/// duplicates everything on the next run).
async fn one_request_per_resource(
    ehr: &FhirClient,
    target: &FhirClient,
    patient_id: &str,
    conditional: bool,
) -> Figures {
    let ehr = ehr.counted();
    let target = target.counted();
    let started = Instant::now();
    let mut resources: BTreeMap<ResourceKey, Value> = BTreeMap::new();
    let patient = ehr.read("Patient", patient_id).await.expect("patient");
    resources.insert(ResourceKey::of(&patient).expect("key"), patient);
    for t in types() {
        let search = Search::new(*t).param("patient", format!("Patient/{patient_id}"));
        for r in ehr.search_all(&search).await.expect("search").resources {
            resources.insert(ResourceKey::of(&r).expect("key"), r);
        }
    }
    let base = ehr.base_url().clone();
    loop {
        let missing: HashSet<ResourceKey> = resources
            .values()
            .flat_map(|r| reference::local_targets(r, &base))
            .filter(|k| !resources.contains_key(k))
            .collect();
        if missing.is_empty() {
            break;
        }
        for k in missing {
            let r = ehr.read(&k.resource_type, &k.id).await.expect("read");
            resources.insert(k, r);
        }
    }
    // Dependency order (the bundle has no cycles).
    let mut order = Vec::new();
    let mut placed = HashSet::new();
    fn place(
        k: &ResourceKey,
        all: &BTreeMap<ResourceKey, Value>,
        base: &url::Url,
        placed: &mut HashSet<ResourceKey>,
        order: &mut Vec<ResourceKey>,
    ) {
        if !placed.insert(k.clone()) {
            return;
        }
        for d in reference::local_targets(&all[k], base) {
            if all.contains_key(&d) {
                place(&d, all, base, placed, order);
            }
        }
        order.push(k.clone());
    }
    for k in resources.keys() {
        place(k, &resources, &base, &mut placed, &mut order);
    }
    let mut target_ids: HashMap<ResourceKey, String> = HashMap::new();
    for k in &order {
        let mut r = resources[k].clone();
        let obj = r.as_object_mut().expect("object");
        obj.remove("id");
        obj.remove("meta");
        let token = format!("urn:plexus:naive|{k}");
        let ids = obj.entry("identifier").or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = ids {
            list.push(serde_json::json!({"system": "urn:plexus:naive", "value": k.to_string()}));
        }
        reference::rewrite_references(&mut r, &mut |s| match reference::classify(s, &base) {
            RefTarget::Local(d) => match target_ids.get(&d) {
                Some(id) => Rewrite::Replace(format!("{}/{id}", d.resource_type)),
                None => Rewrite::Remove,
            },
            _ => Rewrite::Keep,
        });
        let written = if conditional {
            target.conditional_update(&r, &[("identifier", &token)]).await.expect("write")
        } else {
            target.create(&r).await.expect("write")
        };
        target_ids.insert(k.clone(), written.key.expect("id").id);
    }
    let wall = started.elapsed();
    let (s, t) = (ehr.stats(), target.stats());
    Figures {
        wall,
        phases: None,
        source_requests: s.requests,
        source_paging: s.paging_requests,
        target_requests: t.requests,
        resources: resources.len() as u64,
    }
}
