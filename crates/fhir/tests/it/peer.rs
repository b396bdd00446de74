//! Against the real FHIR server peer (`shared/peers/fhir-server.js`, Medplum's
//! FHIR router over an in-memory repository): two fresh instances play the
//! EHR and the target. Skipped when PLEXUS_PEERS is not set.
//!
//! What the peer is like, and the tests rely on: no /metadata (it answers a
//! search Bundle), no next links (only `total`; `_offset` works), batch and
//! transaction Bundles, conditional update, and transactions that are not
//! atomic and refuse more than 8 conditional entries ("requires strict
//! isolation") or more than 50 updates.

use std::collections::{BTreeMap, HashMap};

use fhir::reference::{self, RefTarget};
use fhir::sync::{self, ClinicalFetch, PatientQuery, SyncOptions, SyncReport, SyncStatus, WriteMode};
use fhir::{FhirClient, ResourceKey, Search};
use serde_json::{Value, json};
use testkit::FhirPeer;

use crate::support::{BUNDLE_TYPES, PeerPair, all_of_type, client, fast_config, load_ehr};

/// Every resource of the bundle's types on `client`, by key.
async fn snapshot(client: &FhirClient) -> BTreeMap<ResourceKey, Value> {
    let mut all = BTreeMap::new();
    for t in BUNDLE_TYPES {
        for r in all_of_type(client, t).await {
            all.insert(ResourceKey::of(&r).expect("key"), r);
        }
    }
    all
}

fn count_by_type(all: &BTreeMap<ResourceKey, Value>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for k in all.keys() {
        *counts.entry(k.resource_type.clone()).or_default() += 1;
    }
    counts
}

/// Every Reference in every resource of `all` resolves inside `all` (or to
/// a contained resource of the same resource).
fn assert_references_resolve(all: &BTreeMap<ResourceKey, Value>, base: &url::Url) {
    let mut checked = 0;
    for (key, r) in all {
        let contained: Vec<&str> = r
            .get("contained")
            .and_then(Value::as_array)
            .map(|c| c.iter().filter_map(|x| x.get("id").and_then(Value::as_str)).collect())
            .unwrap_or_default();
        for site in reference::references(r) {
            checked += 1;
            match reference::classify(&site.reference, base) {
                RefTarget::Contained(id) => {
                    assert!(id.is_empty() || contained.contains(&id.as_str()), "{key} {}: #{id}", site.path)
                }
                RefTarget::Local(target) => {
                    assert!(all.contains_key(&target), "{key} {}: {target} is not in the target", site.path)
                }
                other => panic!("{key} {}: reference {other:?} cannot resolve in the target", site.path),
            }
        }
    }
    assert!(checked > 1000, "the bundle has thousands of references; checked {checked}");
}

