//! Unbounded peers: the real publishd binary publishing to a hostile
//! registry that answers 1 GiB manifests and 10 MiB error bodies. The
//! service's memory stays bounded (its peak RSS is measured), it stops
//! reading at its limits without taking the whole body, and what it keeps
//! of an error (database and log) stays a few KiB.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::binary::Server;
use support::engine::TestEngine;
use support::hostile_registry::{
    ErrorBody, HUGE_ERROR, HUGE_MANIFEST, HostileRegistry, Hostility, ManifestBody, ManifestHead,
};
use support::{TestEnv, app_job, unique};

/// Most the service's resident memory may ever reach (VmHWM). A publish to
/// a well-behaved registry peaks at about 50 MiB (debug build).
const PEAK_LIMIT: u64 = 100 << 20;
/// What the store keeps of an error (4 KiB), plus its "… (truncated, N
/// bytes in all)" suffix.
const STORED_ERROR_LIMIT: usize = 4096 + 64;
/// The database (and its write-ahead log) after one job.
const DATABASE_LIMIT: u64 = 2 << 20;
/// The service's log after one job: a few lines per step, each of them
/// holding at most a bounded error.
const LOG_LIMIT: u64 = 256 << 10;
/// publishd reads at most 4 MiB of a manifest. The registry hands out more
/// than the reader takes (hyper's and the kernel's buffers), but nowhere
/// near the 1 GiB it offers.
const MANIFEST_LIMIT: u64 = 4 << 20;
const HANDED_OUT_LIMIT: u64 = 32 << 20;
/// A manifest read that stops at its limit takes a moment; one that read
/// 1 GiB would not.
const READ_TIME_LIMIT: Duration = Duration::from_secs(5);
/// A job of one target takes a second or two here, whatever the registry
/// answers.
const JOB_TIME_LIMIT: Duration = Duration::from_secs(20);

/// Resident memory and CPU time of a process, from `/proc/PID`.
#[derive(Debug, Clone, Copy)]
struct Usage {
    /// VmRSS: now.
    rss: u64,
    /// VmHWM: the peak since the process started.
    peak: u64,
    /// User and system time so far.
    cpu: Duration,
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB, peak {:.1} MiB, CPU {:.2}s",
            mib(self.rss),
            mib(self.peak),
            self.cpu.as_secs_f64()
        )
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("publishd runs");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    // utime and stime, fields 14 and 15, in clock ticks (100 a second on
    // Linux); the command name before them may hold spaces.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("publishd runs");
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|ticks| ticks.parse().unwrap())
        .collect();
    Usage {
        rss: field("VmRSS:"),
        peak: field("VmHWM:"),
        cpu: Duration::from_millis((fields[0] + fields[1]) * 10),
    }
}

/// The pid of the publishd binary serving on `port` (the helper keeps its
/// child to itself): the process whose command line is
/// `publishd serve --listen 127.0.0.1:PORT …`.
fn publishd_pid(port: u16) -> u32 {
    let binary = env!("CARGO_BIN_EXE_publishd");
    let listen = format!("127.0.0.1:{port}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_ours = args.first() == Some(&binary.as_bytes())
            && args
                .windows(2)
                .any(|pair| pair[0] == b"--listen".as_slice() && pair[1] == listen.as_bytes());
        if is_ours {
            found.push(pid);
        }
    }
    assert_eq!(found.len(), 1, "publishd processes on {listen}: {found:?}");
    found[0]
}

/// The database file and its write-ahead log.
fn database_size(dir: &Path) -> u64 {
    ["publishd.db", "publishd.db-wal"]
        .iter()
        .filter_map(|name| std::fs::metadata(dir.join(name)).ok())
        .map(|meta| meta.len())
        .sum()
}

/// `text` cut to `limit` characters, saying how long it was.
fn cut(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        Some((end, _)) => format!("{}… ({} bytes)", &text[..end], text.len()),
        None => text.to_owned(),
    }
}

