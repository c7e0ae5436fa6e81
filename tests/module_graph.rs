//! The crate's structure as a test: no import cycles between source files, and redis-rs types
//! named only inside `src/store/redis/`.
//!
//! A file "imports" another when a `use` / `pub use` path (`crate::…`, `super::…`, `self::…`,
//! or a child module declared in the same file) resolves to it. Test-only modules (`mod tests`,
//! the shuttle checks) are not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file: `src/store/redis/mod.rs` → `["store", "redis"]`.
fn module_of(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The code of a file without its test-only modules and comments.
fn code(text: &str) -> String {
    let cut = [
        "#[cfg(test)]\nmod tests",
        "#[cfg(all(test, not(shuttle)))]\nmod tests",
    ]
    .iter()
    .filter_map(|m| text.find(m))
    .min()
    .unwrap_or(text.len());
    text[..cut]
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `use` statement's paths, braces expanded one level.
fn use_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        let before = rest[..i].chars().last();
        let after = &rest[i + 4..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = after.find(';') else { break };
        let stmt: String = after[..end].split_whitespace().collect();
        let (base, items) = match stmt.find("::{") {
            Some(j) => (
                stmt[..j].to_string(),
                stmt[j + 3..].trim_end_matches('}').to_string(),
            ),
            None => (stmt.clone(), String::new()),
        };
        let base: Vec<String> = base.split("::").map(String::from).collect();
        out.push(base.clone());
        for item in items.split(',').filter(|s| !s.is_empty()) {
            let first = item
                .split("::")
                .next()
                .unwrap()
                .split(" as ")
                .next()
                .unwrap();
            let first = first.split("as").next().unwrap();
            if first != "self" && !first.starts_with('{') {
                let mut p = base.clone();
                p.push(first.to_string());
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn no_import_cycles_between_source_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let rel: BTreeMap<String, String> = files
        .iter()
        .map(|p| {
            let r = p
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (r, std::fs::read_to_string(p).unwrap())
        })
        .collect();
    let resolve = |segs: &[String]| -> Option<String> {
        for n in (1..=segs.len()).rev() {
            let base = segs[..n].join("/");
            for cand in [format!("{base}.rs"), format!("{base}/mod.rs")] {
                if rel.contains_key(&cand) {
                    return Some(cand);
                }
            }
        }
        None
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in &rel {
        let me = module_of(file);
        let body = code(text);
        let children: BTreeSet<String> = body
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                let l = l
                    .strip_prefix("pub(crate) ")
                    .or(l.strip_prefix("pub "))
                    .unwrap_or(l);
                l.strip_prefix("mod ")
                    .and_then(|m| m.strip_suffix(';'))
                    .map(String::from)
            })
            .collect();
        for path in use_paths(&body) {
            let segs: Vec<String> = match path[0].as_str() {
                "crate" => path[1..].to_vec(),
                "super" => me[..me.len().saturating_sub(1)]
                    .iter()
                    .cloned()
                    .chain(path[1..].iter().cloned())
                    .collect(),
                "self" => me
                    .iter()
                    .cloned()
                    .chain(path[1..].iter().cloned())
                    .collect(),
                first if children.contains(first) => {
                    me.iter().cloned().chain(path.iter().cloned()).collect()
                }
                _ => continue,
            };
            if let Some(target) = resolve(&segs) {
                if &target != file {
                    edges.entry(file.clone()).or_default().insert(target);
                }
            }
        }
    }
    // A cycle exists iff some file reaches itself.
    let mut cycles = Vec::new();
    for start in rel.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<String> = edges.get(start).into_iter().flatten().cloned().collect();
        while let Some(f) = stack.pop() {
            if &f == start {
                cycles.push(start.clone());
                break;
            }
            if seen.insert(f.clone()) {
                stack.extend(edges.get(&f).into_iter().flatten().cloned());
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "files on an import cycle: {cycles:?}\nedges: {edges:#?}"
    );
    // The graph is not empty: the parser found the imports.
    assert!(edges.values().map(BTreeSet::len).sum::<usize>() > 40);
}

#[test]
fn only_the_redis_backend_names_redis_rs_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    let mut offenders = Vec::new();
    for p in files {
        let r = p
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if r.starts_with("store/redis/") {
            continue;
        }
        let body = code(&std::fs::read_to_string(&p).unwrap());
        for (n, line) in body.lines().enumerate() {
            // The backend's own module path is not a redis-rs type.
            let l = line.replace("store::redis", "").replace("self::redis", "");
            if l.contains("redis::") || l.contains("use redis") {
                offenders.push(format!("{r}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "redis-rs named outside src/store/redis/: {offenders:#?}"
    );
}
