//! API tokens on every backend (run through `behaviour`'s re-export by
//! `on_every_backend!`).

use std::time::Duration;

use store::{ErrorClass, NewApiToken, StoreError};

use crate::support::{TestStore, t0};

fn token(id: &str, name: &str, scopes: &[&str]) -> NewApiToken {
    NewApiToken {
        id: id.into(),
        name: name.into(),
        secret_sha256: vec![id.len() as u8; 32],
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_at: None,
    }
}

pub async fn api_tokens_create_find_list_revoke_and_touch(t: &TestStore) {
    let s = &t.store;
    let created = s.create_api_token(token("a1", "dashboard", &["messages:read", "metrics"])).await.unwrap();
    assert_eq!(created.id, "a1");
    assert_eq!(created.name, "dashboard");
    assert_eq!(created.scopes, ["messages:read", "metrics"]);
    assert_eq!(created.secret_sha256, vec![2u8; 32]);
    assert_eq!(created.created_at, t0());
    assert!(created.last_used_at.is_none() && created.revoked_at.is_none() && created.expires_at.is_none());
    assert!(created.is_active(t0()));

    // A second active token cannot take the name; another name is fine.
    let e = s.create_api_token(token("a2", "dashboard", &["sync"])).await.unwrap_err();
    assert!(matches!(e, StoreError::Invalid { field: "name", .. }), "{e:?}");
    assert_eq!(e.class(), ErrorClass::Permanent);
    t.clock.advance(Duration::from_secs(1));
    let mut ops = token("b2", "ops", &["channels:admin"]);
    ops.expires_at = Some(t0() + chrono::Duration::hours(1));
    s.create_api_token(ops).await.unwrap();

    // Malformed tokens are refused before the database.
    for bad in [
        token("", "x", &["sync"]),
        token("has_underscore", "x", &["sync"]),
        token("c3", " ", &["sync"]),
        token("c3", "x", &[]),
        token("c3", "x", &["two words"]),
    ] {
        assert!(matches!(s.create_api_token(bad).await, Err(StoreError::Invalid { .. })));
    }

    assert_eq!(s.api_token("nope").await.unwrap(), None);
    let found = s.api_token("b2").await.unwrap().unwrap();
    assert_eq!(found.name, "ops");
    assert_eq!(found.expires_at, Some(t0() + chrono::Duration::hours(1)));
    assert!(found.is_active(t0()));
    assert!(!found.is_active(t0() + chrono::Duration::hours(1)));
    let names: Vec<String> = s.api_tokens().await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["dashboard", "ops"]);

    // last_used_at moves forward only.
    let used = t0() + chrono::Duration::minutes(5);
    s.touch_api_token("a1", used).await.unwrap();
    s.touch_api_token("a1", t0() + chrono::Duration::minutes(1)).await.unwrap();
    assert_eq!(s.api_token("a1").await.unwrap().unwrap().last_used_at, Some(used));

    // Revoke by name, then by id; a revoked name can be reused.
    t.clock.advance(Duration::from_secs(1));
    assert_eq!(s.revoke_api_token("dashboard").await.unwrap(), 1);
    assert_eq!(s.revoke_api_token("dashboard").await.unwrap(), 0);
    let revoked = s.api_token("a1").await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(t0() + chrono::Duration::seconds(2)));
    assert!(!revoked.is_active(t0()));
    assert_eq!(s.revoke_api_token("b2").await.unwrap(), 1);
    assert_eq!(s.revoke_api_token("unknown").await.unwrap(), 0);
    s.create_api_token(token("d4", "dashboard", &["messages:read"])).await.unwrap();
    assert_eq!(s.api_tokens().await.unwrap().len(), 3);
}
