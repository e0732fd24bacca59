//! The dashboard under `/ui/`, in a real headless Chromium driven over
//! WebDriver (Debian's `chromium` and `chromium-driver`): a job followed on
//! the jobs page without a reload, its targets' digests as the registry
//! holds them, a cancel from the button, sign-in with a token, an axe-core
//! accessibility check of each page, and screenshots at desktop and phone
//! width (in `target/tmp/ui-screenshots/`).

mod support;

use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::engine::TestEngine;
use support::registry::Registry;
use support::{TestApp, TestEnv, app_job, unique};

/// axe-core's bundle, vendored (see tests/assets/axe-core/README.md).
const AXE: &str = include_str!("assets/axe-core/axe.min.js");

const DESKTOP: (u32, u32) = (1280, 900);
const PHONE: (u32, u32) = (390, 844);

/// A chromedriver of its own and a headless Chromium session on it.
struct Browser {
    client: Client,
    driver: tokio::process::Child,
}

impl Browser {
    async fn start() -> Browser {
        let port = support::binary::free_port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) runs");
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"]
            }
        });
        let mut builder = ClientBuilder::native();
        builder.capabilities(capabilities.as_object().unwrap().clone());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let client = loop {
            match builder.connect(&format!("http://127.0.0.1:{port}")).await {
                Ok(client) => break client,
                Err(error) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no browser session: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        Browser { client, driver }
    }

    async fn stop(mut self) {
        let _ = self.client.close().await;
        let _ = self.driver.kill().await;
    }

    /// Waits until `script` (a JS expression) is true.
    async fn wait_until(&self, script: &str, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let value = self
                .client
                .execute(&format!("return Boolean({script});"), vec![])
                .await
                .unwrap();
            if value == Value::Bool(true) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of the first element `css` selects. Read in the page, in
    /// one step: the script swaps the page's content as the job moves, so a
    /// found element can be gone by the time it is read.
    async fn text(&self, css: &str) -> String {
        let text = self
            .client
            .execute(
                "const found = document.querySelector(arguments[0]);
                 return found ? found.textContent.trim() : null;",
                vec![json!(css)],
            )
            .await
            .unwrap();
        text.as_str()
            .unwrap_or_else(|| panic!("{css} on the page"))
            .to_owned()
    }

    /// Clicks the first element `css` selects, finding it again if the
    /// page's content was swapped between finding and clicking it.
    async fn click(&self, css: &str) {
        for _ in 0..5 {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && element.click().await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not click {css}");
    }

    /// Runs axe-core on the page; answers its serious and critical
    /// violations of WCAG 2 A and AA.
    async fn serious_violations(&self) -> Vec<String> {
        self.client
            .execute(&format!("{AXE}\nreturn true;"), vec![])
            .await
            .expect("axe-core loads");
        let found = self
            .client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, {runOnly: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa']})
                    .then(result => done(result.violations
                        .filter(v => v.impact === 'serious' || v.impact === 'critical')
                        .map(v => v.id + ': ' + v.help + ' ' +
                             v.nodes.map(n => n.target.join(' ')).join(', '))));",
                vec![],
            )
            .await
            .expect("axe-core runs");
        serde_json::from_value(found).unwrap()
    }

    /// Screenshots at desktop and phone width, in the test output directory.
    async fn screenshots(&self, name: &str) {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        for (size, (width, height)) in [("desktop", DESKTOP), ("phone", PHONE)] {
            self.client.set_window_size(width, height).await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            let png = self.client.screenshot().await.unwrap();
            assert!(png.starts_with(b"\x89PNG"));
            std::fs::write(dir.join(format!("{name}-{size}.png")), png).unwrap();
        }
        self.client
            .set_window_size(DESKTOP.0, DESKTOP.1)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_job_is_followed_live_and_its_page_shows_the_registrys_digests() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let app = TestApp::spawn().await;
    let browser = Browser::start().await;
    let name = unique("ui");
    engine.import_image(&name, "b1", &[]).await;
    let repo = format!("{}/{}", env.registry, unique("ui"));

    // `/` leads to the jobs page; a mark on the window tells a reload apart.
    browser.client.goto(&app.url("/")).await.unwrap();
    assert_eq!(browser.text("h1").await, "Jobs");
    assert!(browser.client.current_url().await.unwrap().path() == "/ui/");
    browser
        .client
        .execute("window.stillHere = true; return true;", vec![])
        .await
        .unwrap();

    let id = app
        .submit(&app_job(&repo, &format!("{name}:b1"), &["v1", "v2"]))
        .await;
    browser
        .wait_until(
            &format!("document.querySelector('#job-{id}')"),
            "the new job's row",
        )
        .await;
    browser
        .wait_until(
            &format!("document.querySelector('#job-{id}[data-status=succeeded]')"),
            "the row to say succeeded",
        )
        .await;
    let still_here = browser
        .client
        .execute("return window.stillHere === true;", vec![])
        .await
        .unwrap();
    assert_eq!(still_here, Value::Bool(true), "the page was reloaded");
    assert!(
        browser
            .text(&format!("#job-{id}"))
            .await
            .contains("2 of 2 published")
    );
    assert_eq!(browser.serious_violations().await, Vec::<String>::new());
    browser.screenshots("jobs").await;

    // Search by repository or reference, and filter by status, by a failed
    // target and by repository prefix, through the form.
    let repo_path = repo.split_once('/').unwrap().1.to_owned();
    let (parent, _) = repo.rsplit_once('/').unwrap();
    let other = format!("{repo}-other");
    for (status, failed, prefix, search, shown) in [
        ("", false, "", repo_path.as_str(), true),
        ("", false, "", "app:v2", true),
        ("", false, "", "no-such-repository", false),
        ("failed", false, "", repo_path.as_str(), false),
        ("succeeded", false, "", repo_path.as_str(), true),
        ("", false, parent, "", true),
        ("succeeded", false, repo.as_str(), "app:v1", true),
        ("", false, other.as_str(), "", false),
        ("", true, parent, "", false),
    ] {
        browser
            .client
            .execute(
                "document.getElementById('status').value = arguments[0];
                 document.getElementById('failed').checked = arguments[1];
                 document.getElementById('repo').value = arguments[2];
                 document.getElementById('q').value = arguments[3];
                 return true;",
                vec![json!(status), json!(failed), json!(prefix), json!(search)],
            )
            .await
            .unwrap();
        browser.click(".filters button").await;
        browser
            .wait_until(
                // The page the form asked for, not the one before it.
                &format!(
                    "(() => {{ const asked = new URLSearchParams(location.search);
                       return asked.get('status') === {status:?} && asked.get('repo') === {prefix:?}
                         && asked.get('q') === {search:?}
                         && (asked.get('failed') === 'true') === {failed}
                         && Boolean(document.querySelector('#job-{id}')) === {shown}; }})()"
                ),
                &format!(
                    "status {status:?}, failed {failed}, prefix {prefix:?}, search {search:?}"
                ),
            )
            .await;
    }
    browser.client.goto(&app.url("/ui/")).await.unwrap();

    // The job's page: each target's digest is the registry's.
    browser.click(&format!("#job-{id} a")).await;
    browser
        .wait_until("document.querySelector('#job-status')", "the job page")
        .await;
    let registry = Registry::open(&env.registry);
    for (position, tag) in ["v1", "v2"].iter().enumerate() {
        let shown = browser
            .text(&format!("#target-{position} code.digest"))
            .await;
        let pushed = registry
            .pushed(&format!("{repo}/app:{tag}"))
            .await
            .expect("the tag in the registry");
        assert_eq!(shown, pushed.digest);
        assert!(
            browser
                .client
                .find(Locator::Css(&format!("#target-{position} button.copy")))
                .await
                .is_ok()
        );
    }
    assert_eq!(browser.text("#job-status").await, "succeeded");
    assert!(
        browser
            .client
            .find(Locator::Css("button[data-cancel]"))
            .await
            .is_err(),
        "a finished job has no cancel button"
    );
    assert_eq!(browser.serious_violations().await, Vec::<String>::new());
    browser.screenshots("job").await;

    browser.client.goto(&app.url("/ui/engines")).await.unwrap();
    assert_eq!(browser.text("h1").await, "Engines");
    assert!(browser.text("main").await.contains("ready"));
    assert_eq!(browser.serious_violations().await, Vec::<String>::new());
    browser.screenshots("engines").await;
    browser.stop().await;
}

