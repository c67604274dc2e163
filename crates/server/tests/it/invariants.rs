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
//! * The server's modules import downward only: no import cycle among the modules of
//!   `crates/server/src` (a module is a file's stem, or the directory of its child modules;
//!   an import is any `crate::<module>` outside the file's test module, doc links included).

use std::collections::{BTreeMap, BTreeSet};
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

/// The modules `text` names as `crate::<module>` (the first segment after `crate::`).
fn crate_modules_named(text: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let preceded_by_identifier = text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if preceded_by_identifier {
            continue;
        }
        let rest = &text[at + "crate::".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end > 0 {
            named.insert(rest[..end].to_owned());
        }
    }
    named
}

/// The modules of `crates/server/src` and, for each, the other modules it names outside
/// its test module. `lib.rs` is the crate root, which wires every module, so it is left out.
fn server_module_graph() -> BTreeMap<String, BTreeSet<String>> {
    const SRC: &str = "crates/server/src/";
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources() {
        let Some(relative) = path.strip_prefix(SRC) else {
            continue;
        };
        let top = relative.split('/').next().unwrap_or(relative);
        let module = top.strip_suffix(".rs").unwrap_or(top);
        if module == "lib" || module == "main" {
            continue;
        }
        graph
            .entry(module.to_owned())
            .or_default()
            .extend(crate_modules_named(before_tests(&text)));
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for (module, imports) in &mut graph {
        imports.retain(|named| named != module && modules.contains(named));
    }
    graph
}

/// One cycle of `graph` as `a -> b -> … -> a`, if it has any.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<String> {
    fn visit<'a>(
        module: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<String> {
        if let Some(at) = path.iter().position(|m| *m == module) {
            let mut cycle = path[at..].to_vec();
            cycle.push(module);
            return Some(cycle.join(" -> "));
        }
        if done.contains(module) {
            return None;
        }
        path.push(module);
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(module);
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|module| visit(module, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_server_modules_import_downward_only() {
    let graph = server_module_graph();
    for module in ["app", "http", "reconcile", "store", "routes"] {
        assert!(graph.contains_key(module), "no module {module}: {graph:?}");
    }
    let cycle = find_cycle(&graph);
    assert!(
        cycle.is_none(),
        "an import cycle among the server's modules (each must import downward only; move \
         what both sides need to a module below them): {}",
        cycle.unwrap_or_default()
    );
}

#[test]
fn the_cycle_check_reads_paths_and_doc_links_and_finds_cycles() {
    let named = crate_modules_named(
        "use crate::app::{App, AppError};\n/// see [`crate::routes::Route`]\nlet x = my_crate::other::f(crate::tokens::batch_token);",
    );
    let named: Vec<&str> = named.iter().map(String::as_str).collect();
    assert_eq!(named, ["app", "routes", "tokens"]);
    let graph = |edges: &[(&str, &str)]| {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in edges {
            graph
                .entry((*from).to_owned())
                .or_default()
                .insert((*to).to_owned());
            graph.entry((*to).to_owned()).or_default();
        }
        graph
    };
    assert_eq!(
        find_cycle(&graph(&[
            ("http", "app"),
            ("app", "store"),
            ("http", "store")
        ])),
        None
    );
    assert_eq!(
        find_cycle(&graph(&[
            ("app", "reconcile"),
            ("reconcile", "agent_api"),
            ("agent_api", "app")
        ])),
        Some("agent_api -> app -> reconcile -> agent_api".to_owned())
    );
}
