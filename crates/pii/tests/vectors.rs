//! Runs the shared test vectors (`rules/vectors.json`): the same file the
//! browser extension runs, so both engines agree on every case.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::Value;
use sluice_pii::{RedactConfig, Redactor, VECTORS_JSON};

#[test]
fn every_vector_passes() {
    let file: Value = serde_json::from_str(VECTORS_JSON).unwrap();
    let key = file["hash_key"].as_str().unwrap();
    let vectors = file["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 20, "the vector file looks truncated");
    let mut failures = Vec::new();
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let config: RedactConfig = serde_json::from_value(v["config"].clone())
            .unwrap_or_else(|e| panic!("{name}: bad config: {e}"));
        let redactor = Redactor::new(&config, key.as_bytes())
            .unwrap_or_else(|p| panic!("{name}: config problems {p:?}"));
        let got = if let Some(text) = v.get("text") {
            Value::String(redactor.redact_text(text.as_str().unwrap()).into_owned())
        } else {
            let mut record = v["record"].clone();
            redactor.redact_record(&mut record);
            record
        };
        if got != v["expected"] {
            failures.push(format!("{name}:\n  want {}\n  got  {got}", v["expected"]));
        }
    }
    assert!(
        failures.is_empty(),
        "{} vectors failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every pattern of the rules file compiles as a JavaScript `RegExp` (the
/// browser extension's engine) and finds the same matches as Rust on the
/// vector texts. Skipped when `node` is not installed.
#[test]
fn patterns_agree_with_javascript() {
    let script = r#"
const fs = require("fs");
const rules = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const texts = JSON.parse(fs.readFileSync(process.argv[3], "utf8")).vectors
  .filter(v => typeof v.text === "string").map(v => v.text);
const out = {};
for (const d of rules.detectors) {
  const re = new RegExp(d.pattern, "g" + (d.flags || ""));
  for (const k of ["require_before", "deny_before"]) if (d[k]) new RegExp(d[k], d.flags_context || "");
  out[d.id] = texts.map(t => [...t.matchAll(re)].map(m => [m.index, m.index + m[0].length]));
}
console.log(JSON.stringify(out));
"#;
    let dir = std::env::temp_dir().join(format!("sluice-pii-js-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (rules_path, vectors_path, script_path) = (
        dir.join("rules.json"),
        dir.join("vectors.json"),
        dir.join("check.js"),
    );
    std::fs::write(&rules_path, sluice_pii::RULES_JSON).unwrap();
    std::fs::write(&vectors_path, VECTORS_JSON).unwrap();
    std::fs::write(&script_path, script).unwrap();
    let output = match std::process::Command::new("node")
        .arg(&script_path)
        .arg(&rules_path)
        .arg(&vectors_path)
        .output()
    {
        Ok(o) => o,
        Err(_) => {
            eprintln!("node not found; JavaScript agreement not checked");
            return;
        }
    };
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let js: Value = serde_json::from_slice(&output.stdout).unwrap();
    // The same search with Rust regex semantics (via the crate's own
    // translation), compared match by match in UTF-16 offsets.
    let rules: Value = serde_json::from_str(sluice_pii::RULES_JSON).unwrap();
    let file: Value = serde_json::from_str(VECTORS_JSON).unwrap();
    let texts: Vec<&str> = file["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.get("text").and_then(Value::as_str))
        .collect();
    for d in rules["detectors"].as_array().unwrap() {
        let id = d["id"].as_str().unwrap();
        let re = sluice_pii::compile_portable(
            d["pattern"].as_str().unwrap(),
            d.get("flags").and_then(Value::as_str).unwrap_or(""),
        )
        .unwrap();
        for (i, text) in texts.iter().enumerate() {
            let rust: Vec<(usize, usize)> = re
                .find_iter(text.as_bytes())
                .map(|m| (utf16_len(&text[..m.start()]), utf16_len(&text[..m.end()])))
                .collect();
            let want: Vec<(usize, usize)> = js[id][i]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p[0].as_u64().unwrap() as usize,
                        p[1].as_u64().unwrap() as usize,
                    )
                })
                .collect();
            assert_eq!(
                rust, want,
                "detector {id} disagrees with JavaScript on {text:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}
