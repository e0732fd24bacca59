//! A fault-injecting HTTP proxy in front of a real registry: answers a share
//! of requests with 503, 500 or 429, resets connections mid-upload, and adds
//! latency, or sends publishd (known by its User-Agent) to another host;
//! everything else goes through untouched (the Host header too, so the
//! registry's upload URLs point back at the proxy).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinHandle;

/// What the proxy does to requests.
#[derive(Debug, Clone, Copy)]
pub enum Faults {
    /// Each request fails with probability `rate`, evenly spread over 503,
    /// 500, 429 and a reset; the others wait `latency` first.
    Random {
        rate: f64,
        seed: u64,
        latency: Duration,
    },
    /// Every manifest upload is answered with this status.
    ManifestPut(u16),
    /// Manifest HEAD requests (digest read-backs) report another digest.
    WrongDigest,
    /// Manifest HEAD requests (digest read-backs) wait this long first.
    SlowReadBack(Duration),
    /// The first this many manifest uploads are denied (403 `DENIED`), the
    /// others pass: one push fails for good, the next ones succeed.
    DenyFirstManifestPuts(usize),
    /// Cross-repository mounts are refused the way a registry that does not
    /// mount refuses them: the `mount` and `from` parameters are dropped,
    /// so the registry answers 202 with an upload instead of 201.
    RefuseMounts,
    /// publishd's manifest reads that carry credentials are redirected
    /// (307) to the same path on `to`.
    RedirectManifestReads { to: SocketAddr },
    /// The uploads publishd starts are told to go on at `to`: the
    /// registry's `Location`, made absolute on that other host.
    UploadsElsewhere { to: SocketAddr },
    /// publishd's challenges name a token server (`realm`) on `to`.
    RealmElsewhere { to: SocketAddr },
    /// Manifests with zstd-compressed layers are refused as invalid, as
    /// registries that do not know zstd refuse them.
    RefuseZstd,
    /// The first manifest publishd puts finds its layers gone: the proxy
    /// deletes them from the repository (as garbage collection would)
    /// just before it forwards the manifest, which the registry refuses.
    LayersGoneOnce,
}

enum Fault {
    Status(StatusCode),
    Denied,
    Reset,
    Delay(Duration),
    WrongDigest,
    RefuseMount,
    Redirect(String),
    MoveUpload(SocketAddr),
    MoveRealm(SocketAddr),
    RefuseZstd,
    DeleteLayers,
}

/// The request came from publishd itself, not from an engine's push.
fn from_publishd(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(hyper::header::USER_AGENT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|agent| agent.starts_with("publishd/"))
}

/// What `Faults::WrongDigest` reports.
pub const WRONG_DIGEST: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

