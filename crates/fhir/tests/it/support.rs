//! Shared helpers: clients with fast retries, fixture loading, mock servers.
//! The patient-sync bench includes this file too (`#[path]`), so the peers
//! are set up the same way in tests and measurements.

use std::path::PathBuf;

use fhir::{FhirClient, Search, ServerConfig};
use serde_json::Value;
use testkit::FhirPeer;
use url::Url;

/// The resource types of the Synthea bundle, the Patient first.
pub const BUNDLE_TYPES: &[&str] = &[
    "Patient",
    "Organization",
    "Practitioner",
    "Encounter",
    "Observation",
    "DiagnosticReport",
    "Condition",
    "Procedure",
    "Immunization",
    "MedicationRequest",
    "CarePlan",
    "CareTeam",
    "Goal",
    "Claim",
    "ExplanationOfBenefit",
    "Device",
    "ImagingStudy",
];

/// The crate's fixture folder.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

/// A config for `base_url` with millisecond backoffs, so retry tests take no
/// time.
pub fn fast_config(base_url: &str) -> ServerConfig {
    let mut config = ServerConfig::new(Url::parse(base_url).expect("base url"));
    config.retry.initial_backoff_ms = 1;
    config.retry.max_backoff_ms = 5;
    config.request_timeout_secs = 30;
    config
}

/// A client without auth for `base_url`.
pub fn client(name: &str, base_url: &str) -> FhirClient {
    FhirClient::new(name, &fast_config(base_url)).expect("client")
}

/// Serves `router` on 127.0.0.1:0; returns its `http://127.0.0.1:PORT`.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

/// Serves a mock FHIR server (`router` answers under `/fhir`); returns its
/// base URL, `http://127.0.0.1:PORT/fhir`.
pub async fn serve_fhir(router: axum::Router) -> String {
    format!("{}/fhir", serve(router).await)
}

/// A client named `mock`, with fast retries, of a mock FHIR server.
pub async fn mock_client(router: axum::Router) -> FhirClient {
    client("mock", &serve_fhir(router).await)
}

/// Two fresh FHIR peers, the EHR and the target, with a client of each
/// (`ehr`, `crm`); `None` (reported as skipped) without the peers.
pub struct PeerPair {
    /// The EHR peer (kept running while the pair lives).
    pub ehr_peer: FhirPeer,
    /// The target peer.
    pub target_peer: FhirPeer,
    /// A client of the EHR named `ehr`.
    pub ehr: FhirClient,
    /// A client of the target named `crm`.
    pub target: FhirClient,
}

impl PeerPair {
    /// Starts both peers for `suite`.
    pub fn start(suite: &str) -> Option<PeerPair> {
        let ehr_peer = FhirPeer::start(suite)?;
        let target_peer = FhirPeer::start(suite)?;
        let ehr = client("ehr", &ehr_peer.base_url);
        let target = client("crm", &target_peer.base_url);
        Some(PeerPair { ehr_peer, target_peer, ehr, target })
    }
}

/// The Synthea patient bundle (a transaction of 319 entries).
pub fn synthea_bundle() -> Value {
    let text = std::fs::read_to_string(fixture("synthea-patient-bundle.json")).expect("bundle fixture");
    serde_json::from_str(&text).expect("bundle json")
}

/// Loads the Synthea bundle (319 resources) into `ehr`; returns the
/// patient's id on `ehr`. Shared with the patient-sync bench.
pub async fn load_synthea(ehr: &FhirClient) -> String {
    let response = ehr.transaction(&synthea_bundle()).await.expect("load the bundle");
    let entries = fhir::bundle::entry_responses(&response);
    assert_eq!(entries.len(), 319);
    assert!(entries.iter().all(|e| e.is_success()), "every entry loaded");
    entries
        .iter()
        .filter_map(|e| e.written_key())
        .find(|k| k.resource_type == "Patient")
        .expect("the patient's location")
        .id
}

/// Loads the Synthea bundle and the 25 other patients into `ehr`; returns
/// the bundle patient's id on `ehr`.
pub async fn load_ehr(ehr: &FhirClient) -> String {
    let patient = load_synthea(ehr).await;

    let text = std::fs::read_to_string(fixture("synthea-patients.ndjson")).expect("ndjson fixture");
    let others: Vec<fhir::bundle::BundleEntry> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut p: Value = serde_json::from_str(l).expect("patient json");
            p.as_object_mut().expect("object").remove("id");
            fhir::bundle::BundleEntry {
                full_url: None,
                resource: Some(p),
                method: fhir::bundle::EntryMethod::Post,
                url: "Patient".into(),
                if_none_exist: None,
                if_match: None,
            }
        })
        .collect();
    assert_eq!(others.len(), 25);
    let response = ehr.batch(&fhir::bundle::batch(&others)).await.expect("load the patients");
    assert!(fhir::bundle::entry_responses(&response).iter().all(|e| e.is_success()));
    patient
}

/// Every resource of `resource_type` on `client`.
pub async fn all_of_type(client: &FhirClient, resource_type: &str) -> Vec<Value> {
    client.search_all(&Search::new(resource_type).param("_count", "1000")).await.expect("search all").resources
}
