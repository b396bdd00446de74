use super::*;
use crate::sources::SourceConfig;

fn env(name: &str) -> Option<String> {
    match name {
        "PARTNER_TOKEN" => Some("t0k3n".into()),
        "MLLP_PORT" => Some("2590".into()),
        _ => None,
    }
}

fn compile(text: &str) -> Result<Config, ConfigErrors> {
    Config::from_toml_str_with_env(text, &env)
}

fn errors(text: &str) -> Vec<String> {
    match compile(text) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

const MINIMAL: &str = r#"
version = 1
[channels.adt-in.source]
type = "mllp"
listen = "127.0.0.1:2575"
[[channels.adt-in.destinations]]
name = "archive"
type = "file"
directory = "out"
"#;

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = compile(MINIMAL).unwrap();
    assert_eq!(c.store, StoreConfig::default());
    assert_eq!(c.store.url, "sqlite://plexus-data/plexus.db");
    assert_eq!(c.api.listen.to_string(), "127.0.0.1:8080");
    let ch = &c.channels[0];
    assert_eq!(ch.name, "adt-in");
    assert!(ch.enabled);
    assert_eq!(ch.validation, ValidationPolicy::Error);
    assert_eq!(ch.ack_mode, AckMode::Auto);
    assert_eq!(ch.order_key, OrderKey::Path(hl7v2::Path::parse("PID-3-1").unwrap()));
    let SourceConfig::Mllp(m) = &ch.source else { panic!("mllp source") };
    assert_eq!(m.max_connections, 256);
    assert_eq!(m.max_message_size, ByteSize::mib(16));
    let d = &ch.destinations[0];
    assert_eq!((d.name.as_str(), d.workers, d.connector.kind()), ("archive", 1, "file"));
    assert_eq!(d.retry, RetryConfig::default());
    assert_eq!(d.lease, Duration::from_secs(60));
}

#[test]
fn the_quickstart_example_compiles() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart.toml");
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.channels.len(), 2);
    assert!(c.base_dir.ends_with("examples"));
    assert!(c.store.resolved_url(&c.base_dir).contains("examples/plexus-data/plexus.db"));
}

#[test]
fn every_error_is_reported_at_once_with_its_path() {
    let text = r#"
version = 1
[store]
url = "redis://localhost"
[api]
listen = "not an address"
[channels.adt-in]
validation = "maybe"
filter = ['MSH-9-1 = "ADT"']
[channels.adt-in.source]
type = "mllp"
listen = "127.0.0.1:2575"
max_connections = 0
[[channels.adt-in.destinations]]
name = "ok"
type = "file"
directory = "out"
[[channels.adt-in.destinations]]
name = "partner"
type = "http"
url = "not a url"
colour = "blue"
workers = 0
"#;
    let errs = errors(text);
    let has = |needle: &str| errs.iter().any(|e| e.starts_with(needle));
    assert!(has("store.url: "), "{errs:#?}");
    assert!(has("api.listen: "), "{errs:#?}");
    assert!(has("channel \"adt-in\".validation: "), "{errs:#?}");
    assert!(has("channel \"adt-in\".filter[0]: column 9"), "{errs:#?}");
    assert!(has("channel \"adt-in\".source.max_connections: must be at least 1"), "{errs:#?}");
    assert!(has("channel \"adt-in\".destination[1].colour: unknown field"), "{errs:#?}");
    assert!(has("channel \"adt-in\".destination[1].workers: must be between 1 and 256"), "{errs:#?}");
}

#[test]
fn a_bad_destination_url_is_reported_at_its_path() {
    let text = format!(
        "{MINIMAL}\n[[channels.adt-in.destinations]]\nname = \"partner\"\ntype = \"http\"\nurl = \"not a url\"\n"
    );
    let errs = errors(&text);
    assert!(errs.iter().any(|e| e.starts_with("channel \"adt-in\".destination[1].url: ")), "{errs:#?}");
}

