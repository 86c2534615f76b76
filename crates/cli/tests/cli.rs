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

#[test]
fn audit_verify_master_key_rotate_and_erase_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = sluice()
            .env("SLUICE_DATA_DIR", dir.path())
            // The embedded default: the key lives in the data dir.
            .env_remove("SLUICE_MASTER_KEY")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    run(&["migrate"]);
    let out = run(&["tenant", "create", "acme", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tenant = v["tenant_id"].as_str().unwrap().to_owned();
    run(&["tenant", "create", "other", "--json"]);
    run(&["audit", "verify"]);

    // Rotation installs the new key and keeps the old one as previous.
    let new_key_file = dir.path().join("new.key");
    std::fs::write(&new_key_file, "ab".repeat(32)).unwrap();
    run(&[
        "master-key",
        "rotate",
        "--new-key-file",
        new_key_file.to_str().unwrap(),
    ]);
    let installed = std::fs::read(dir.path().join("master.key")).unwrap();
    let previous = std::fs::read(dir.path().join("master.key.previous")).unwrap();
    assert_ne!(installed, previous);
    // The servers and commands keep working with the rotated keys.
    run(&["tenant", "list"]);
    run(&["audit", "verify"]);

    // Erasure needs --erase, removes the tenant, and stays on record.
    let refused = sluice()
        .env("SLUICE_DATA_DIR", dir.path())
        .env_remove("SLUICE_MASTER_KEY")
        .args(["tenant", "delete", &tenant])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    run(&["tenant", "delete", &tenant, "--erase"]);
    let out = run(&["tenant", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["other"]);
    // The rotation and the erasure are on the system chain, which verifies.
    let out = run(&["audit", "verify", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["broken"], serde_json::json!([]));
    assert!(report["events"].as_u64().unwrap() >= 2, "{report}");
}
