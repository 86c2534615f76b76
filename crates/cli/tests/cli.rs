//! The operator commands: `config check`, `migrate`, `tenant`, `openapi`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::sluice;

#[test]
fn config_check_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sluice.toml");
    std::fs::write(
        &file,
        "listen = \"nowhere\"\nbogus = true\n[limits]\nmax_records = 0\n",
    )
    .unwrap();
    let out = sluice()
        .args(["config", "check", "--config"])
        .arg(&file)
        .env("SLUICE_ROLE", "boss")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in ["/listen", "/bogus", "/role"] {
        assert!(err.contains(expected), "{expected} missing from: {err}");
    }
    // The same checks stop `serve` before it binds anything.
    let out = sluice()
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A good config passes.
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:9999\"\n[worker]\nconcurrency = 2\n",
    )
    .unwrap();
    let out = sluice()
        .args(["config", "check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn migrate_and_revert_on_the_embedded_database() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        sluice()
            .env("SLUICE_DATA_DIR", dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("sluice.db").exists());
    let out = run(&["migrate", "--revert-to", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["migrate"]);
    assert!(out.status.success());
    // Tenants: create prints the key once; list shows the tenant.
    let out = run(&["tenant", "create", "acme", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["api_key"].as_str().unwrap().starts_with("slk_"));
    let tenant = v["tenant_id"].as_str().unwrap().to_owned();
    let out = run(&["tenant", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], serde_json::json!(tenant));
    assert_eq!(list[0]["name"], "acme");
    assert_eq!(run(&["tenant", "create", "  "]).status.code(), Some(2));
}

#[test]
fn openapi_prints_the_document() {
    let out = sluice().arg("openapi").output().unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["paths"]["/pipelines/{pipeline_id}/batches"]["post"].is_object());
}