#[test]
fn unset_environment_variables_are_named_at_their_path() {
    let text = format!(
        r#"{MINIMAL}
[channels.lab]
order_key = "none"
[channels.lab.source]
type = "mllp"
listen = "127.0.0.1:${{MLLP_PORT}}"
[[channels.lab.destinations]]
name = "partner"
type = "http"
url = "https://partner.example/${{MISSING_PATH}}"
"#
    );
    let errs = errors(&text);
    assert_eq!(
        errs,
        ["channel \"lab\".destination[0].url: environment variable MISSING_PATH is not set"],
        "the unset variable is the only problem: MLLP_PORT expanded"
    );
}

#[test]
fn environment_values_are_expanded_before_compiling() {
    let text = MINIMAL.replace("127.0.0.1:2575", "127.0.0.1:${MLLP_PORT}");
    let c = compile(&text).unwrap();
    assert_eq!(c.channels[0].source.own_listener().unwrap().port(), 2590);
}

#[test]
fn version_is_required_and_must_be_1() {
    let text = MINIMAL.replace("version = 1", "");
    assert_eq!(errors(&text), ["version: required: write `version = 1` at the top of the file"]);
    let text = MINIMAL.replace("version = 1", "version = 2");
    assert_eq!(errors(&text), ["version: version 2 is not supported (this build reads version 1)"]);
}

#[test]
fn unknown_top_level_keys_and_channel_keys_are_errors() {
    let text = format!("{MINIMAL}\n[stor]\nurl = 'x'\n");
    let errs = errors(&text);
    assert!(errs[0].starts_with("stor: unknown field"), "{errs:?}");
    let text =
        MINIMAL.replace("[channels.adt-in.source]", "[channels.adt-in]\norderkey = 'PID-3'\n[channels.adt-in.source]");
    let errs = errors(&text);
    assert!(errs[0].starts_with("channel \"adt-in\".orderkey: unknown field"), "{errs:?}");
}

#[test]
fn syntax_errors_give_line_and_column() {
    let errs = errors("version = 1\n[channels\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("(syntax): TOML parse error at line 2"), "{errs:?}");
}

#[test]
fn two_listeners_on_one_address_are_reported() {
    let text = format!(
        r#"{MINIMAL}
[channels.second.source]
type = "mllp"
listen = "127.0.0.1:2575"
"#
    );
    let errs = errors(&text);
    assert!(errs.iter().any(|e| e.contains(".source.listen: 127.0.0.1:2575 is already used by channel")), "{errs:#?}");
}

#[test]
fn channel_destinations_must_name_an_existing_other_channel() {
    let text = format!(
        r#"{MINIMAL}
[[channels.adt-in.destinations]]
name = "fan-out"
type = "channel"
channel = "nowhere"
"#
    );
    assert_eq!(errors(&text), ["channel \"adt-in\".destination[1].channel: no channel is named \"nowhere\""]);
}

#[test]
fn json_channels_need_an_http_source_and_json_filters() {
    let text = MINIMAL.replace(
        "[channels.adt-in.source]",
        "[channels.adt-in]\ncontent = \"fhir\"\nfilter = ['MSH-9-1 == \"ADT\"']\n[channels.adt-in.source]",
    );
    let errs = errors(&text);
    assert!(
        errs.iter().any(|e| e.starts_with("channel \"adt-in\".source.type: a mllp source carries HL7 v2 only")),
        "{errs:#?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with(r#"channel "adt-in".filter: "MSH-9-1 == \"ADT\"" reads HL7 v2 fields, but here the content is JSON: read it with json: paths"#)),
        "{errs:#?}"
    );
}

#[test]
fn destination_names_are_unique_within_a_channel_and_url_safe() {
    let text = format!(
        "{MINIMAL}\n[[channels.adt-in.destinations]]\nname = \"archive\"\ntype = \"file\"\ndirectory = \"o2\"\n\
         [[channels.adt-in.destinations]]\nname = \"a b\"\ntype = \"file\"\ndirectory = \"o3\"\n"
    );
    let errs = errors(&text);
    assert!(
        errs.contains(&"channel \"adt-in\".destination[1].name: \"archive\" is used twice".to_string()),
        "{errs:#?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("channel \"adt-in\".destination[2].name: \"a b\": use only")),
        "{errs:#?}"
    );
}

