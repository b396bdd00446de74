//! `plexus token create | list | revoke`, run as the real binary on a SQLite
//! store in a temp dir, checked against the store the config names.

use std::path::Path;
use std::process::{Command, Output};

fn plexus(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_plexus")).args(args).output().expect("run plexus")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn config(dir: &Path) -> String {
    let path = dir.join("plexus.toml");
    std::fs::write(&path, "version = 1\n\n[store]\nurl = \"sqlite://data/plexus.db\"\n").unwrap();
    path.to_str().unwrap().to_owned()
}

#[test]
fn create_list_and_revoke_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());

    let out =
        plexus(&["token", "create", "--config", &cfg, "--name", "dashboard", "--scopes", "messages:read,metrics"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_owned();
    // Only the token on stdout: plx_<16 hex>_<64 hex>.
    let parts: Vec<&str> = token.split('_').collect();
    assert_eq!(parts.len(), 3, "{token}");
    assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("plx", 16, 64), "{token}");
    assert!(text(&out.stderr).contains("shown only this once"));

    // A second active token cannot take the name; unknown scopes are named.
    let out = plexus(&["token", "create", "--config", &cfg, "--name", "dashboard", "--scopes", "sync"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("already has this name"), "{}", text(&out.stderr));
    let out = plexus(&["token", "create", "--config", &cfg, "--name", "x", "--scopes", "messages:write"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("unknown scope \"messages:write\""), "{}", text(&out.stderr));

    let out = plexus(&["token", "create", "--config", &cfg, "--name", "admin", "--scopes", "all"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = plexus(&["token", "list", "--config", &cfg, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["name"], "dashboard");
    assert_eq!(listed[0]["id"], parts[1]);
    assert_eq!(listed[0]["scopes"], serde_json::json!(["messages:read", "metrics"]));
    assert_eq!(
        listed[1]["scopes"],
        serde_json::json!(["messages:read", "messages:replay", "channels:admin", "sync", "SEND_TO_EHR", "metrics"])
    );
    // Neither the secret nor its hash is ever listed.
    let listing = text(&out.stdout);
    assert!(!listing.contains(parts[2]) && !listing.contains("sha256"), "{listing}");

    let out = plexus(&["token", "revoke", "--config", &cfg, "dashboard"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = plexus(&["token", "revoke", "--config", &cfg, "dashboard"]);
    assert!(!out.status.success(), "revoking twice must fail");
    let out = plexus(&["token", "list", "--config", &cfg]);
    let table = text(&out.stdout);
    assert!(table.lines().any(|l| l.starts_with("dashboard") && l.contains("revoked")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("admin") && l.contains("active")), "{table}");
}
