//! The HTTP edge under abuse: clients that stall mid-request, more
//! connections than the cap, a flood of readiness probes, and a database
//! whose file system fills up.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Connection;
use support::binary::Server;
use support::engine::TestEngine;
use support::{TestApp, TestEnv, app_job, unique};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Half a request line, and nothing more.
async fn stalled_client(address: &str) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(b"GET /healthz HT").await.unwrap();
    stream
}

/// Reads until the server closes the connection: when that was and what it
/// sent first.
async fn until_closed(mut stream: TcpStream) -> (Instant, String) {
    let mut received = Vec::new();
    // A reset is closed too.
    let _ = stream.read_to_end(&mut received).await;
    (
        Instant::now(),
        String::from_utf8_lossy(&received).into_owned(),
    )
}

/// `GET path` on a connection that stays open; answers the whole response.
async fn get_on(stream: &mut TcpStream, path: &str) -> String {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_response(stream).await
}

async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        let read = stream.read(&mut chunk).await.unwrap();
        assert!(read > 0, "closed before a whole response: {received:?}");
        received.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&received).into_owned();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|line| {
                    line.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|value| value.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if received.len() >= head_end + 4 + length {
                return text;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_clients_are_cut_off_and_hold_nothing_up() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let name = unique("stalled");
    engine.import_image(&name, "b1", &[]).await;
    let header_timeout = Duration::from_secs(2);
    let app = TestApp::spawn_with(|settings| settings.header_read_timeout = header_timeout).await;
    let address = app.address.to_string();

    let opened = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..100 {
        stalled.push(tokio::spawn(until_closed(stalled_client(&address).await)));
    }
    let repo = format!("{}/{}", env.registry, unique("stalled"));
    let id = app
        .submit(&app_job(&repo, &format!("{name}:b1"), &["v1", "v2"]))
        .await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/api/v1/jobs").await.status(), 200);
    let job = app.wait_finished(&id).await;
    assert_eq!(job["status"], "succeeded", "{job:#}");

    let mut latest = Duration::ZERO;
    for client in stalled {
        let (closed, sent) = tokio::time::timeout(header_timeout * 5, client)
            .await
            .expect("the server closes a stalled connection")
            .unwrap();
        let after = closed - opened;
        assert!(
            after >= header_timeout - Duration::from_millis(200),
            "{after:?}"
        );
        assert!(
            sent.is_empty() || sent.starts_with("HTTP/1.1 408"),
            "{sent:?}"
        );
        latest = latest.max(after);
    }
    eprintln!("100 stalled connections closed by {latest:?} (header timeout {header_timeout:?})");
    assert!(
        latest < header_timeout + Duration::from_secs(3),
        "{latest:?}"
    );
}

#[tokio::test]
async fn sigterm_with_stalled_clients_exits_within_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let grace = Duration::from_secs(3);
    let server = Server::start(
        dir.path(),
        0,
        &[
            ("PUBLISHD_SHUTDOWN_GRACE", "3"),
            // Longer than the test: only the shutdown can end them.
            ("PUBLISHD_HEADER_READ_TIMEOUT", "600"),
        ],
    )
    .await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut stalled = Vec::new();
    for _ in 0..100 {
        stalled.push(stalled_client(&address).await);
    }
    // Accepted in order: a request after them answered means they are all
    // being served.
    let health = server
        .client
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let signalled = Instant::now();
    tokio::time::timeout(grace + Duration::from_secs(15), server.terminate())
        .await
        .expect("publishd exits on SIGTERM despite stalled clients");
    let took = signalled.elapsed();
    eprintln!("exited {took:?} after SIGTERM with 100 stalled connections (grace {grace:?})");
    assert!(took < grace + Duration::from_secs(2), "{took:?}");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_under_way_at_shutdown_is_answered() {
    let app =
        TestApp::spawn_with(|settings| settings.shutdown_grace = Duration::from_secs(10)).await;
    // A locked database makes /readyz wait two seconds for it: a request
    // that is still under way when the shutdown begins.
    let mut other = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        app.dir.join("publishd.db").display()
    ))
    .await
    .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    let address = app.address;
    let probe = tokio::spawn(app.client.get(app.url("/readyz")).send());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(address).await.is_err(),
        "no new connections once stopping"
    );

    let answer = probe.await.unwrap().expect("answered, not cut off");
    assert_eq!(answer.status(), 503);
    let report: Value = answer.json().await.unwrap();
    assert_ne!(report["database"], "ok", "{report}");
    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    tokio::time::timeout(Duration::from_secs(15), stopped)
        .await
        .expect("stops once the request is answered")
        .unwrap();
}

