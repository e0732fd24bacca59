//! A host that should hear nothing from publishd: on its own loopback
//! address (127.0.0.2, so another host than the registries' 127.0.0.1), it
//! records every request it gets, with the credentials it carried, and
//! answers 404.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, Method, StatusCode, Uri};
use tokio::task::JoinHandle;

/// One request the bystander got.
#[derive(Debug, Clone)]
pub struct Heard {
    pub method: Method,
    pub uri: Uri,
    pub authorization: Option<String>,
}

pub struct Bystander {
    pub address: SocketAddr,
    heard: Arc<Mutex<Vec<Heard>>>,
    task: JoinHandle<()>,
}

impl Bystander {
    pub async fn start() -> Bystander {
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let heard: Arc<Mutex<Vec<Heard>>> = Arc::default();
        let record = heard.clone();
        let router =
            axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
                let record = record.clone();
                async move {
                    let authorization = headers
                        .get(axum::http::header::AUTHORIZATION)
                        .map(|value| value.to_str().unwrap_or("(not text)").to_owned());
                    record.lock().unwrap().push(Heard {
                        method,
                        uri,
                        authorization,
                    });
                    StatusCode::NOT_FOUND
                }
            });
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Bystander {
            address,
            heard,
            task,
        }
    }

    /// Every request so far.
    pub fn heard(&self) -> Vec<Heard> {
        self.heard.lock().unwrap().clone()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        self.task.abort();
    }
}
