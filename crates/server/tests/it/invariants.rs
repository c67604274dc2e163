//! The architecture's invariants a search of the source tree can check (ARCHITECTURE.md,
//! "Invariants"). Each walks every `.rs` file of the workspace's crates and names the files
//! and lines that break it.
//!
//! * Only `crates/aws` names the AWS SDK (`aws_sdk_*`); `crates/testkit`, the test-only
//!   crate that plays AWS and inspects moto, is the one other place allowed.
//! * Only the store (`crates/server/src/store.rs` and `store/`) uses `sqlx`: nothing else
//!   sees the database's types or SQL (the backup goes through the store).
//! * `crates/aws` never turns a missing id in an AWS answer into an empty one
//!   (`…_id().unwrap_or_default()`): a resource without its id is skipped or an error.
//! * No `unwrap()` outside tests: in every crate's `src/`, before its `#[cfg(test)]` module.

use std::path::{Path, PathBuf};

/// Files of `crates/flotilla/tests` that still inspect moto with the SDK directly instead of
/// through `flotilla_testkit::inspect`. The list may only shrink: a file that no longer
/// names the SDK must be taken off it, and no file may be added.
const SDK_IN_END_TO_END_TESTS: [&str; 8] = [
    "crates/flotilla/tests/it/backup.rs",
    "crates/flotilla/tests/it/client.rs",
    "crates/flotilla/tests/it/dockercloud_cli.rs",
    "crates/flotilla/tests/it/engine.rs",
    "crates/flotilla/tests/it/lifecycle.rs",
    "crates/flotilla/tests/it/ops.rs",
    "crates/flotilla/tests/it/server_crash.rs",
    "crates/flotilla/tests/it/tls.rs",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root")
}

/// This file names what it looks for; it is not searched.
const THIS_FILE: &str = "crates/server/tests/it/invariants.rs";

/// Every `.rs` file under `crates/` but this one, as (path relative to the workspace,
/// text), sorted.
fn sources() -> Vec<(String, String)> {
    let root = workspace();
    let mut pending = vec![root.join("crates")];
    let mut files = Vec::new();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "target") {
                    pending.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path
                    .strip_prefix(&root)
                    .expect("inside the workspace")
                    .to_string_lossy()
                    .replace('\\', "/");
                if relative != THIS_FILE {
                    let text = std::fs::read_to_string(&path).expect("UTF-8 source");
                    files.push((relative, text));
                }
            }
        }
    }
    files.sort();
    assert!(files.len() > 50, "found only {} source files", files.len());
    files
}

/// `path:line: text` of every line of `text` containing `needle`.
fn lines_with(path: &str, text: &str, needle: &str) -> Vec<String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.contains(needle))
        .map(|(number, line)| format!("{path}:{}: {}", number + 1, line.trim()))
        .collect()
}

/// The part of a file that is not its test module (tests sit at the end, after
/// `#[cfg(test)]`, by the workspace's convention).
fn before_tests(text: &str) -> &str {
    text.find("#[cfg(test)]").map_or(text, |at| &text[..at])
}

#[test]
fn only_the_aws_crate_and_the_testkit_name_the_aws_sdk() {
    let mut offending = Vec::new();
    let mut named = Vec::new();
    for (path, text) in sources() {
        if path.starts_with("crates/aws/") || path.starts_with("crates/testkit/") {
            continue;
        }
        let lines = lines_with(&path, &text, "aws_sdk_");
        if lines.is_empty() {
            continue;
        }
        named.push(path.clone());
        if !SDK_IN_END_TO_END_TESTS.contains(&path.as_str()) {
            offending.extend(lines);
        }
    }
    assert!(
        offending.is_empty(),
        "the AWS SDK named outside crates/aws:\n{}",
        offending.join("\n")
    );
    let moved: Vec<&str> = SDK_IN_END_TO_END_TESTS
        .iter()
        .copied()
        .filter(|listed| !named.iter().any(|n| n == listed))
        .collect();
    assert!(
        moved.is_empty(),
        "no longer naming the SDK, take them off SDK_IN_END_TO_END_TESTS: {moved:?}"
    );
}

#[test]
fn only_the_store_uses_sqlx() {
    let offending: Vec<String> = sources()
        .into_iter()
        .filter(|(path, _)| {
            path != "crates/server/src/store.rs" && !path.starts_with("crates/server/src/store/")
        })
        .flat_map(|(path, text)| lines_with(&path, &text, "sqlx"))
        .collect();
    assert!(
        offending.is_empty(),
        "sqlx used outside the store:\n{}",
        offending.join("\n")
    );
}

/// The method chain that ends just before `end` in `text`: back to the start of its
/// statement, field, argument or binding at the same nesting depth.
fn chain_before(text: &str, end: usize) -> &str {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut start = end;
    while start > 0 {
        let c = bytes[start - 1];
        match c {
            b')' | b']' => depth += 1,
            b'(' | b'[' if depth == 0 => break,
            b'(' | b'[' => depth -= 1,
            b';' | b'{' | b'}' | b',' | b'=' if depth == 0 => break,
            b':' if depth == 0 && bytes.get(start) == Some(&b' ') => break,
            _ => {}
        }
        start -= 1;
    }
    &text[start..end]
}

#[test]
fn the_aws_crate_never_defaults_a_missing_id() {
    let mut offending = Vec::new();
    for (path, text) in sources() {
        if !path.starts_with("crates/aws/src/") {
            continue;
        }
        let code = before_tests(&text);
        for (at, _) in code.match_indices(".unwrap_or_default()") {
            let chain = chain_before(code, at);
            if chain.contains("_id()") {
                let line = code[..at].lines().count();
                offending.push(format!("{path}:{line}: {}", chain.trim()));
            }
        }
    }
    assert!(
        offending.is_empty(),
        "an id AWS returned defaulted to \"\":\n{}",
        offending.join("\n")
    );
}

#[test]
fn no_unwrap_outside_tests() {
    let offending: Vec<String> = sources()
        .into_iter()
        .filter(|(path, _)| path.contains("/src/"))
        .flat_map(|(path, text)| lines_with(&path, before_tests(&text), ".unwrap()"))
        .collect();
    assert!(
        offending.is_empty(),
        "unwrap() outside tests:\n{}",
        offending.join("\n")
    );
}

#[test]
fn the_id_check_sees_through_chains_and_stops_at_fields() {
    let text = "let id = output\n    .subnet()\n    .and_then(|s| s.subnet_id())\n    .unwrap_or_default();";
    let at = text.find(".unwrap_or_default()").expect("call");
    assert!(chain_before(text, at).contains("subnet_id()"));
    let text =
        "Found { id: s.subnet_id()?.to_owned(), zone: s.availability_zone().unwrap_or_default() }";
    let at = text.find(".unwrap_or_default()").expect("call");
    assert_eq!(chain_before(text, at), " s.availability_zone()");
}
