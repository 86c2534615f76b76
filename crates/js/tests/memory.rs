//! Memory comes back after limit hits (issue 5: "memory back to normal
//! afterwards"). Its own test binary, so no other test's allocations move the
//! process's resident set while it measures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use serde_json::json;
use sluice_core::ErrorCode;
use sluice_js::{CallContext, Script, ScriptEnv, ScriptKind, ScriptLimits};
use uuid::Uuid;

/// Resident set size of this process, in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn env() -> ScriptEnv {
    ScriptEnv {
        tenant_id: Uuid::nil(),
        pipeline_id: Uuid::nil(),
        pipeline_name: "memory".to_owned(),
        pipeline_version: 1,
        hash_key: Arc::from(&b"k"[..]),
        redact: None,
    }
}

#[test]
fn rss_does_not_grow_across_memory_and_time_limit_hits() {
    if !std::path::Path::new("/proc/self/statm").exists() {
        return;
    }
    let limits = ScriptLimits {
        memory_mb: 32,
        timeout_ms: 10_000,
        ..ScriptLimits::default()
    };
    let script = Script::compile(
        "function transform(r) {
           if (r.kind === 'objects') { const a = []; for (;;) a.push({ i: a.length }); }
           if (r.kind === 'string') { let s = 'x'; for (;;) s += s; }
           if (r.kind === 'array') { new Array(1e9).fill(0); }
           if (r.kind === 'loop') { for (;;) {} }
           return r;
         }",
        ScriptKind::Transform,
        limits,
        env(),
    )
    .unwrap();
    let call = CallContext {
        batch_id: Uuid::nil(),
        record_index: 0,
    };
    let round = |script: &Script| {
        for kind in ["objects", "string", "array"] {
            let e = script.transform(json!({"kind": kind}), &call).unwrap_err();
            assert!(
                matches!(
                    e.code,
                    ErrorCode::ScriptMemoryLimit | ErrorCode::ScriptError
                ),
                "{kind}: {e}"
            );
        }
        assert_eq!(
            script
                .transform(json!({"kind": "ok"}), &call)
                .unwrap()
                .records,
            [json!({"kind": "ok"})]
        );
    };
    // Warm up: allocator arenas and the first engines reach their size.
    for _ in 0..5 {
        round(&script);
    }
    let before = rss_bytes();
    for _ in 0..25 {
        round(&script);
    }
    let after = rss_bytes();
    // 75 engines each filled to their 32 MiB limit and thrown away: without
    // release this would be gigabytes. Allow allocator slack of a few limits.
    let growth = after.saturating_sub(before);
    eprintln!("RSS before {} MiB, after {} MiB", before >> 20, after >> 20);
    assert!(
        growth < 96 * 1024 * 1024,
        "RSS grew by {} MiB (from {} MiB to {} MiB)",
        growth >> 20,
        before >> 20,
        after >> 20
    );
}