/// The identifiers of each resource of `all` (without Plexus's provenance
/// identifier), sorted, per type.
fn identifiers_by_type(all: &BTreeMap<ResourceKey, Value>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, r) in all {
        let ids: Vec<&Value> = r
            .get("identifier")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter(|i| {
                        !i.get("system").and_then(Value::as_str).is_some_and(|s| s.starts_with("urn:plexus:source:"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !ids.is_empty() {
            out.entry(k.resource_type.clone()).or_default().push(serde_json::to_string(&ids).expect("json"));
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

fn all_types() -> SyncOptions {
    SyncOptions::for_types(&BUNDLE_TYPES[1..])
}

fn assert_counts(report: &SyncReport, created: u64, updated: u64, unchanged: u64) {
    let t = report.totals();
    assert_eq!(
        (t.created, t.updated, t.unchanged, t.failed),
        (created, updated, unchanged, 0),
        "report: {}",
        serde_json::to_string_pretty(report).unwrap_or_default()
    );
}

#[tokio::test]
async fn synthea_patient_syncs_completely_and_idempotently() {
    let Some(PeerPair { ehr_peer: _ehr_peer, target_peer: _target_peer, ehr, target }) =
        PeerPair::start("fhir::peer sync")
    else {
        return;
    };
    let patient_id = load_ehr(&ehr).await;

    // Search by name and birth date finds exactly the bundle's patient among
    // 26 (one of them also a Brekke).
    let query = PatientQuery {
        family: "Brekke496".into(),
        given: Some("Aaron697".into()),
        birth_date: Some("1945-12-10".into()),
        ..PatientQuery::default()
    };
    let found = sync::search_patients(&ehr, &query, 10).await.expect("search");
    assert_eq!(found.candidates.len(), 1);
    assert!(!found.truncated);
    let c = &found.candidates[0];
    assert_eq!(c.id, patient_id);
    assert_eq!(c.name.as_deref(), Some("Mr. Aaron697 Brekke496"));
    assert_eq!(c.birth_date.as_deref(), Some("1945-12-10"));
    assert_eq!(c.gender.as_deref(), Some("male"));
    assert_eq!(c.identifiers.len(), 5);
    assert!(c.address.as_deref().is_some_and(|a| a.contains("Massachusetts") || a.contains("MA")));
    assert!(c.phone.is_some());
    let brekkes = sync::search_patients(&ehr, &PatientQuery { family: "Brekke".into(), ..Default::default() }, 10)
        .await
        .expect("search");
    assert_eq!(brekkes.candidates.len(), 2, "prefix match finds Derek Brekke too");

    // First sync: everything created, in one transaction or the fallbacks.
    let report = sync::sync_patient(&ehr, &target, &patient_id, &all_types(), &sync::NoProgress).await;
    assert_eq!(report.status, SyncStatus::Succeeded, "{report:#?}");
    assert_counts(&report, 319, 0, 0);
    assert!(report.fetch_errors.is_empty() && report.failures.is_empty());
    let source_requests = report.requests.source.requests - report.requests.source.paging_requests;
    assert!(source_requests <= 15, "{source_requests} requests to the EHR besides paging");

    // The target holds the same resources per type as the EHR's record of
    // this patient (the EHR also has 25 other patients).
    let ehr_all = snapshot(&ehr).await;
    let target_all = snapshot(&target).await;
    let mut ehr_counts = count_by_type(&ehr_all);
    ehr_counts.insert("Patient".into(), 1);
    assert_eq!(count_by_type(&target_all), ehr_counts);
    for (t, counts) in &report.per_type {
        assert_eq!(counts.created as usize, ehr_counts[t], "{t}");
    }
    assert_references_resolve(&target_all, target.base_url());
    // Identifiers preserved, resource by resource (the target's extra
    // identifiers are only Plexus's provenance ones).
    let mut ehr_ids = identifiers_by_type(&ehr_all);
    ehr_ids.insert(
        "Patient".into(),
        vec![
            serde_json::to_string(
                &ehr_all[&ResourceKey::new("Patient", patient_id.as_str())]["identifier"]
                    .as_array()
                    .expect("identifiers")
                    .iter()
                    .collect::<Vec<_>>(),
            )
            .expect("json"),
        ],
    );
    assert_eq!(identifiers_by_type(&target_all), ehr_ids);
    let target_patient = report.target_patient_id.clone().expect("target patient id");
    assert!(target_all.contains_key(&ResourceKey::new("Patient", target_patient.as_str())));

    // Second sync: nothing to write.
    let again = sync::sync_patient(&ehr, &target, &patient_id, &all_types(), &sync::NoProgress).await;
    assert_eq!(again.status, SyncStatus::Succeeded);
    assert_counts(&again, 0, 0, 319);
    assert_eq!(again.write_mode, WriteMode::Nothing);
    assert_eq!(again.target_patient_id.as_deref(), Some(target_patient.as_str()));
    assert_eq!(snapshot(&target).await.len(), target_all.len());

    // One Observation changes in the EHR: exactly one update.
    let obs_key = ehr_all
        .keys()
        .find(|k| k.resource_type == "Observation" && ehr_all[*k].get("valueQuantity").is_some())
        .expect("an Observation with a value")
        .clone();
    let mut obs = ehr_all[&obs_key].clone();
    let value = obs["valueQuantity"]["value"].as_f64().expect("value");
    // An exactly representable new value: the EHR (JavaScript) re-serialises
    // numbers, so `value + 1.5` can come back one ulp away.
    let changed = if value == 1234.5 { 4321.25 } else { 1234.5 };
    obs["valueQuantity"]["value"] = json!(changed);
    ehr.update(&obs).await.expect("change the Observation");
    let third = sync::sync_patient(&ehr, &target, &patient_id, &all_types(), &sync::NoProgress).await;
    assert_eq!(third.status, SyncStatus::Succeeded, "{third:#?}");
    assert_counts(&third, 0, 1, 318);
    assert_eq!(third.per_type["Observation"].updated, 1);
    let provenance = format!("urn:plexus:source:ehr|Observation/{}", obs_key.id);
    let copy =
        target.search(&Search::new("Observation").param("identifier", provenance)).await.expect("search the copy");
    let copies: Vec<&Value> = fhir::bundle::search_matches(&copy).collect();
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0]["valueQuantity"]["value"].as_f64(), Some(changed));
    assert_eq!(snapshot(&target).await.len(), target_all.len(), "no duplicates");
}

#[tokio::test]
async fn sync_writes_one_by_one_when_transactions_are_disabled() {
    let Some(PeerPair { ehr_peer: _ehr_peer, target_peer, ehr, target: _ }) = PeerPair::start("fhir::peer one-by-one")
    else {
        return;
    };
    let mut config = fast_config(&target_peer.base_url);
    config.transactions = false;
    let target = FhirClient::new("crm", &config).expect("client");
    let patient_id = load_ehr(&ehr).await;

    let report = sync::sync_patient(&ehr, &target, &patient_id, &all_types(), &sync::NoProgress).await;
    assert_eq!(report.status, SyncStatus::Succeeded, "{report:#?}");
    assert_eq!(report.write_mode, WriteMode::Individual);
    assert_counts(&report, 319, 0, 0);
    let target_all = snapshot(&target).await;
    assert_eq!(target_all.len(), 319);
    assert_references_resolve(&target_all, target.base_url());

    let again = sync::sync_patient(&ehr, &target, &patient_id, &all_types(), &sync::NoProgress).await;
    assert_counts(&again, 0, 0, 319);
}

/// Observation A has member B and B has member A: neither can be created
/// first with both references. One by one: create, create, then update;
/// in a transaction: placeholders.
#[tokio::test]
async fn reference_cycle_is_created_then_updated() {
    let Some(PeerPair { ehr_peer, target_peer, ehr, target: _ }) = PeerPair::start("fhir::peer cycle") else {
        return;
    };
    let patient =
        ehr.create(&json!({"resourceType": "Patient", "name": [{"family": "Cycle"}]})).await.expect("patient");
    let pid = patient.key.expect("id").id;
    let obs = |code: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": code},
               "subject": {"reference": format!("Patient/{pid}")}})
    };
    let a = ehr.create(&obs("a")).await.expect("a").resource.expect("body");
    let mut b = obs("b");
    b["hasMember"] = json!([{"reference": format!("Observation/{}", a["id"].as_str().expect("id"))}]);
    let b = ehr.create(&b).await.expect("b").resource.expect("body");
    let mut a2 = a.clone();
    a2["hasMember"] = json!([{"reference": format!("Observation/{}", b["id"].as_str().expect("id"))}]);
    ehr.update(&a2).await.expect("close the cycle");

    for transactions in [false, true] {
        let mut config = fast_config(&target_peer.base_url);
        config.transactions = transactions;
        // A fresh target namespace per mode: a different source name gives
        // different provenance identifiers.
        let target = FhirClient::new(if transactions { "crm-tx" } else { "crm-1by1" }, &config).expect("client");
        let source =
            FhirClient::new(if transactions { "ehr-tx" } else { "ehr-1by1" }, &fast_config(&ehr_peer.base_url))
                .expect("client");
        let report =
            sync::sync_patient(&source, &target, &pid, &SyncOptions::for_types(&["Observation"]), &sync::NoProgress)
                .await;
        assert_eq!(report.status, SyncStatus::Succeeded, "{report:#?}");
        assert_counts(&report, 3, 0, 0);
        assert_eq!(
            report.write_mode,
            if transactions { WriteMode::Transaction } else { WriteMode::Individual },
            "the peer refuses conditional transactions over 8 entries, not this one of 3: {:?}",
            report.warnings
        );
        let system = format!("urn:plexus:source:{}", source.name());
        let find = |id: &str| {
            let target = target.clone();
            let token = format!("{system}|Observation/{id}");
            async move {
                let page = target.search(&Search::new("Observation").param("identifier", token)).await.expect("search");
                fhir::bundle::search_matches(&page).next().cloned().expect("copy")
            }
        };
        let ta = find(a["id"].as_str().expect("id")).await;
        let tb = find(b["id"].as_str().expect("id")).await;
        let member = |o: &Value| o["hasMember"][0]["reference"].as_str().map(str::to_owned);
        assert_eq!(member(&ta), Some(format!("Observation/{}", tb["id"].as_str().expect("id"))));
        assert_eq!(member(&tb), Some(format!("Observation/{}", ta["id"].as_str().expect("id"))));
        let again =
            sync::sync_patient(&source, &target, &pid, &SyncOptions::for_types(&["Observation"]), &sync::NoProgress)
                .await;
        assert_counts(&again, 0, 0, 3);
    }
}

#[tokio::test]
async fn references_beyond_the_depth_limit_are_left_out_not_dangling() {
    let Some(PeerPair { ehr_peer: _ehr_peer, target_peer: _target_peer, ehr, target }) =
        PeerPair::start("fhir::peer depth")
    else {
        return;
    };
    let patient_id = load_ehr(&ehr).await;
    let options = SyncOptions { max_reference_depth: 0, ..SyncOptions::for_types(&["Immunization"]) };
    let report = sync::sync_patient(&ehr, &target, &patient_id, &options, &sync::NoProgress).await;
    assert_eq!(report.status, SyncStatus::Succeeded, "{report:#?}");
    assert_eq!(report.per_type.keys().collect::<Vec<_>>(), vec!["Immunization", "Patient"]);
    assert_counts(&report, 14, 0, 0);
    assert!(report.warnings.iter().any(|w| w.contains("depth limit")), "{:?}", report.warnings);
    let immunizations = all_of_type(&target, "Immunization").await;
    assert_eq!(immunizations.len(), 13);
    for i in &immunizations {
        assert!(i.get("encounter").is_none(), "the Encounter reference was left out");
        assert!(i["patient"]["reference"].as_str().is_some_and(|r| r.starts_with("Patient/")));
    }

    // With depth 1 the Encounters come along, and their Practitioners and
    // Organizations (depth 2) are left out of them.
    let encounters: std::collections::BTreeSet<String> = all_of_type(&ehr, "Immunization")
        .await
        .iter()
        .filter_map(|i| i["encounter"]["reference"].as_str().map(str::to_owned))
        .collect();
    let options = SyncOptions { max_reference_depth: 1, ..SyncOptions::for_types(&["Immunization"]) };
    let report = sync::sync_patient(&ehr, &target, &patient_id, &options, &sync::NoProgress).await;
    assert_eq!(report.status, SyncStatus::Succeeded, "{report:#?}");
    assert_eq!(report.per_type["Encounter"].created as usize, encounters.len());
    assert_eq!(report.per_type["Patient"].unchanged, 1);
    assert_eq!(report.per_type["Immunization"].updated, 13, "now with their encounter");
    let mut all = BTreeMap::new();
    for t in ["Patient", "Immunization", "Encounter"] {
        for r in all_of_type(&target, t).await {
            all.insert(ResourceKey::of(&r).expect("key"), r);
        }
    }
    assert_local_references_resolve(&all, target.base_url());
}

fn assert_local_references_resolve(all: &BTreeMap<ResourceKey, Value>, base: &url::Url) {
    for (key, r) in all {
        for site in reference::references(r) {
            if let RefTarget::Local(t) = reference::classify(&site.reference, base) {
                assert!(all.contains_key(&t), "{key} {} -> {t}", site.path);
            }
        }
    }
}

#[tokio::test]
async fn everything_falls_back_to_searches_on_a_server_without_it() {
    let Some(PeerPair { ehr_peer: _ehr_peer, target_peer: _target_peer, ehr, target }) =
        PeerPair::start("fhir::peer everything")
    else {
        return;
    };
    let patient_id = load_ehr(&ehr).await;
    let options = SyncOptions { fetch: ClinicalFetch::Everything, ..all_types() };
    let report = sync::sync_patient(&ehr, &target, &patient_id, &options, &sync::NoProgress).await;
    assert_eq!(report.status, SyncStatus::Succeeded, "{report:#?}");
    assert!(report.warnings.iter().any(|w| w.contains("$everything")), "{:?}", report.warnings);
    assert_counts(&report, 319, 0, 0);
}

#[tokio::test]
async fn all_clinical_types_search_without_errors() {
    let Some(PeerPair { ehr_peer: _ehr_peer, target_peer: _target_peer, ehr, target }) =
        PeerPair::start("fhir::peer all types")
    else {
        return;
    };
    let patient_id = load_ehr(&ehr).await;
    let report = sync::sync_patient(&ehr, &target, &patient_id, &SyncOptions::all_types(), &sync::NoProgress).await;
    assert!(report.fetch_errors.is_empty(), "{:#?}", report.fetch_errors);
    assert_eq!(report.status, SyncStatus::Succeeded);
    assert_counts(&report, 319, 0, 0);
}

#[tokio::test]
async fn unknown_patient_fails_the_run_with_not_found() {
    let Some(PeerPair { ehr_peer: _ehr_peer, target_peer: _target_peer, ehr, target }) =
        PeerPair::start("fhir::peer unknown patient")
    else {
        return;
    };
    let report = sync::sync_patient(&ehr, &target, "no-such-patient", &SyncOptions::default(), &sync::NoProgress).await;
    assert_eq!(report.status, SyncStatus::Failed);
    let error = report.error.expect("error");
    assert_eq!(error.class, fhir::ErrorClass::Permanent);
    assert!(error.message.contains("404"), "{}", error.message);
    assert!(all_of_type(&target, "Patient").await.is_empty());
}

#[tokio::test]
async fn progress_events_cover_every_phase() {
    let Some(PeerPair { ehr_peer: _ehr_peer, target_peer: _target_peer, ehr, target }) =
        PeerPair::start("fhir::peer progress")
    else {
        return;
    };
    let patient_id = load_ehr(&ehr).await;
    let events = std::sync::Mutex::new(Vec::new());
    let sink = |e: &sync::ProgressEvent| events.lock().expect("lock").push(e.clone());
    let report = sync::sync_patient(&ehr, &target, &patient_id, &all_types(), &sink).await;
    assert_eq!(report.status, SyncStatus::Succeeded);
    let events = events.into_inner().expect("events");
    use sync::{ProgressEvent as E, SyncPhase as P};
    for phase in [P::FetchClinical, P::FetchReferences, P::Match, P::Write] {
        assert!(events.contains(&E::Phase { phase }), "{phase:?} in {events:?}");
    }
    assert!(events.contains(&E::Planned { create: 319, update: 0, unchanged: 0, failed: 0 }));
    assert_eq!(events.last(), Some(&E::Written { done: 319, total: 319 }));
    // Events serialise for the dashboard stream.
    let json = serde_json::to_value(&events[0]).expect("json");
    assert_eq!(json["event"], "phase");
}

// ----- the client against the peer ----------------------------------------

#[tokio::test]
async fn client_interactions_against_the_peer() {
    let Some(peer) = FhirPeer::start("fhir::peer client") else {
        return;
    };
    let c = client("peer", &peer.base_url);

    // No /metadata: empty capabilities, not an error.
    let caps = c.capabilities().await.expect("capabilities");
    assert!(caps.statement().is_none());
    assert_eq!(caps.system_interaction("transaction"), fhir::Support::Unknown);

    let system = format!("urn:test:{}", testkit::unique_name("mrn"));
    let patient = json!({"resourceType": "Patient", "identifier": [{"system": system, "value": "1"}],
                         "name": [{"family": "Client"}], "extension": [{"url": "urn:vendor:x", "valueString": "kept"}]});
    let created = c.create(&patient).await.expect("create");
    assert!(created.created());
    let key = created.key.clone().expect("key");
    let v1 = created.version_id.clone().expect("version");

    let read = c.read("Patient", &key.id).await.expect("read");
    assert_eq!(read["extension"][0]["valueString"], "kept", "unknown extensions pass through");
    assert_eq!(c.vread("Patient", &key.id, &v1).await.expect("vread")["id"], key.id.as_str());

    // Conditional create matches the existing one.
    let token = format!("{system}|1");
    let again = c.create_if_none_exist(&patient, &[("identifier", &token)]).await.expect("conditional create");
    assert_eq!(again.status, 200);
    assert_eq!(again.key.as_ref(), Some(&key));

    // Update with the right version, then with a stale one.
    let mut changed = read.clone();
    changed["gender"] = json!("female");
    let updated = c.update_if_match(&changed, &v1).await.expect("update");
    assert_eq!(updated.status, 200);
    let stale = c.update_if_match(&changed, &v1).await.expect_err("stale version");
    assert!(matches!(stale.status(), Some(409 | 412)), "{stale}");
    assert_eq!(stale.class(), fhir::ErrorClass::Transient);

    // Conditional update: match updates, no match creates.
    let cu = c
        .conditional_update(
            &json!({"resourceType": "Patient", "identifier": [{"system": system, "value": "1"}],
                                    "name": [{"family": "Conditional"}]}),
            &[("identifier", &token)],
        )
        .await
        .expect("conditional update");
    assert_eq!((cu.status, cu.key.as_ref()), (200, Some(&key)));
    let token2 = format!("{system}|2");
    let cu2 = c
        .conditional_update(
            &json!({"resourceType": "Patient", "identifier": [{"system": system, "value": "2"}]}),
            &[("identifier", &token2)],
        )
        .await
        .expect("conditional create by update");
    assert!(cu2.created());

    // Paging: the peer sends no next links, so the client pages by _offset.
    for i in 0..5 {
        c.create(&json!({"resourceType": "Patient", "name": [{"family": format!("Pager{i}")}],
                         "identifier": [{"system": system, "value": format!("p{i}")}]}))
            .await
            .expect("create");
    }
    let stats_before = c.stats();
    let all = c
        .search_all(
            &Search::new("Patient")
                .param("identifier", format!("{system}|p0,{system}|p1,{system}|p2,{system}|p3,{system}|p4"))
                .param("_count", "2"),
        )
        .await
        .expect("search all");
    assert_eq!(all.resources.len(), 5);
    assert_eq!(all.pages, 3);
    assert_eq!(c.stats().paging_requests - stats_before.paging_requests, 2);

    // Batch reads: one found, one missing.
    let answers = c.get_many(&[format!("Patient/{}", key.id), "Patient/does-not-exist".into()]).await.expect("batch");
    assert!(answers[0].is_ok());
    assert!(answers[1].as_ref().expect_err("missing").is_not_found());

    // Delete, then read: gone.
    c.delete("Patient", &key.id).await.expect("delete");
    let gone = c.read("Patient", &key.id).await.expect_err("deleted");
    assert!(gone.is_not_found(), "{gone}");
    c.delete("Patient", &key.id).await.expect("deleting twice is fine");

    // A request the server rejects: the OperationOutcome comes back typed
    // (the peer puts its message in details.text).
    let bad = c.search(&Search::new("Patient").param("birthdate", "xyz")).await.expect_err("bad date");
    assert_eq!(bad.status(), Some(400));
    assert_eq!(bad.class(), fhir::ErrorClass::Permanent);
    let outcome = bad.outcome().expect("outcome");
    assert!(outcome.diagnostics().iter().any(|d| d.contains("Invalid format for date")), "{outcome:?}");
    assert!(bad.to_string().contains("Invalid format for date"), "{bad}");
    // The request is named by method and path, never with its query (the
    // diagnostics are the server's own words).
    assert!(bad.to_string().starts_with("peer: GET Patient: HTTP 400: "), "{bad}");

    // A conditional update matching two resources: 412, and permanent.
    for _ in 0..2 {
        c.create(&json!({"resourceType": "Patient", "identifier": [{"system": system, "value": "dup"}]}))
            .await
            .expect("create");
    }
    let dup = format!("{system}|dup");
    let ambiguous = c
        .conditional_update(&json!({"resourceType": "Patient"}), &[("identifier", &dup)])
        .await
        .expect_err("ambiguous");
    assert_eq!((ambiguous.status(), ambiguous.class()), (Some(412), fhir::ErrorClass::Permanent));

    // $everything is not supported by the peer.
    let everything = c.patient_everything(&cu2.key.expect("key").id, &[]).await.expect_err("unsupported");
    assert!(everything.is_unsupported(), "{everything}");
}

#[tokio::test]
async fn conditional_transaction_over_the_peers_limit_falls_back_and_converges() {
    // The regression this guards: the peer refuses a conditional transaction
    // of more than 8 entries before writing anything; the sync must fall
    // back to a plain transaction and still write each resource once.
    let Some(PeerPair { ehr_peer: _ehr_peer, target_peer: _target_peer, ehr, target }) =
        PeerPair::start("fhir::peer fallback")
    else {
        return;
    };
    let patient_id = load_ehr(&ehr).await;
    let report =
        sync::sync_patient(&ehr, &target, &patient_id, &SyncOptions::for_types(&["Condition"]), &sync::NoProgress)
            .await;
    assert_eq!(report.status, SyncStatus::Succeeded, "{report:#?}");
    assert_eq!(report.write_mode, WriteMode::PlainTransaction);
    assert!(report.warnings.iter().any(|w| w.contains("strict isolation")), "{:?}", report.warnings);
    let created: HashMap<&str, u64> = report.per_type.iter().map(|(t, c)| (t.as_str(), c.created)).collect();
    assert_eq!(created["Condition"], 10);
    assert_eq!(all_of_type(&target, "Condition").await.len(), 10);
}

/// The peer's transactions are not atomic: a transaction whose last entry
/// fails leaves the earlier entries written. Here the target's copy of a
/// Condition changes between the sync's look-up and its write, so the
/// version-checked update (the last entry) fails after the two new
/// Observations before it were created. The sync must look again, not
/// create them twice, and still update the Condition; the report counts
/// what this run did.
#[tokio::test]
async fn partly_applied_transaction_converges_without_duplicates() {
    let Some(PeerPair { ehr_peer: _ehr_peer, target_peer, ehr, target }) =
        PeerPair::start("fhir::peer partial transaction")
    else {
        return;
    };
    let pid = ehr
        .create(&json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "partial"}]}))
        .await
        .expect("patient")
        .key
        .expect("key")
        .id;
    let subject = json!({"reference": format!("Patient/{pid}")});
    let mut condition = ehr
        .create(&json!({"resourceType": "Condition", "subject": subject, "code": {"text": "v1"}}))
        .await
        .expect("condition")
        .resource
        .expect("body");
    let types = SyncOptions::for_types(&["Observation", "Condition"]);
    let first = sync::sync_patient(&ehr, &target, &pid, &types, &sync::NoProgress).await;
    assert_counts(&first, 2, 0, 0);

    // In the EHR: two new Observations, and the Condition changes.
    for code in ["a", "b"] {
        ehr.create(&json!({"resourceType": "Observation", "status": "final", "code": {"text": code},
                           "subject": subject}))
            .await
            .expect("observation");
    }
    condition["code"]["text"] = json!("v2");
    ehr.update(&condition).await.expect("change the condition");

    // When the sync starts writing, someone edits the target's copy.
    let target_url = target_peer.base_url.clone();
    let edited = std::sync::atomic::AtomicBool::new(false);
    let hook = |e: &sync::ProgressEvent| {
        if *e != (sync::ProgressEvent::Phase { phase: sync::SyncPhase::Write })
            || edited.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let url = target_url.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let other = client("someone-else", &url);
                let mut copy = all_of_type(&other, "Condition").await.pop().expect("the copy");
                copy["note"] = json!([{"text": "edited in the target"}]);
                other.update(&copy).await.expect("edit");
            });
        })
        .join()
        .expect("edit thread");
    };
    let report = sync::sync_patient(&ehr, &target, &pid, &types, &hook).await;
    assert!(edited.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(report.status, SyncStatus::Succeeded, "{report:#?}");
    assert!(
        report.warnings.iter().any(|w| w.contains("refused the conditional transaction") && w.contains("HTTP 412")),
        "{:?}",
        report.warnings
    );
    assert_eq!(report.per_type["Observation"].created, 2, "{report:#?}");
    assert_eq!(report.per_type["Condition"].updated, 1);
    assert_eq!(all_of_type(&target, "Observation").await.len(), 2, "created once, not twice");
    let conditions = all_of_type(&target, "Condition").await;
    assert_eq!(conditions.len(), 1);
    assert_eq!(conditions[0]["code"]["text"], "v2");
}