#[test]
fn order_key_none_and_bad_paths() {
    let c = compile(
        &MINIMAL
            .replace("[channels.adt-in.source]", "[channels.adt-in]\norder_key = \"none\"\n[channels.adt-in.source]"),
    )
    .unwrap();
    assert_eq!(c.channels[0].order_key, OrderKey::None);
    let errs =
        errors(&MINIMAL.replace(
            "[channels.adt-in.source]",
            "[channels.adt-in]\norder_key = \"PATIENT\"\n[channels.adt-in.source]",
        ));
    assert!(errs[0].starts_with("channel \"adt-in\".order_key: invalid path"), "{errs:?}");
}

#[test]
fn retry_policy_maps_to_the_store() {
    let text = MINIMAL.replace(
        "directory = \"out\"",
        "directory = \"out\"\nretry = { max_attempts = 3, initial_backoff = \"250ms\", max_backoff = \"10s\", on_failure = \"dead_letter\" }",
    );
    let c = compile(&text).unwrap();
    let p = c.channels[0].destinations[0].retry.to_store_policy();
    assert_eq!(p.max_attempts, 3);
    assert_eq!(p.initial_backoff, std::time::Duration::from_millis(250));
    assert_eq!(p.max_backoff, std::time::Duration::from_secs(10));
    assert_eq!(p.on_failure, store::OnFailure::DeadLetter);
    let errs = errors(&MINIMAL.replace(
        "directory = \"out\"",
        "directory = \"out\"\nretry = { max_backoff = \"1s\", initial_backoff = \"2s\" }",
    ));
    assert_eq!(errs, ["channel \"adt-in\".destination[0].retry.max_backoff: must be at least initial_backoff"]);
}

#[test]
fn relative_sqlite_paths_resolve_against_the_config_folder() {
    let s = StoreConfig { url: "sqlite://data/p.db?mode=rwc".into(), ..StoreConfig::default() };
    assert_eq!(s.resolved_url(Path::new("/etc/plexus")), "sqlite:///etc/plexus/data/p.db?mode=rwc");
    let s = StoreConfig { url: "sqlite:///var/lib/p.db".into(), ..StoreConfig::default() };
    assert_eq!(s.resolved_url(Path::new("/etc/plexus")), "sqlite:///var/lib/p.db");
    let s = StoreConfig { url: "postgres://u@h/db".into(), ..StoreConfig::default() };
    assert_eq!(s.resolved_url(Path::new("/etc/plexus")), "postgres://u@h/db");
}

#[test]
fn store_url_errors_never_echo_the_url() {
    let errs = errors(&format!("{MINIMAL}\n[store]\nurl = \"pg://user:hunter2@h/db\"\n"));
    assert_eq!(errs, ["store.url: must start with sqlite://, postgres:// or mysql://"]);
    assert!(!errs[0].contains("hunter2"));
}

#[test]
fn summary_names_channels_and_never_the_store_url() {
    let c = compile(&format!("{}\n[store]\nurl = \"postgres://u:${{PARTNER_TOKEN}}@h/db\"\n", MINIMAL)).unwrap();
    let text = c.to_string();
    assert!(text.contains("adt-in: mllp 127.0.0.1:2575 -> archive (file)"), "{text}");
    assert!(text.contains("store: postgres"), "{text}");
    assert!(!text.contains("t0k3n"), "{text}");
}

