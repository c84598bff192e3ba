//! The tests SECURITY.md and ARCHITECTURE.md name as the proof of each rule exist: every
//! backquoted test path (`it::MODULE::NAME`, `it::MODULE`, `it::MODULE::*`,
//! `PATH::tests::NAME`, a trailing `*` for a prefix) names a module and a test function that
//! are there, so a renamed or deleted test cannot leave a rule without its proof.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The first of `candidates` that exists.
fn first_file(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates.iter().find(|p| p.is_file()).cloned()
}

/// Whether `source` defines a function named `name` (or, for `prefix*`, one starting so).
fn defines(source: &str, name: &str) -> bool {
    match name.strip_suffix('*') {
        Some(prefix) => source.contains(&format!("fn {prefix}")),
        None => source.contains(&format!("fn {name}(")),
    }
}

/// The file holding test path `path`, and the test name (if the path names one).
fn locate(path: &str) -> Result<(PathBuf, Option<String>), String> {
    let parts: Vec<&str> = path.split("::").collect();
    if parts[0] == "it" {
        let module = parts.get(1).ok_or("no module")?;
        let dir = root().join("tests/it");
        let file = first_file(&[
            dir.join(format!("{module}.rs")),
            dir.join(module).join("mod.rs"),
        ])
        .ok_or_else(|| format!("no tests/it/{module}.rs"))?;
        let name = parts.get(2).filter(|n| **n != "*").map(|n| n.to_string());
        return Ok((file, name));
    }
    let at = parts
        .iter()
        .position(|p| *p == "tests")
        .ok_or("not a test path")?;
    let module = parts[..at].join("/");
    let src = root().join("src");
    let file = first_file(&[
        src.join(format!("{module}.rs")),
        src.join(&module).join("mod.rs"),
    ])
    .ok_or_else(|| format!("no src/{module}.rs"))?;
    Ok((file, parts.get(at + 1).map(|n| n.to_string())))
}

/// Every backquoted test path in `doc`.
fn test_paths(doc: &str) -> Vec<String> {
    doc.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("it::") || s.contains("::tests::") || s.ends_with("::tests"))
        .filter(|s| {
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_:*".contains(c))
        })
        .map(str::to_string)
        .collect()
}

fn check(doc: &Path) {
    let text = std::fs::read_to_string(doc).expect("the document");
    let paths = test_paths(&text);
    assert!(!paths.is_empty(), "{} names no test", doc.display());
    let mut missing = Vec::new();
    for path in &paths {
        match locate(path) {
            Err(why) => missing.push(format!("{path}: {why}")),
            Ok((file, name)) => {
                let source = std::fs::read_to_string(&file).expect("the test file");
                if let Some(name) = name
                    && !defines(&source, &name)
                {
                    missing.push(format!("{path}: no fn {name} in {}", file.display()));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} names tests that do not exist:\n{}",
        doc.display(),
        missing.join("\n")
    );
}

#[test]
fn every_test_security_md_names_exists() {
    check(&root().join("SECURITY.md"));
}

#[test]
fn every_test_architecture_md_names_exists() {
    check(&root().join("ARCHITECTURE.md"));
}