#[tokio::test]
async fn known_target_ids_are_read_by_id_and_a_wrong_one_is_searched_for() {
    let Some(PeerPair { ehr_peer: _ehr_peer, target_peer: _target_peer, ehr, target }) =
        PeerPair::start("fhir::peer known targets")
    else {
        return;
    };
    let patient_id = load_ehr(&ehr).await;
    let first = sync::sync_patient(&ehr, &target, &patient_id, &all_types(), &sync::NoProgress).await;
    assert_counts(&first, 319, 0, 0);
    assert_eq!(first.target_ids.len(), 319, "every resource has its target id");
    assert_eq!(first.target_ids.get(&format!("Patient/{patient_id}")), first.target_patient_id.as_ref());

    // With the ids: one batch of `_id` reads, no identifier search.
    let hinted = SyncOptions { known_targets: first.target_ids.clone(), ..all_types() };
    let second = sync::sync_patient(&ehr, &target, &patient_id, &hinted, &sync::NoProgress).await;
    assert_counts(&second, 0, 0, 319);
    assert_eq!(second.requests.target.requests, 1, "{:?}", second.requests);
    assert_eq!(second.target_ids, first.target_ids);

    // A wrong id (another Observation's copy) does not match: that one is
    // found by its identifier, and nothing is created or updated.
    let mut observations: Vec<&String> = first.target_ids.keys().filter(|k| k.starts_with("Observation/")).collect();
    observations.sort();
    let (a, b) = (observations[0].clone(), observations[1].clone());
    let mut wrong = first.target_ids.clone();
    let b_target = wrong[&b].clone();
    wrong.insert(a.clone(), b_target);
    wrong.insert("Observation/not-synced".into(), "nothing-here".into());
    let options = SyncOptions { known_targets: wrong, ..all_types() };
    let third = sync::sync_patient(&ehr, &target, &patient_id, &options, &sync::NoProgress).await;
    assert_counts(&third, 0, 0, 319);
    assert_eq!(third.requests.target.requests, 2, "{:?}", third.requests);
    assert_eq!(third.target_ids[&a], first.target_ids[&a]);
}

