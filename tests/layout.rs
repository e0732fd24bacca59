//! The layout the documentation describes, checked against the tree: every
//! path README.md, ARCHITECTURE.md, CONTRIBUTING.md and `docs/` name exists,
//! every link between them lands on a heading, and the invariants
//! ARCHITECTURE.md lists that can be read off the source hold. Reads files
//! only: it needs no engine, registry or database.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Where the paths the documents name start: such a path is taken from the
/// repository's root. A path ending in `.rs` that starts elsewhere
/// (`store/queue.rs`) is taken from `src/`, and a bare file name
/// (`server.rs`) must name a file somewhere under `src/`, `tests/` or
/// `testkit/`.
const TOP_LEVEL: [&str; 10] = [
    "src/",
    "tests/",
    "scripts/",
    "migrations/",
    "docs/",
    "assets/",
    "examples/",
    "openapi/",
    "testkit/",
    ".ci/",
];

/// A word holding one of these is a pattern or a placeholder, not a path.
const NOT_A_PATH: [char; 8] = ['*', '<', '>', '{', '}', '$', '[', ']'];

fn root() -> &'static Path {
    Path::new(ROOT)
}

/// The documents whose paths are checked, relative to the root.
fn documents() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = ["README.md", "ARCHITECTURE.md", "CONTRIBUTING.md"]
        .iter()
        .map(PathBuf::from)
        .collect();
    found.extend(
        files_under("docs")
            .into_iter()
            .filter(|path| path.extension().is_some_and(|ext| ext == "md")),
    );
    found
}

/// Every file under `dir` (relative to the root), relative to the root.
fn files_under(dir: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![root().join(dir)];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                found.push(path.strip_prefix(root()).unwrap().to_path_buf());
            }
        }
    }
    found.sort();
    found
}

fn read(path: &Path) -> String {
    fs::read_to_string(root().join(path))
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The words of `text` that name a file or directory of the tree, as
/// written.
fn named_paths(text: &str) -> BTreeSet<&str> {
    text.split(|c: char| c.is_whitespace() || "`\"'(),;|".contains(c))
        .map(|word| word.trim_end_matches(['.', ':', '!', '?']))
        .filter(|word| !word.contains(NOT_A_PATH))
        .filter(|word| {
            TOP_LEVEL.iter().any(|top| word.starts_with(top))
                || (word.ends_with(".rs") && !word.contains("://"))
        })
        .collect()
}

/// Whether the tree holds what `word` names (a link's `#heading` aside:
/// headings are checked with the links).
fn exists(word: &str, rust_file_names: &BTreeSet<String>) -> bool {
    let word = word.split_once('#').map_or(word, |(path, _)| path);
    if TOP_LEVEL.iter().any(|top| word.starts_with(top)) {
        root().join(word).exists()
    } else if word.contains('/') {
        root().join("src").join(word).exists()
    } else {
        rust_file_names.contains(word)
    }
}

fn rust_file_names() -> BTreeSet<String> {
    ["src", "tests", "testkit"]
        .iter()
        .flat_map(|dir| files_under(dir))
        .filter_map(|path| Some(path.file_name()?.to_str()?.to_owned()))
        .filter(|name| name.ends_with(".rs"))
        .collect()
}

/// The paths `text` names that the tree does not hold.
fn missing_paths<'t>(text: &'t str, rust_file_names: &BTreeSet<String>) -> Vec<&'t str> {
    named_paths(text)
        .into_iter()
        .filter(|word| !exists(word, rust_file_names))
        .collect()
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// made hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown document's headings (code blocks skipped;
/// a repeated heading gets `-1`, `-2` … as on GitHub).
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut in_code = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            let base = anchor(line.trim_start_matches('#'));
            let mut candidate = base.clone();
            let mut n = 0;
            while found.contains(&candidate) {
                n += 1;
                candidate = format!("{base}-{n}");
            }
            found.insert(candidate);
        }
    }
    found
}