#[tokio::test]
async fn a_queued_job_is_cancelled_from_its_page() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let hanging = support::HangingRegistry::start().await;
    // Event streams that end every 300 ms: the page must resume them.
    let app = TestApp::spawn_with(|settings| {
        settings.workers = 1;
        settings.stream_max_age = Duration::from_millis(300);
    })
    .await;
    let browser = Browser::start().await;
    let name = unique("ui-cancel");
    engine.import_image(&name, "b1", &[]).await;
    // The one lane pushes into a registry that never answers...
    let mut stuck = app_job(
        &format!("{}/{}", hanging.address, unique("stuck")),
        &format!("{name}:b1"),
        &["v1"],
    );
    stuck["force"] = json!(true);
    let stuck = app.submit(&stuck).await;
    app.wait_for(&stuck, Duration::from_secs(30), |job| {
        job["targets"][0]["status"] == "pushing"
    })
    .await;
    // ...so this one waits in the queue.
    let queued = app
        .submit(&app_job(
            &format!("{}/{}", env.registry, unique("queued")),
            &format!("{name}:b1"),
            &["v1"],
        ))
        .await;

    browser
        .client
        .goto(&app.url(&format!("/ui/jobs/{queued}")))
        .await
        .unwrap();
    assert_eq!(browser.text("#job-status").await, "queued");
    browser.click("button[data-cancel]").await;
    browser
        .wait_until(
            "document.querySelector('#job-status[data-status=cancelled]')",
            "the page to say cancelled",
        )
        .await;
    let job = app.job(&queued).await;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["targets"][0]["status"], "cancelled");

    // The running one shows its push under way; cancelled elsewhere, long
    // after its page's first stream ended, the page says so.
    browser
        .client
        .goto(&app.url(&format!("/ui/jobs/{stuck}")))
        .await
        .unwrap();
    assert_eq!(
        browser.text("#target-0 .status").await,
        "pushing",
        "the target's step"
    );
    assert_eq!(browser.serious_violations().await, Vec::<String>::new());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(app.cancel(&stuck).await.status().is_success());
    browser
        .wait_until(
            "document.querySelector('#job-status[data-status=cancelled]')",
            "the page to follow the job to its cancel",
        )
        .await;
    browser.stop().await;
}