#[tokio::test]
async fn a_security_label_added_in_the_ehr_reaches_the_target() {
    let Some(PeerPair { ehr_peer: _ehr_peer, target_peer: _target_peer, ehr, target }) =
        PeerPair::start("fhir::peer security label")
    else {
        return;
    };
    let patient =
        ehr.create(&json!({"resourceType": "Patient", "name": [{"family": "Label"}]})).await.expect("patient");
    let pid = patient.key.expect("id").id;
    let condition = ehr
        .create(&json!({"resourceType": "Condition", "code": {"text": "HIV"},
                        "subject": {"reference": format!("Patient/{pid}")}}))
        .await
        .expect("condition")
        .resource
        .expect("body");
    let options = SyncOptions::for_types(&["Condition"]);
    let first = sync::sync_patient(&ehr, &target, &pid, &options, &sync::NoProgress).await;
    assert_counts(&first, 2, 0, 0);

    // The EHR labels the condition restricted: only meta changes.
    let mut labelled = condition.clone();
    labelled["meta"]["security"] =
        json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]);
    ehr.update(&labelled).await.expect("label");
    let second = sync::sync_patient(&ehr, &target, &pid, &options, &sync::NoProgress).await;
    assert_counts(&second, 0, 1, 1);
    let copies = all_of_type(&target, "Condition").await;
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0]["meta"]["security"][0]["code"], "R", "{}", copies[0]);

    // The target keeps the label: nothing to do the next time.
    let third = sync::sync_patient(&ehr, &target, &pid, &options, &sync::NoProgress).await;
    assert_counts(&third, 0, 0, 2);
}

