//! Keeps the documentation true to the tree: docs/ARCHITECTURE.md's code
//! map names every source file that exists and none that does not, and the
//! golden-fixture scripts on disk are exactly the ones DEVELOPERS.md lists
//! (and `cargo xtask golden` runs only scripts that exist).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every file under `dir` (relative to it, `/`-separated) whose name ends
/// with `ext`.
fn files(dir: &Path, ext: &str) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, ext: &str, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, ext, out);
            } else if p.to_string_lossy().ends_with(ext) {
                let rel = p.strip_prefix(base).unwrap().to_string_lossy();
                out.insert(rel.replace('\\', "/"));
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, ext, &mut out);
    out
}

/// The words ending in `ext` inside backticks in `text` (`` `a/b.py DIR` ``
/// names `a/b.py`).
fn backticked(text: &str, ext: &str) -> BTreeSet<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .flat_map(str::split_whitespace)
        .filter(|w| w.ends_with(ext))
        .map(String::from)
        .collect()
}

/// The code map of docs/ARCHITECTURE.md: for each crate heading
/// (`**`crates/NAME`**` or `**`xtask`**`), the `.rs` files its paragraph
/// names, relative to that crate's `src/`.
fn code_map() -> Vec<(String, BTreeSet<String>)> {
    let doc = read("docs/ARCHITECTURE.md");
    let map = doc
        .split("## Code map")
        .nth(1)
        .expect("docs/ARCHITECTURE.md has a `## Code map` section");
    let map = map.split("\n## ").next().unwrap();
    let mut out = Vec::new();
    for part in map.split("**`").skip(1) {
        let Some((name, body)) = part.split_once("`**") else {
            continue;
        };
        if name.starts_with("crates/") || name == "xtask" {
            out.push((name.to_string(), backticked(body, ".rs")));
        }
    }
    out
}

#[test]
fn architecture_code_map_matches_the_source_tree() {
    let map = code_map();
    let mut problems = Vec::new();
    let mut crates: BTreeSet<String> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .flatten()
        .map(|e| format!("crates/{}", e.file_name().to_string_lossy()))
        .collect();
    crates.insert("xtask".into());
    let mapped: BTreeSet<String> = map.iter().map(|(c, _)| c.clone()).collect();
    for c in crates.difference(&mapped) {
        problems.push(format!("crate {c} has no paragraph in the code map"));
    }
    for (krate, named) in &map {
        let src = root().join(krate).join("src");
        let on_disk = files(&src, ".rs");
        for f in named.difference(&on_disk) {
            problems.push(format!(
                "{krate}: the code map names src/{f}, which does not exist"
            ));
        }
        for f in on_disk.difference(named) {
            problems.push(format!("{krate}: src/{f} is missing from the code map"));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/ARCHITECTURE.md drifted from the tree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn golden_script_list_matches_the_scripts_on_disk() {
    let mut on_disk = BTreeSet::new();
    for krate in std::fs::read_dir(root().join("crates")).unwrap().flatten() {
        for sub in ["tests/golden", "tests/fixtures"] {
            let dir = krate.path().join(sub);
            for f in files(&dir, ".py") {
                on_disk.insert(format!(
                    "crates/{}/{sub}/{f}",
                    krate.file_name().to_string_lossy()
                ));
            }
        }
    }
    for f in files(&root().join("assets"), ".py") {
        on_disk.insert(format!("assets/{f}"));
    }
    let listed: BTreeSet<String> = backticked(&read("DEVELOPERS.md"), ".py")
        .into_iter()
        .filter(|p| !p.contains("/benches/"))
        .collect();
    let mut problems = Vec::new();
    for f in on_disk.difference(&listed) {
        problems.push(format!("{f} is not listed in DEVELOPERS.md"));
    }
    for f in listed.difference(&on_disk) {
        problems.push(format!("DEVELOPERS.md lists {f}, which does not exist"));
    }
    // `cargo xtask golden` runs its list from the repository root.
    let xtask = read("xtask/src/main.rs");
    let list = xtask
        .split("GOLDEN_SCRIPTS")
        .nth(1)
        .and_then(|s| s.split_once("= [")?.1.split_once("];"))
        .expect("xtask/src/main.rs declares GOLDEN_SCRIPTS = [...];")
        .0;
    let run: BTreeSet<String> = list
        .split('"')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect();
    assert!(!run.is_empty(), "no scripts found in GOLDEN_SCRIPTS");
    for f in run.difference(&on_disk) {
        problems.push(format!("cargo xtask golden runs {f}, which does not exist"));
    }
    assert!(
        problems.is_empty(),
        "golden scripts drifted:\n  {}",
        problems.join("\n  ")
    );
}