#[tokio::test]
async fn with_tokens_the_pages_ask_for_one_and_show_what_it_may_see() {
    let engine = TestEngine::connect();
    let env = TestEnv::get();
    let app = TestApp::spawn_with(|settings| {
        settings.tokens.tokens = Some("ui-secret-token".into());
    })
    .await;
    let name = unique("ui-token");
    engine.import_image(&name, "b1", &[]).await;
    let response = app
        .client
        .post(app.url("/api/v1/jobs"))
        .bearer_auth("ui-secret-token")
        .json(&app_job(
            &format!("{}/{}", env.registry, unique("ui-token")),
            &format!("{name}:b1"),
            &["v1"],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Without a token the page shows nothing but the sign-in form.
    let page = app.client.get(app.url("/ui/")).send().await.unwrap();
    assert_eq!(page.status(), 401);
    assert!(!page.text().await.unwrap().contains(&id));

    let browser = Browser::start().await;
    browser.client.goto(&app.url("/ui/")).await.unwrap();
    assert_eq!(browser.text("h1").await, "Sign in");
    assert_eq!(browser.serious_violations().await, Vec::<String>::new());
    browser.screenshots("sign-in").await;
    let token = browser.client.find(Locator::Id("token")).await.unwrap();
    token.send_keys("a-wrong-token").await.unwrap();
    browser.click("#sign-in button").await;
    browser
        .wait_until(
            "document.querySelector('#sign-in-error') && \
             document.querySelector('#sign-in-error').textContent.length > 0",
            "the refusal",
        )
        .await;

    let token = browser.client.find(Locator::Id("token")).await.unwrap();
    token.send_keys("ui-secret-token").await.unwrap();
    browser.click("#sign-in button").await;
    browser
        .wait_until(
            &format!("document.querySelector('#job-{id}')"),
            "the job, once signed in",
        )
        .await;
    // Links are followed with the token too.
    browser.click(&format!("#job-{id} a")).await;
    browser
        .wait_until("document.querySelector('#job-status')", "the job page")
        .await;
    assert!(browser.text("h1").await.contains(&id));
    browser.stop().await;
}