#[tokio::test]
async fn a_corrected_mrn_updates_the_targets_patient_instead_of_creating_a_second() {
    let Some(PeerPair { ehr_peer: _ehr_peer, target_peer: _target_peer, ehr, target }) =
        PeerPair::start("fhir::peer corrected mrn")
    else {
        return;
    };
    let mrn = |value: &str| {
        json!({"system": "urn:oid:1.2.36.146.595.217.0.1", "value": value,
                                   "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                        "code": "MR"}]}})
    };
    let patient = ehr
        .create(&json!({"resourceType": "Patient", "identifier": [mrn("TEMP-0042")], "name": [{"family": "Mrn"}]}))
        .await
        .expect("patient")
        .resource
        .expect("body");
    let pid = fhir::resource::id(&patient).expect("id").to_owned();
    ehr.create(&json!({"resourceType": "Condition", "code": {"text": "asthma"},
                       "subject": {"reference": format!("Patient/{pid}")}}))
        .await
        .expect("condition");
    let options = SyncOptions::for_types(&["Condition"]);
    let first = sync::sync_patient(&ehr, &target, &pid, &options, &sync::NoProgress).await;
    assert_counts(&first, 2, 0, 0);
    let copy_id = first.target_patient_id.clone().expect("target patient");

    // Registration replaces the temporary number with the permanent MRN.
    let mut corrected = patient.clone();
    corrected["identifier"] = json!([mrn("MRN-7731")]);
    ehr.update(&corrected).await.expect("correct the MRN");
    let second = sync::sync_patient(&ehr, &target, &pid, &options, &sync::NoProgress).await;
    assert_eq!(second.status, SyncStatus::Succeeded, "{second:#?}");
    assert_counts(&second, 0, 1, 1);
    assert_eq!(second.per_type["Patient"].updated, 1);
    assert_eq!(second.target_patient_id.as_deref(), Some(copy_id.as_str()), "the same target Patient");

    let patients = all_of_type(&target, "Patient").await;
    assert_eq!(patients.len(), 1, "no second Patient: {patients:#?}");
    let values: Vec<String> = fhir::resource::identifiers(&patients[0]).into_iter().filter_map(|i| i.value).collect();
    assert_eq!(values, vec!["MRN-7731".to_owned(), format!("Patient/{pid}")], "the corrected MRN, and the source id");
    let conditions = all_of_type(&target, "Condition").await;
    assert_eq!(conditions.len(), 1);
    assert_eq!(conditions[0]["subject"]["reference"], format!("Patient/{copy_id}"));

    // And it stays found: nothing to do the next time.
    let third = sync::sync_patient(&ehr, &target, &pid, &options, &sync::NoProgress).await;
    assert_counts(&third, 0, 0, 2);
}
