//! The documents generated from or describing the code are kept in step with it: the config
//! reference (`docs/CONFIG.md`: every key the example configs reach, with every default
//! filled in as admin `/config` shows them, has a row, and every row names a key that
//! exists), and the man pages (`docs/man/`, generated from the command line's definition).

use std::collections::BTreeSet;
use std::path::Path;

/// `server.workers`, `routes[].validate.json`, `rate_limits.*.rate`: maps whose keys are
/// names (rate-limit policies, JWT providers, injected headers) become `*`.
fn key_paths(value: &serde_json::Value, prefix: &str, out: &mut BTreeSet<String>) {
    const NAMED: [&str; 6] = [
        "rate_limits",
        "jwt",
        "inject_headers",
        "inject_query",
        "secrets",
        "add",
    ];
    match value {
        serde_json::Value::Object(map) => {
            let named = NAMED
                .iter()
                .any(|n| prefix == *n || prefix.ends_with(&format!(".{n}")));
            for (k, v) in map {
                let key = if named { "*" } else { k.as_str() };
                let path = if prefix.is_empty() {
                    key.to_string()
                } else {
                    format!("{prefix}.{key}")
                };
                if !v.is_object() || named {
                    out.insert(path.clone());
                }
                key_paths(v, &path, out);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items.iter().filter(|i| i.is_object()) {
                key_paths(item, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

fn documented() -> BTreeSet<String> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CONFIG.md"))
        .expect("docs/CONFIG.md");
    // Rows: | `key` | type | default | meaning |
    text.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(key, _)| key.to_string())
        .collect()
}

fn example_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for name in ["ringgate.example.toml", "tls.example.toml", "demo.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap();
        let config: ringgate::config::Config = toml::from_str(&text).unwrap();
        key_paths(&serde_json::to_value(&config).unwrap(), "", &mut keys);
    }
    keys
}

#[test]
fn every_key_is_in_the_config_reference_and_every_row_is_a_key() {
    let keys = example_keys();
    let rows = documented();
    let missing: Vec<&String> = keys.iter().filter(|k| !rows.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "keys without a row in docs/CONFIG.md: {missing:#?}"
    );
    // Rows may document keys the examples leave out, but only keys that exist: each row's
    // last part must be a field name somewhere in the config types.
    let fields: BTreeSet<String> = keys
        .iter()
        .map(|k| k.rsplit(['.', ']']).next().unwrap_or(k).to_string())
        .collect();
    let source =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/config/file.rs"))
            .unwrap()
            + &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/config/file_identity.rs"
            ))
            .unwrap()
            + &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/src/config/file_limits.rs"
            ))
            .unwrap();
    let unknown: Vec<&String> = rows
        .iter()
        .filter(|r| {
            let last = r.rsplit(['.', ']']).next().unwrap_or(r);
            last != "*" && !fields.contains(last) && !source.contains(&format!("pub {last}:"))
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "rows for keys that do not exist: {unknown:#?}"
    );
}

#[test]
#[ignore = "prints the key list (cargo test --test config_reference -- --ignored --nocapture)"]
fn print_keys() {
    for k in example_keys() {
        println!("{k}");
    }
}

#[test]
fn the_man_pages_are_the_ones_the_command_line_generates() {
    let dir = std::env::temp_dir().join(format!("ringgate-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringgate"))
        .args(["man", "--dir", dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/man");
    let names = |d: &Path| -> BTreeSet<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect()
    };
    let regenerate = "regenerate them: cargo run --release -- man --dir docs/man";
    assert_eq!(names(&dir), names(&committed), "{regenerate}");
    assert!(names(&dir).contains("ringgate-run.1"));
    for name in names(&dir) {
        let made = std::fs::read_to_string(dir.join(&name)).unwrap();
        assert!(made.contains(".TH"), "{name} is a man page");
        assert_eq!(
            made,
            std::fs::read_to_string(committed.join(&name)).unwrap(),
            "docs/man/{name} is out of date: {regenerate}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
