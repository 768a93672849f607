//! Tidy: the habits the architecture depends on, checked on every test run.
//! - `unsafe` only in the WAL, each block with a `// SAFETY:` comment;
//! - the core knows nothing of clocks, locks, async, I/O, randomness or serde
//!   (it may share immutable data through `Arc`);
//! - no `std::sync::Mutex` (parking_lot instead), no leftover `dbg!`/`todo!`;
//! - every source file says what it is for (`//!`);
//! - every route and every metric is documented in `docs/api.md`;
//! - the operator tools (`src/tools`) only read, and define no serde types.

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read source")
}

#[test]
fn unsafe_only_in_the_wal_and_always_justified() {
    let mut found = 0;
    for file in rust_files(&root().join("src")) {
        let text = read(&file);
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if !code.contains("unsafe ") && !code.contains("unsafe{") {
                continue;
            }
            found += 1;
            assert!(
                file.starts_with(root().join("src/wal")),
                "unsafe outside src/wal: {}:{}",
                file.display(),
                i + 1
            );
            let justified = lines[..i]
                .iter()
                .rev()
                .take(6)
                .any(|l| l.contains("// SAFETY:"));
            assert!(
                justified,
                "unsafe without a // SAFETY: comment: {}:{}",
                file.display(),
                i + 1
            );
        }
    }
    assert!(
        found > 0,
        "the WAL maps files, so it must contain unsafe; this check is broken"
    );
}

#[test]
fn the_core_is_pure() {
    let banned = [
        "std::time",
        "SystemTime",
        "Instant",
        "tokio",
        "parking_lot",
        "std::sync::Mutex",
        "std::sync::RwLock",
        "std::sync::atomic",
        "std::sync::mpsc",
        "Condvar",
        "std::fs",
        "std::net",
        "std::thread",
        "serde",
        "rand::",
        "hyper",
        "async ",
        ".await",
        "println!",
        "tracing",
    ];
    let files = rust_files(&root().join("src/core"));
    assert!(files.len() >= 5);
    for file in files {
        for (i, line) in read(&file).lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for word in banned {
                assert!(
                    !line.contains(word),
                    "core must not use {word}: {}:{}",
                    file.display(),
                    i + 1
                );
            }
        }
    }
}

#[test]
fn no_std_mutex_and_no_leftovers() {
    for dir in ["src", "tests", "benches", "examples"] {
        for file in rust_files(&root().join(dir)) {
            if file.ends_with("tidy.rs") {
                continue;
            }
            let text = read(&file);
            for word in [
                "std::sync::Mutex",
                "dbg!(",
                "todo!(",
                "unimplemented!(",
                "#[ignore",
                "FIXME",
            ] {
                assert!(!text.contains(word), "{word} in {}", file.display());
            }
        }
    }
}

#[test]
fn every_source_file_has_a_module_doc() {
    for file in rust_files(&root().join("src")) {
        let text = read(&file);
        let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        assert!(
            first.starts_with("//!"),
            "{} must start with a //! comment saying what it is for",
            file.display()
        );
    }
}

/// Routes are read from the `match` arms in `src/api/mod.rs`.
fn routes() -> Vec<String> {
    let text = read(&root().join("src/api/mod.rs"));
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("(&Method::") else {
            continue;
        };
        let Some((method, rest)) = rest.split_once(", [") else {
            continue;
        };
        let Some((segments, _)) = rest.split_once(']') else {
            continue;
        };
        let path: Vec<String> = segments
            .split(',')
            .map(|s| s.trim())
            .map(|s| {
                if s.starts_with('"') {
                    s.trim_matches('"').to_owned()
                } else {
                    "{id}".to_owned()
                }
            })
            .collect();
        out.push(format!("{method} /{}", path.join("/")));
    }
    out
}

#[test]
fn every_route_is_documented() {
    let docs = read(&root().join("docs/api.md"));
    let routes = routes();
    assert!(
        routes.len() >= 10,
        "found only {routes:?}; the route parser is broken"
    );
    for route in routes {
        assert!(
            docs.contains(&format!("`{route}`")),
            "docs/api.md does not document `{route}`"
        );
    }
}

#[test]
fn every_metric_is_documented() {
    let docs = read(&root().join("docs/api.md"));
    let source = read(&root().join("src/telemetry.rs"));
    let mut names: Vec<&str> = source
        .split('"')
        .filter(|s| s.starts_with("voucherd_") && !s.contains(' '))
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        assert!(
            docs.contains(&format!("`{name}`")),
            "docs/api.md does not document metric `{name}`"
        );
    }
}

#[test]
fn the_tools_only_read() {
    let banned = [
        "wal::open",
        "OpenOptions",
        "fs::write",
        "fs::rename",
        "fs::remove",
        "fs::create",
        "File::create",
        "set_len",
        "Serialize",
        "Deserialize",
    ];
    let files = rust_files(&root().join("src/tools"));
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        for (i, line) in read(&file).lines().enumerate() {
            for word in banned {
                assert!(
                    !line.contains(word),
                    "the tools are read-only and define no serde types, found {word}: {}:{}",
                    file.display(),
                    i + 1
                );
            }
        }
    }
}