#[tokio::test]
async fn connections_past_the_cap_wait_to_be_served() {
    let app = TestApp::spawn_with(|settings| {
        settings.max_connections = 8;
        settings.header_read_timeout = Duration::from_secs(600);
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(app.address).await.unwrap();
        let answer = get_on(&mut stream, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Kept alive, idle: it still counts.
        held.push(stream);
    }
    let mut ninth = TcpStream::connect(app.address).await.unwrap();
    ninth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(1), ninth.readable())
            .await
            .is_err(),
        "a ninth connection is not served while eight are open"
    );
    drop(held.pop());
    let answer = tokio::time::timeout(Duration::from_secs(5), read_response(&mut ninth))
        .await
        .expect("served once one of the eight closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// 2,000 requests at once need as many sockets on each side.
fn raise_open_files_limit(needed: libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read or write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < needed {
            limit.rlim_cur = needed.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(
        limit.rlim_cur >= needed,
        "open files limited to {}, this test needs {needed}",
        limit.rlim_cur
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_readiness_probes_writes_about_once_a_second() {
    raise_open_files_limit(8192);
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let name = unique("probes");
    engine.import_image(&name, "b1", &[]).await;
    let app = TestApp::spawn().await;
    // Every write of the probe, counted by the database itself.
    let mut observer = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        app.dir.join("publishd.db").display()
    ))
    .await
    .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE probe_writes (checked_at TEXT NOT NULL);
         CREATE TRIGGER count_probe_writes AFTER INSERT ON liveness
         BEGIN INSERT INTO probe_writes VALUES (new.checked_at); END;",
    )
    .execute(&mut observer)
    .await
    .unwrap();

    // No keep-alive: each probe is a connection of its own, as from many
    // probers, and none stays idle holding a place under the cap.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let started = Instant::now();
    let probes: Vec<_> = (0..2000)
        .map(|_| tokio::spawn(client.get(app.url("/readyz")).send()))
        .collect();
    let repo = format!("{}/{}", env.registry, unique("probes"));
    let submitted = Instant::now();
    let job = app
        .run_job(&app_job(&repo, &format!("{name}:b1"), &["v1"]))
        .await;
    let job_took = submitted.elapsed();
    assert_eq!(job["status"], "succeeded", "{job:#}");
    for probe in probes {
        let answer = probe.await.unwrap().expect("probe answered");
        assert_eq!(answer.status(), 200);
    }
    let flood = started.elapsed();

    let writes: i64 = sqlx::query_scalar("SELECT count(*) FROM probe_writes")
        .fetch_one(&mut observer)
        .await
        .unwrap();
    eprintln!(
        "2000 probes in {flood:?}: {writes} database writes; a job submitted meanwhile succeeded in {job_took:?}"
    );
    assert!(writes >= 1);
    assert!(
        writes as u64 <= flood.as_secs() + 2,
        "{writes} writes for 2000 probes in {flood:?}"
    );
    assert!(job_took < Duration::from_secs(30), "{job_took:?}");
}

/// A job of `targets` targets with long tags: it takes room in the database.
fn bulky_job(repo: &str, source: &str, targets: usize) -> Value {
    let padding = "x".repeat(100);
    let tags: Vec<String> = (0..targets).map(|i| format!("t{i:03}-{padding}")).collect();
    let tags: Vec<&str> = tags.iter().map(String::as_str).collect();
    app_job(repo, source, &tags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_and_loses_no_accepted_job() {
    let small_fs = std::env::var_os("PUBLISHD_TEST_SMALL_FS")
        .expect("PUBLISHD_TEST_SMALL_FS is not set: run the tests through scripts/test.sh");
    let dir = tempfile::tempdir_in(small_fs).unwrap();
    let app = TestApp::spawn_in(dir.path(), |_| {}).await;
    // Targets fail fast on a source that does not exist: this is about the
    // jobs being recorded, not published.
    let repo = format!("{}/{}", TestEnv::get().registry, unique("full-disk"));
    let source = format!("{}:none", unique("no-such-image"));

    // Fill the file system, then leave the database a little room to grow.
    let filler = dir.path().join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let block = vec![0xa5; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let length = file.metadata().unwrap().len();
        file.set_len(length.saturating_sub(1024 * 1024)).unwrap();
    }

    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..200 {
        let answer = app.post_job(&bulky_job(&repo, &source, 20)).await;
        match answer.status().as_u16() {
            202 => {
                let job: Value = answer.json().await.unwrap();
                accepted.push(job["id"].as_str().unwrap().to_owned());
            }
            503 => {
                assert_eq!(answer.headers()["retry-after"], "5");
                let body: Value = answer.json().await.unwrap();
                assert_eq!(body["error"]["code"], "unavailable", "{body}");
                let message = body["error"]["message"].as_str().unwrap();
                assert!(message.starts_with("the database is "), "{message}");
                assert!(!message.contains("code"), "no internals: {message}");
                refused += 1;
                if refused == 5 {
                    break;
                }
            }
            status => panic!("POST answered {status}: {}", answer.text().await.unwrap()),
        }
    }
    eprintln!(
        "full disk: {} jobs accepted, then {refused} POSTs answered 503",
        accepted.len()
    );
    // Read through another connection: only what was committed is there.
    for id in &accepted {
        let status = app.get(&format!("/api/v1/jobs/{id}")).await.status();
        assert_eq!(status, 200, "job {id} was acknowledged but not committed");
    }
    assert_eq!(refused, 5, "the disk never filled up");
    assert!(!accepted.is_empty());

    // Room again, and a restart: what was acknowledged was committed.
    std::fs::remove_file(&filler).unwrap();
    let after = app.submit(&bulky_job(&repo, &source, 1)).await;
    app.stop().await;
    accepted.push(after);
    let app = TestApp::spawn_in(dir.path(), |_| {}).await;
    for id in &accepted {
        let job = app.wait_finished(id).await;
        assert_eq!(job["status"], "failed", "{job:#}");
    }
    app.submit(&bulky_job(&repo, &source, 1)).await;
    app.stop().await;
}