/// A log line without its terminal colours.
fn strip_colours(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// A job's JSON with long strings cut, for messages.
fn abridged(value: &Value) -> Value {
    match value {
        Value::String(text) => Value::String(cut(text, 300)),
        Value::Array(items) => Value::Array(items.iter().map(abridged).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(name, value)| (name.clone(), abridged(value)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The service's log, each line cut to 500 characters.
fn abridged_log(dir: &Path) -> String {
    let log = std::fs::read(dir.join("serve-0.log")).unwrap_or_default();
    String::from_utf8_lossy(&log)
        .lines()
        .map(|line| cut(&strip_colours(line), 500))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One job of one target run by the real binary.
struct Run {
    what: String,
    job: Value,
    took: Duration,
    before: Usage,
    after: Usage,
    database: u64,
    log: u64,
    dir: tempfile::TempDir,
}

impl Run {
    fn target(&self) -> &Value {
        &self.job["targets"][0]
    }

    /// The sizes of the stored error and of every try's error, each at
    /// most a few KiB.
    fn assert_errors_bounded(&self) -> Vec<usize> {
        let target = self.target();
        let mut sizes = Vec::new();
        if let Some(error) = target["error"].as_str() {
            sizes.push(error.len());
        }
        for attempt in target["attempt_errors"].as_array().unwrap() {
            sizes.push(attempt["error"].as_str().unwrap().len());
        }
        assert!(
            sizes.iter().all(|size| *size <= STORED_ERROR_LIMIT),
            "{}: stored errors of {sizes:?} bytes: {:#}",
            self.what,
            abridged(target)
        );
        sizes
    }

    /// Peak memory, database, log and time of the run.
    fn assert_bounded(&self) {
        let what = &self.what;
        eprintln!(
            "{what}: {} in {:.2}s (runs {}, attempts {}); publishd before the job: {}; after \
             it: {}; database {:.1} KiB, log {:.1} KiB",
            self.job["status"],
            self.took.as_secs_f64(),
            self.target()["runs"],
            self.target()["attempts"],
            self.before,
            self.after,
            self.database as f64 / 1024.0,
            self.log as f64 / 1024.0,
        );
        assert!(
            self.database < DATABASE_LIMIT,
            "{what}: the database grew to {} bytes",
            self.database
        );
        assert!(
            self.after.peak < PEAK_LIMIT,
            "{what}: publishd's peak RSS was {:.1} MiB (before the job: {}; after it: {})",
            mib(self.after.peak),
            self.before,
            self.after
        );
        assert!(
            self.log < LOG_LIMIT,
            "{what}: publishd logged {} bytes for one job:\n{}",
            self.log,
            abridged_log(self.dir.path())
        );
    }
}

/// Publishes a fresh image as `REGISTRY/hostile-…/app:v1` through the
/// real binary; `force: false`, so the up-to-date check reads the registry
/// before the push.
async fn publish_to(registry: &HostileRegistry, what: String) -> Run {
    let engine = TestEngine::connect();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("hostile-src");
    engine.import_image(&name, "b1", &[]).await;
    let server = Server::start(dir.path(), 0, &[]).await;
    let pid = publishd_pid(server.port);
    let repo = format!("{}/{}", registry.address, unique("hostile"));
    let mut body = app_job(&repo, &format!("{name}:b1"), &["v1"]);
    body["force"] = false.into();
    let before = usage(pid);
    let start = Instant::now();
    let id = server.submit(&body).await;
    let job = loop {
        let job = server.job(&id).await;
        if matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            break job;
        }
        if start.elapsed() > JOB_TIME_LIMIT {
            panic!(
                "{what}: the job did not finish in {JOB_TIME_LIMIT:?}; publishd before the job: \
                 {before}; now: {}\n{:#}\npublishd's log:\n{}\nthe registry's:\n{}",
                usage(pid),
                abridged(&job),
                abridged_log(dir.path()),
                registry.log().join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let took = start.elapsed();
    let after = usage(pid);
    server.terminate().await;
    assert!(
        engine.names_under(&repo).await.is_empty(),
        "{what}: the target's name was left on the engine"
    );
    Run {
        what,
        job,
        took,
        before,
        after,
        database: database_size(dir.path()),
        log: std::fs::metadata(dir.path().join("serve-0.log"))
            .map(|meta| meta.len())
            .unwrap_or(0),
        dir,
    }
}

/// Each 1 GiB manifest the registry began to serve: its reader hung up
/// early, and soon.
fn assert_manifest_reads_stopped(registry: &HostileRegistry, what: &str) {
    let reads = registry.manifest_reads();
    for (handed_out, took) in &reads {
        eprintln!(
            "{what}: a manifest read ended after {:.1} MiB handed out of {} MiB, in {:.3}s",
            mib(*handed_out),
            HUGE_MANIFEST >> 20,
            took.as_secs_f64()
        );
        assert!(
            *handed_out < HANDED_OUT_LIMIT,
            "{what}: {handed_out} bytes of a manifest were taken"
        );
        assert!(
            *took < READ_TIME_LIMIT,
            "{what}: a manifest read lasted {took:?}"
        );
    }
    assert_eq!(
        reads.len(),
        registry.manifest_gets(),
        "{what}: a manifest read never ended: {:?}",
        registry.log()
    );
}

async fn poisoned_manifests(body: ManifestBody, head: ManifestHead) -> (HostileRegistry, Run) {
    let registry = HostileRegistry::start(Hostility::PoisonedManifests {
        upstream: TestEnv::get().registry,
        body,
        head,
    })
    .await;
    let what = format!("{body:?} 1 GiB manifest, HEAD {head:?}");
    let run = publish_to(&registry, what).await;
    // The registry notices a reader that hung up when it next writes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    (registry, run)
}

/// The up-to-date check and the read-back both meet a 1 GiB manifest (the
/// HEAD gives no digest): each stops at 4 MiB, and the target fails with a
/// short error.
async fn a_1_gib_manifest_fails_the_read_back(body: ManifestBody) {
    let (registry, run) = poisoned_manifests(body, ManifestHead::NoDigest).await;
    let what = &run.what;
    let target = run.target();
    assert_eq!(target["status"], "failed", "{:#}", abridged(&run.job));
    let error = target["error"].as_str().unwrap();
    assert!(
        error.starts_with("verify:")
            && error.contains(&format!("larger than the {MANIFEST_LIMIT} bytes accepted")),
        "{error}"
    );
    assert_eq!(
        registry.manifest_gets(),
        2,
        "{what}: not the up-to-date check and the read-back: {:?}",
        registry.log()
    );
    let sizes = run.assert_errors_bounded();
    eprintln!("{what}: stored error sizes {sizes:?}: {error}");
    run.assert_bounded();
    assert_manifest_reads_stopped(&registry, what);
}

#[tokio::test]
async fn a_1_gib_manifest_announced_by_its_length_is_refused_unread() {
    a_1_gib_manifest_fails_the_read_back(ManifestBody::Sized).await;
}

#[tokio::test]
async fn a_1_gib_chunked_manifest_is_read_only_to_the_limit() {
    a_1_gib_manifest_fails_the_read_back(ManifestBody::Chunked).await;
}

/// A digest header spares the read-back the body: the up-to-date check
/// meets the 1 GiB manifest, gives up on it, and the push goes on; after the
/// push, the read of the pushed manifest for registry-side publishing (the
/// service's default tag method loads) meets it too, gives up on it as well,
/// and records no seed.
async fn a_1_gib_manifest_does_not_stop_the_push(body: ManifestBody) {
    let (registry, run) = poisoned_manifests(body, ManifestHead::UpstreamDigest).await;
    let what = &run.what;
    let target = run.target();
    assert_eq!(target["status"], "succeeded", "{:#}", abridged(&run.job));
    assert_eq!(target["up_to_date"], false, "{target:#}");
    assert_eq!(target["attempt_errors"], serde_json::json!([]));
    assert_eq!(
        registry.manifest_gets(),
        2,
        "{what}: not the up-to-date check and the seed's read: {:?}",
        registry.log()
    );
    run.assert_bounded();
    assert_manifest_reads_stopped(&registry, what);
}

#[tokio::test]
async fn a_1_gib_manifest_announced_by_its_length_does_not_stop_the_push() {
    a_1_gib_manifest_does_not_stop_the_push(ManifestBody::Sized).await;
}

#[tokio::test]
async fn a_1_gib_chunked_manifest_does_not_stop_the_push() {
    a_1_gib_manifest_does_not_stop_the_push(ManifestBody::Chunked).await;
}

/// Publishd's manifest GET and the engine's first upload are refused with
/// 10 MiB of body. The engine passes its registry's message on whole
/// (dockerd 20.10 sends it twice, in one line of its push stream); the
/// push fails at once ("denied" is not retried), and what publishd keeps
/// of the message is cut to a few KiB.
async fn huge_errors_are_kept_bounded(kind: ErrorBody) {
    let registry = HostileRegistry::start(Hostility::HugeErrors(kind)).await;
    let what = format!("403 with a 10 MiB {kind:?} body");
    let run = publish_to(&registry, what.clone()).await;
    let target = run.target();
    assert_eq!(target["status"], "failed", "{:#}", abridged(&run.job));
    assert!(
        registry.huge_errors() >= 2,
        "{what}: the up-to-date check and the push met no huge error: {:?}",
        registry.log()
    );
    let error = target["error"].as_str().unwrap();
    assert!(error.starts_with("push:"), "{}", abridged(target));
    let sizes = run.assert_errors_bounded();
    // publishd says how long the engine's line it cut was: proof that the
    // engine's report carried the registry's 10 MiB.
    let whole = error
        .split_once(" bytes in all)")
        .and_then(|(before, _)| before.rsplit_once('('))
        .and_then(|(_, length)| length.parse::<usize>().ok());
    eprintln!(
        "{what}: {} huge errors served; stored error sizes {sizes:?} of a message of {whole:?} \
         bytes: {}",
        registry.huge_errors(),
        &error[error.len().saturating_sub(120)..]
    );
    assert!(
        whole.is_some_and(|whole| whole >= HUGE_ERROR),
        "{what}: the engine did not pass the huge message on: {}",
        cut(error, 500)
    );
    run.assert_bounded();
}

#[tokio::test]
async fn a_10_mib_json_error_is_kept_bounded() {
    huge_errors_are_kept_bounded(ErrorBody::Json).await;
}

#[tokio::test]
async fn a_10_mib_text_error_is_kept_bounded() {
    huge_errors_are_kept_bounded(ErrorBody::Text).await;
}