#[test]
fn fhir_servers_are_read_and_validated_by_the_fhir_crate() {
    let text = format!(
        "{MINIMAL}\n[fhir_servers.ehr]\nbase_url = \"https://ehr.example/fhir/R4\"\n\
         [fhir_servers.crm]\nbase_url = \"https://crm.example/fhir\"\npage_size = 0\n\
         [fhir_servers.bad]\nbase_url = \"https://x.example\"\nbogus = 1\n"
    );
    let errs = errors(&text);
    assert_eq!(
        errs,
        [
            "fhir_servers.crm.page_size: must be at least 1",
            "fhir_servers.bad.bogus: unknown field, expected one of `base_url`, `auth`, `connect_timeout_secs`, \
         `request_timeout_secs`, `retry`, `page_size`, `max_batch_entries`, `transactions`, `batches`",
        ]
    );
    let ok = compile(&format!("{MINIMAL}\n[fhir_servers.ehr]\nbase_url = \"https://ehr.example/fhir/R4\"\n")).unwrap();
    assert_eq!(ok.fhir_servers["ehr"].base_url.as_str(), "https://ehr.example/fhir/R4");
}

#[test]
fn transform_step_errors_keep_their_field_path() {
    let text = MINIMAL.replace(
        "[channels.adt-in.source]",
        "[[channels.adt-in.transform]]\ntype = \"set\"\npath = 5\nvalue = \"x\"\n\
         [[channels.adt-in.transform]]\ntype = \"rename\"\n\
         [[channels.adt-in.transform]]\ntype = \"route\"\nto = [\"nowhere\"]\n[channels.adt-in.source]",
    );
    let errs = errors(&text);
    assert!(errs.iter().any(|e| e.starts_with("channel \"adt-in\".transform[0].path: invalid type")), "{errs:#?}");
    assert!(errs.iter().any(|e| e.starts_with("channel \"adt-in\".transform[1].type: unknown step type")), "{errs:#?}");
}

#[test]
fn route_steps_must_name_destinations_of_the_channel() {
    let text = MINIMAL.replace(
        "[channels.adt-in.source]",
        "[[channels.adt-in.transform]]\ntype = \"route\"\nto = [\"nowhere\"]\n[channels.adt-in.source]",
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with("channel \"adt-in\".transform[0].to[0]: no destination named \"nowhere\""),
        "{errs:#?}"
    );
}

#[test]
fn script_files_are_read_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("upper.js"), "msg.set(\"MSH-5\", \"X\");").unwrap();
    let text = MINIMAL.replace(
        "[channels.adt-in.source]",
        "[[channels.adt-in.transform]]\ntype = \"javascript\"\nfile = \"upper.js\"\n[channels.adt-in.source]",
    );
    std::fs::write(dir.path().join("plexus.toml"), &text).unwrap();
    let c = Config::load(&dir.path().join("plexus.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.channels[0].transform.has_scripts());
    assert_eq!(c.base_dir, dir.path());
    std::fs::write(dir.path().join("plexus.toml"), text.replace("upper.js", "missing.js")).unwrap();
    let Err(LoadError::Invalid(errs)) = Config::load(&dir.path().join("plexus.toml")) else {
        panic!("expected errors")
    };
    assert_eq!(errs.0[0].path, "channel \"adt-in\".transform[0].file");
}

#[test]
fn every_example_compiles_with_its_variables_set() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // Every `${VAR}` an example names is set: the examples document
        // which secrets come from the environment.
        let env = |name: &str| name.starts_with("PARTNER_").then(|| "example-secret".to_string());
        // Read as `plexus check --config examples/x.toml` would: files the
        // example names (rule files, scripts) relative to its folder.
        Config::compile_text(&text, &env, Some(&examples)).unwrap_or_else(|e| panic!("{}:\n{e}", path.display()));
        seen += 1;
    }
    assert!(seen >= 2, "examples/*.toml");
}

#[test]
fn channel_destinations_cannot_target_a_disabled_channel() {
    let text = format!(
        r#"{MINIMAL}
[[channels.adt-in.destinations]]
name = "fan-out"
type = "channel"
channel = "off"
[channels.off]
enabled = false
[channels.off.source]
type = "http"
"#
    );
    assert_eq!(
        errors(&text),
        ["channel \"adt-in\".destination[1].channel: channel \"off\" is disabled (enabled = false)"]
    );
}