/// The targets of a Markdown document's inline links, `[text](target)`.
fn link_targets(markdown: &str) -> Vec<&str> {
    markdown
        .match_indices("](")
        .filter_map(|(at, _)| {
            let rest = &markdown[at + 2..];
            Some(&rest[..rest.find(')')?])
        })
        .collect()
}

/// What is wrong with a link from `document` (relative to the root) to
/// `target`: a file that is not there, or a heading the file does not have.
fn broken_link(document: &Path, target: &str) -> Option<String> {
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    let (file, heading) = match target.split_once('#') {
        Some((file, heading)) => (file, Some(heading)),
        None => (target, None),
    };
    let linked = if file.is_empty() {
        document.to_path_buf()
    } else {
        document.parent().unwrap().join(file)
    };
    if !root().join(&linked).exists() {
        return Some(format!("{target}: no {}", linked.display()));
    }
    let heading = heading?;
    if !anchors(&read(&linked)).contains(heading) {
        return Some(format!(
            "{target}: {} has no heading #{heading}",
            linked.display()
        ));
    }
    None
}

#[test]
fn every_path_the_documents_name_exists() {
    let names = rust_file_names();
    let mut stale = Vec::new();
    for document in documents() {
        let text = read(&document);
        for word in missing_paths(&text, &names) {
            stale.push(format!("{}: {word}", document.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "paths named in the documents that the tree does not hold:\n{}",
        stale.join("\n")
    );
}

#[test]
fn every_link_between_the_documents_lands() {
    let mut broken = Vec::new();
    for document in documents() {
        let text = read(&document);
        for target in link_targets(&text) {
            if let Some(problem) = broken_link(&document, target) {
                broken.push(format!("{}: {problem}", document.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_check_finds_a_stale_path_in_each_form() {
    let names = rust_file_names();
    let text = "the seeds (`store/seeds.rs`, `src/store/seeds.rs`), `seeds.rs`, \
                [a script](scripts/no-such.sh) and `docs/no-such.md`; \
                but not `store/model.rs`, `src/store/model.rs`, `model.rs`, \
                `scripts/test.sh`'s phases, `docs/`, [a heading](docs/cli.md#exit-codes), \
                `HOST[:PORT]/*.crt` or \
                https://example.com/src/x.rs";
    assert_eq!(
        missing_paths(text, &names),
        [
            "docs/no-such.md",
            "scripts/no-such.sh",
            "seeds.rs",
            "src/store/seeds.rs",
            "store/seeds.rs",
        ]
    );
    let readme = Path::new("README.md");
    assert!(broken_link(readme, "docs/cli.md#exit-codes").is_none());
    assert!(broken_link(readme, "docs/cli.md#no-such-heading").is_some());
    assert!(broken_link(readme, "docs/no-such.md").is_some());
}

#[test]
fn a_grouped_import_names_each_module() {
    assert_eq!(modules_used("cli::Secret;"), ["cli"]);
    assert_eq!(
        modules_used("{cli::{Secret, ClientArgs}, client::Exit, config::X};"),
        ["cli", "client", "config"]
    );
}

#[test]
fn anchors_are_githubs() {
    assert_eq!(
        anchor(" Registry-side publishing (`--publish-via`, `publish_via`)"),
        "registry-side-publishing---publish-via-publish_via"
    );
    assert_eq!(
        anchors("# A\n```\n# not a heading\n```\n## A\n"),
        BTreeSet::from(["a".to_owned(), "a-1".to_owned()])
    );
}

/// What names I/O: the domain names none of it.
const IO: [&str; 13] = [
    "async ",
    ".await",
    "tokio",
    "sqlx",
    "reqwest",
    "hyper",
    "bollard",
    "axum",
    "std::fs",
    "std::net",
    "std::process",
    "std::io",
    "std::env",
];

/// What runs SQL: only the store names it.
const SQL: [&str; 9] = [
    "sqlx::query",
    "sqlx::raw_sql",
    "sqlx::migrate",
    "sqlx::Executor",
    "query_as",
    "query_scalar",
    "QueryBuilder",
    "SqlitePool",
    "PgPool",
];

/// The lines of a Rust file that are code, not comments, each with where
/// it is.
fn code_lines(path: &Path, text: &str) -> Vec<(String, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .map(|(n, line)| (format!("{}:{}", path.display(), n + 1), line.to_owned()))
        .collect()
}

/// The code lines of the Rust files under `dir`.
fn code_lines_under(dir: &str) -> Vec<(String, String)> {
    files_under(dir)
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "rs"))
        .flat_map(|path| code_lines(&path, &read(&path)))
        .collect()
}

/// The lines that mention any of `words`, as `where: line`.
fn mentioning(lines: Vec<(String, String)>, words: &[&str]) -> Vec<String> {
    lines
        .into_iter()
        .filter(|(_, line)| words.iter().any(|word| line.contains(word)))
        .map(|(at, line)| format!("{at}: {}", line.trim()))
        .collect()
}

#[test]
fn the_checks_find_io_and_sql_in_code_not_in_comments() {
    let text = "//! Talks to no database (sqlx is the store's).\n\
                use std::fs;\n\
                /// Reads `sqlx::query` results.\n\
                let rows = sqlx::query(\"SELECT 1\");\n\
                let spec = plan(input);\n";
    let lines = || code_lines(Path::new("src/x.rs"), text);
    assert_eq!(
        mentioning(lines(), &IO),
        [
            "src/x.rs:2: use std::fs;",
            "src/x.rs:4: let rows = sqlx::query(\"SELECT 1\");"
        ]
    );
    assert_eq!(
        mentioning(lines(), &SQL),
        ["src/x.rs:4: let rows = sqlx::query(\"SELECT 1\");"]
    );
}

#[test]
fn the_domain_does_no_io() {
    let found = mentioning(code_lines_under("src/domain"), &IO);
    assert!(found.is_empty(), "I/O in src/domain:\n{}", found.join("\n"));
}

#[test]
fn only_the_store_speaks_sql() {
    let found: Vec<String> = mentioning(code_lines_under("src"), &SQL)
        .into_iter()
        .filter(|at| !at.starts_with("src/store/"))
        .collect();
    assert!(
        found.is_empty(),
        "SQL outside src/store:\n{}",
        found.join("\n")
    );
}

/// The crate's top-level modules a path after `crate::` names: `cli` for
/// `cli::Secret`, `cli` and `client` for `{cli::Secret, client::Exit}`.
fn modules_used(path: &str) -> Vec<&str> {
    let ident = |s: &str| -> usize {
        s.find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(s.len())
    };
    let Some(group) = path.strip_prefix('{') else {
        return vec![&path[..ident(path)]];
    };
    let mut modules = Vec::new();
    let mut depth = 0;
    let mut start = Some(0);
    for (at, c) in group.char_indices() {
        if let Some(from) = start.take() {
            let item = group[from..].trim_start();
            modules.push(&item[..ident(item)]);
        }
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => start = Some(at + 1),
            _ => {}
        }
    }
    modules.retain(|module| !module.is_empty());
    modules
}

#[test]
fn the_client_imports_no_server_code() {
    let found: Vec<String> = code_lines_under("src/client")
        .into_iter()
        .filter(|(_, line)| {
            line.match_indices("crate::")
                .flat_map(|(at, _)| modules_used(&line[at + "crate::".len()..]))
                .any(|module| module != "cli" && module != "client")
        })
        .map(|(at, line)| format!("{at}: {}", line.trim()))
        .collect();
    assert!(
        found.is_empty(),
        "src/client uses server code:\n{}",
        found.join("\n")
    );
}
