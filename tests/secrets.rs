//! No credential is ever written to SQLite, a log line or an API answer:
//! per-job credentials and the server's docker config, checked by grepping
//! everything the real binary left behind.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use serde_json::{Value, json};
use support::binary::Server;
use support::engine::TestEngine;
use support::registry::Registry;
use support::{TestEnv, unique};

#[tokio::test]
async fn credentials_never_reach_the_database_the_logs_or_an_answer() {
    let env = TestEnv::get();
    let engine = TestEngine::connect();
    let dir = tempfile::tempdir().unwrap();
    let name = unique("secret");
    engine.import_image(&name, "b1", &[]).await;
    let user_pass = STANDARD.encode(format!("{}:{}", env.auth_user, env.auth_password));
    std::fs::create_dir_all(dir.path().join("docker-config")).unwrap();
    std::fs::write(
        dir.path().join("docker-config/config.json"),
        json!({"auths": {env.auth_registry.clone(): {"auth": user_pass}}}).to_string(),
    )
    .unwrap();

    // Debug logs: the most a log could ever hold.
    let server = Server::start(dir.path(), 0, &[("RUST_LOG", "debug")]).await;
    let mut answers = String::new();
    let repo = format!("{}/{}", env.auth_registry, unique("secret"));
    let bodies = [
        json!({"repo": repo, "images": [{"name": "per-job", "source": format!("{name}:b1")}],
               "tags": [{"strategy": "custom", "value": "v1"}],
               "registry_auth": {"username": env.auth_user, "password": env.auth_password}}),
        json!({"repo": repo, "images": [{"name": "config", "source": format!("{name}:b1")}],
               "tags": [{"strategy": "custom", "value": "v1"}]}),
    ];
    let mut ids = Vec::new();
    for body in &bodies {
        let response = server
            .client
            .post(format!("{}/api/v1/jobs", server.base))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let text = response.text().await.unwrap();
        ids.push(
            serde_json::from_str::<Value>(&text).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        answers.push_str(&text);
    }
    let registry = Registry::with_auth(&env.auth_registry, &env.auth_user, &env.auth_password);
    for id in &ids {
        let job = server.wait_finished(id).await;
        registry.assert_holds(&job).await;
        answers.push_str(&job.to_string());
    }
    let list = server
        .client
        .get(format!("{}/api/v1/jobs", server.base))
        .send()
        .await
        .unwrap();
    answers.push_str(&list.text().await.unwrap());
    server.terminate().await;

    let header = |auth: Value| URL_SAFE.encode(auth.to_string());
    let secrets = [
        env.auth_password.clone(),
        user_pass.clone(),
        header(json!({"username": env.auth_user, "password": env.auth_password})),
    ];
    let mut places = vec![("API answers".to_owned(), answers.into_bytes())];
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        if file.starts_with("publishd.db") || file.ends_with(".log") {
            places.push((file, std::fs::read(&path).unwrap()));
        }
    }
    assert!(
        places
            .iter()
            .any(|(file, bytes)| file.ends_with(".log") && !bytes.is_empty()),
        "no log was written"
    );
    for (place, bytes) in &places {
        let text = String::from_utf8_lossy(bytes);
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a credential is in {place}"
            );
        }
    }
}
