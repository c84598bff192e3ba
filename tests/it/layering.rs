//! The layering ARCHITECTURE.md documents, checked against the code: every `crate::` path
//! in `src/` names a module of a lower layer than the file's own (or its own module).
//! The layers are read from the block marked `layers` in ARCHITECTURE.md, so the document
//! and this check cannot drift apart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layer index of each top-level module, bottom (0) up, from ARCHITECTURE.md.
fn documented_layers() -> BTreeMap<String, usize> {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .expect("ARCHITECTURE.md");
    let block = doc
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("ARCHITECTURE.md has a ```layers block");
    // Written top down (as the layers stack); each line: modules separated by `,` or `|`,
    // then two spaces and what the layer is for.
    let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut layers = BTreeMap::new();
    for (i, line) in lines.iter().rev().enumerate() {
        let names = line.split("  ").next().unwrap_or_default();
        for name in names.split([',', '|']) {
            let name = name.trim().trim_end_matches('/');
            if !name.is_empty() {
                assert!(
                    layers.insert(name.to_string(), i).is_none(),
                    "{name} is listed twice in the layers block"
                );
            }
        }
    }
    layers
}

/// The top-level module a source file belongs to (`src/chain/raft.rs` -> `chain`).
fn module_of(file: &Path, src: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src/");
    let first = rel.components().next().expect("a path");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src/") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every (line number, module) a file's code names through `crate::module`, comments and
/// the file's `#[cfg(test)]` modules left out (a test may use anything).
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim_start() == "#[cfg(test)]" {
            break;
        }
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.push((n + 1, name));
            }
        }
        // `use crate::{a, b::c}`: every name the braces open with.
        if let Some(open) = code.find("crate::{") {
            let inner = &code[open + "crate::{".len()..];
            for part in inner.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.push((n + 1, name));
                }
            }
        }
    }
    found
}

/// Every import against the documented order, as `file:line: a -> b`.
fn violations(src: &Path, layers: &BTreeMap<String, usize>) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let modules: std::collections::BTreeSet<String> =
        files.iter().map(|f| module_of(f, src)).collect();
    let mut bad = Vec::new();
    for file in files {
        let module = module_of(&file, src);
        if module == "lib" {
            continue;
        }
        let Some(&own) = layers.get(&module) else {
            bad.push(format!(
                "{}: module {module} is in no layer of ARCHITECTURE.md",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (line, target) in crate_paths(&text) {
            if target == module {
                continue;
            }
            match layers.get(&target) {
                Some(&layer) if layer < own => {}
                // Items of the crate root (`crate::now_ms`) are below every layer.
                None if !modules.contains(&target) => {}
                _ => bad.push(format!("{}:{line}: {module} -> {target}", file.display())),
            }
        }
    }
    bad
}

#[test]
fn imports_follow_the_documented_layers() {
    let layers = documented_layers();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src, &layers);
    assert!(
        bad.is_empty(),
        "imports against the layers of ARCHITECTURE.md (a module may use only the layers \
         below its own):\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_finds_an_upward_import() {
    let layers = documented_layers();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path();
    let (low, high) = {
        let mut by_layer: Vec<(&String, &usize)> = layers.iter().collect();
        by_layer.sort_by_key(|(_, l)| **l);
        (
            by_layer[0].0.clone(),
            by_layer[by_layer.len() - 1].0.clone(),
        )
    };
    std::fs::write(
        src.join(format!("{low}.rs")),
        format!("use crate::{high}::Thing;\n"),
    )
    .unwrap();
    std::fs::write(
        src.join(format!("{high}.rs")),
        format!("use crate::{low}::Thing;\n"),
    )
    .unwrap();
    let bad = violations(src, &layers);
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].ends_with(&format!("{low} -> {high}")), "{bad:?}");
}