pub struct FaultProxy {
    pub address: SocketAddr,
    injected: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    pub async fn start(upstream: &str, faults: Faults) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let injected = Arc::new(AtomicUsize::new(0));
        let state = Arc::new(State {
            upstream: upstream.to_owned(),
            faults,
            rng: std::sync::Mutex::new(match faults {
                Faults::Random { seed, .. } => fastrand::Rng::with_seed(seed),
                Faults::ManifestPut(_)
                | Faults::DenyFirstManifestPuts(_)
                | Faults::WrongDigest
                | Faults::SlowReadBack(_)
                | Faults::RefuseMounts
                | Faults::RedirectManifestReads { .. }
                | Faults::UploadsElsewhere { .. }
                | Faults::RealmElsewhere { .. }
                | Faults::RefuseZstd
                | Faults::LayersGoneOnce => fastrand::Rng::with_seed(0),
            }),
            injected: injected.clone(),
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        });
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = state.clone();
                        async move { state.handle(request).await }
                    });
                    // A connection the proxy resets on purpose ends in an error.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        FaultProxy {
            address,
            injected,
            task,
        }
    }

    /// Faults injected so far.
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    upstream: String,
    faults: Faults,
    rng: std::sync::Mutex<fastrand::Rng>,
    injected: Arc<AtomicUsize>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl State {
    fn decide(&self, request: &Request<Incoming>) -> Option<Fault> {
        match self.faults {
            Faults::ManifestPut(status) => (request.method() == hyper::Method::PUT
                && request.uri().path().contains("/manifests/"))
            .then(|| Fault::Status(StatusCode::from_u16(status).unwrap())),
            Faults::DenyFirstManifestPuts(count) => (request.method() == hyper::Method::PUT
                && request.uri().path().contains("/manifests/")
                && self.injected.load(Ordering::Relaxed) < count)
                .then_some(Fault::Denied),
            Faults::WrongDigest => (request.method() == hyper::Method::HEAD
                && request.uri().path().contains("/manifests/"))
            .then_some(Fault::WrongDigest),
            Faults::SlowReadBack(delay) => (request.method() == hyper::Method::HEAD
                && request.uri().path().contains("/manifests/"))
            .then_some(Fault::Delay(delay)),
            Faults::RefuseMounts => (request.method() == hyper::Method::POST
                && request
                    .uri()
                    .query()
                    .is_some_and(|query| query.contains("mount=")))
            .then_some(Fault::RefuseMount),
            Faults::RedirectManifestReads { to } => (from_publishd(request)
                && request.uri().path().contains("/manifests/")
                && request.headers().contains_key(hyper::header::AUTHORIZATION))
            .then(|| Fault::Redirect(format!("http://{to}{}", request.uri()))),
            Faults::UploadsElsewhere { to } => (from_publishd(request)
                && request.method() == hyper::Method::POST
                && request.uri().path().ends_with("/blobs/uploads/"))
            .then_some(Fault::MoveUpload(to)),
            Faults::RealmElsewhere { to } => from_publishd(request).then_some(Fault::MoveRealm(to)),
            Faults::RefuseZstd => (request.method() == hyper::Method::PUT
                && request.uri().path().contains("/manifests/"))
            .then_some(Fault::RefuseZstd),
            Faults::LayersGoneOnce => (from_publishd(request)
                && request.method() == hyper::Method::PUT
                && request.uri().path().contains("/manifests/")
                && self
                    .injected
                    .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok())
            .then_some(Fault::DeleteLayers),
            Faults::Random { rate, latency, .. } => {
                let mut rng = self.rng.lock().unwrap();
                if rng.f64() >= rate {
                    return (!latency.is_zero()).then_some(Fault::Delay(latency));
                }
                Some(match rng.u8(0..4) {
                    0 => Fault::Status(StatusCode::SERVICE_UNAVAILABLE),
                    1 => Fault::Status(StatusCode::INTERNAL_SERVER_ERROR),
                    2 => Fault::Status(StatusCode::TOO_MANY_REQUESTS),
                    _ => Fault::Reset,
                })
            }
        }
    }

    async fn handle(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        match self.decide(&request) {
            Some(Fault::Status(status)) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                let body = if request.method() == hyper::Method::HEAD {
                    Bytes::new()
                } else {
                    Bytes::from(format!(
                        r#"{{"errors":[{{"code":"UNAVAILABLE","message":"injected {status}"}}]}}"#
                    ))
                };
                return Ok(json_answer(status, body));
            }
            Some(Fault::Denied) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                let body = r#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#;
                return Ok(Response::builder()
                    .status(StatusCode::FORBIDDEN)
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap());
            }
            Some(Fault::Reset) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                // Take a little of the upload, then drop the connection.
                let mut body = request.into_body();
                let _ = body.frame().await;
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "injected reset",
                ));
            }
            Some(Fault::Delay(latency)) => tokio::time::sleep(latency).await,
            Some(Fault::RefuseMount) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                let (mut parts, body) = request.into_parts();
                parts.uri = parts.uri.path().parse().unwrap();
                return self.forward(Request::from_parts(parts, body)).await;
            }
            Some(Fault::Redirect(location)) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                return Ok(Response::builder()
                    .status(StatusCode::TEMPORARY_REDIRECT)
                    .header("location", location)
                    .body(Full::new(Bytes::new()))
                    .unwrap());
            }
            Some(Fault::MoveUpload(to)) => {
                // The path and query of the registry's Location, on `to`.
                return self
                    .forward_rewriting(request, "location", |location| {
                        let location = location.parse::<hyper::Uri>().ok()?;
                        Some(format!("http://{to}{}", location.path_and_query()?))
                    })
                    .await;
            }
            Some(Fault::MoveRealm(to)) => {
                // `realm="http://HOST:PORT/...` with `to` as HOST:PORT.
                return self
                    .forward_rewriting(request, "www-authenticate", |challenge| {
                        let start = challenge.find("realm=\"http://")? + "realm=\"http://".len();
                        let end = start + challenge[start..].find('/')?;
                        Some(format!("{}{to}{}", &challenge[..start], &challenge[end..]))
                    })
                    .await;
            }
            Some(Fault::RefuseZstd) => {
                let (parts, body) = request.into_parts();
                let body = collected(body).await?;
                if names_zstd_layer(&body) {
                    self.injected.fetch_add(1, Ordering::Relaxed);
                    let refusal = r#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid","detail":"unsupported layer media type application/vnd.oci.image.layer.v1.tar+zstd"}]}"#;
                    return Ok(json_answer(StatusCode::BAD_REQUEST, Bytes::from(refusal)));
                }
                return self.send_upstream(parts, body).await;
            }
            Some(Fault::DeleteLayers) => {
                let (parts, body) = request.into_parts();
                let body = collected(body).await?;
                let manifest: serde_json::Value =
                    serde_json::from_slice(&body).map_err(std::io::Error::other)?;
                let path = parts.uri.path();
                let repository = &path["/v2/".len()..path.find("/manifests/").unwrap()];
                for layer in manifest["layers"].as_array().into_iter().flatten() {
                    let digest = layer["digest"].as_str().unwrap();
                    let delete = Request::delete(format!(
                        "http://{}/v2/{repository}/blobs/{digest}",
                        self.upstream
                    ))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                    let answer = self
                        .client
                        .request(delete)
                        .await
                        .map_err(std::io::Error::other)?;
                    assert_eq!(answer.status(), StatusCode::ACCEPTED, "deleting {digest}");
                }
                return self.send_upstream(parts, body).await;
            }
            Some(Fault::WrongDigest) => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                let mut response = self.forward(request).await?;
                response
                    .headers_mut()
                    .insert("docker-content-digest", WRONG_DIGEST.parse().unwrap());
                return Ok(response);
            }
            None => {}
        }
        self.forward(request).await
    }

    /// Forwards `request`, and rewrites the answer's `header` where
    /// `rewrite` makes something of it (counted as a fault injected).
    async fn forward_rewriting(
        &self,
        request: Request<Incoming>,
        header: &'static str,
        rewrite: impl Fn(&str) -> Option<String>,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let mut response = self.forward(request).await?;
        let rewritten = response
            .headers()
            .get(header)
            .and_then(|value| value.to_str().ok())
            .and_then(rewrite);
        if let Some(rewritten) = rewritten {
            self.injected.fetch_add(1, Ordering::Relaxed);
            response
                .headers_mut()
                .insert(header, rewritten.parse().unwrap());
        }
        Ok(response)
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let (parts, body) = request.into_parts();
        let body = collected(body).await?;
        self.send_upstream(parts, body).await
    }

    async fn send_upstream(
        &self,
        parts: hyper::http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut upstream = Request::builder()
            .method(parts.method)
            .uri(format!("http://{}{path}", self.upstream));
        for (name, value) in &parts.headers {
            upstream = upstream.header(name, value);
        }
        let upstream = upstream
            .body(Full::new(body))
            .map_err(std::io::Error::other)?;
        let response = self
            .client
            .request(upstream)
            .await
            .map_err(std::io::Error::other)?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok(Response::from_parts(parts, Full::new(body)))
    }
}

/// Whether a manifest names a zstd-compressed layer.
fn names_zstd_layer(manifest: &[u8]) -> bool {
    manifest.windows(9).any(|window| window == b"tar+zstd\"")
}

/// A request's whole body.
async fn collected(body: Incoming) -> Result<Bytes, std::io::Error> {
    Ok(body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes())
}

/// A registry's JSON answer of `status`.
fn json_answer(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap()
}
