//! A hostile registry: speaks enough of the distribution API for an engine's
//! push and publishd's own reads to reach it, and answers with bodies no
//! peer should hold: manifests of 1 GiB, generated lazily chunk by chunk
//! (never held here either), and error bodies of 10 MiB.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinHandle;

/// The size of every manifest the registry serves.
pub const HUGE_MANIFEST: u64 = 1 << 30;
/// The size of the message in every error body it sends.
pub const HUGE_ERROR: usize = 10 << 20;
/// What a manifest body is made of, one piece at a time.
const PIECE: usize = 64 << 10;
const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// How a manifest GET is answered: 200 and 1 GiB of body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestBody {
    /// With `Content-Length: 1073741824`.
    Sized,
    /// Chunked, with no length announced: a reader learns the size only by
    /// reading.
    Chunked,
}

/// How a manifest HEAD (a digest read-back) is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestHead {
    /// 200 with the digest the real registry behind holds for the tag (a
    /// reader that trusts the header never needs the body).
    UpstreamDigest,
    /// 200 without a `Docker-Content-Digest`: the digest is only to be had
    /// from the 1 GiB body.
    NoDigest,
}

/// What an error body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorBody {
    /// `{"errors":[{"code":"DENIED","message":"<10 MiB of text>"}]}`.
    Json,
    /// 10 MiB of plain text, not JSON at all.
    Text,
}

#[derive(Debug, Clone)]
pub enum Hostility {
    /// Everything goes through to the real registry at `upstream` (a push
    /// works), but manifest reads are poisoned: GET answers 200 and 1 GiB,
    /// HEAD answers as `head` says.
    PoisonedManifests {
        upstream: String,
        body: ManifestBody,
        head: ManifestHead,
    },
    /// The ping answers 200 and HEADs 404 (nothing is there yet); every
    /// other request (the uploads and the manifest PUT of a push, a
    /// manifest GET) is refused with 403 and a 10 MiB body.
    HugeErrors(ErrorBody),
}

/// What the registry has done so far.
#[derive(Debug, Default)]
pub struct Served {
    /// Manifest GETs answered with a huge body.
    pub manifest_gets: AtomicUsize,
    /// Bytes of manifest bodies handed to the server to send: an upper bound
    /// on what readers took (the kernel and hyper buffer some of it).
    pub manifest_bytes: AtomicU64,
    /// Each manifest body once its reader is done with it (hung up, or
    /// took it all): bytes handed out, and for how long.
    pub manifest_reads: Mutex<Vec<(u64, Duration)>>,
    /// Requests refused with a huge error body.
    pub huge_errors: AtomicUsize,
    /// `+SECONDS METHOD path -> status` of every request, for failure
    /// messages.
    pub log: Mutex<Vec<String>>,
}

pub struct HostileRegistry {
    pub address: SocketAddr,
    pub served: Arc<Served>,
    task: JoinHandle<()>,
}

type Answer = Response<BoxBody<Bytes, Infallible>>;

impl HostileRegistry {
    pub async fn start(hostility: Hostility) -> HostileRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let served = Arc::new(Served::default());
        let error_body = match hostility {
            Hostility::HugeErrors(kind) => huge_error(kind),
            Hostility::PoisonedManifests { .. } => Bytes::new(),
        };
        let state = Arc::new(State {
            started: Instant::now(),
            hostility,
            served: served.clone(),
            error_body,
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
                    // Readers that give up hang up mid-body; TLS probes are
                    // not HTTP: both end the connection in an error.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        HostileRegistry {
            address,
            served,
            task,
        }
    }

    pub fn manifest_gets(&self) -> usize {
        self.served.manifest_gets.load(Ordering::Relaxed)
    }

    pub fn manifest_bytes(&self) -> u64 {
        self.served.manifest_bytes.load(Ordering::Relaxed)
    }

    pub fn huge_errors(&self) -> usize {
        self.served.huge_errors.load(Ordering::Relaxed)
    }

    /// Bytes handed out and time taken of each finished manifest read.
    pub fn manifest_reads(&self) -> Vec<(u64, Duration)> {
        self.served.manifest_reads.lock().unwrap().clone()
    }

    pub fn log(&self) -> Vec<String> {
        self.served.log.lock().unwrap().clone()
    }
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An error body whose message (or whole text) is `HUGE_ERROR` bytes.
fn huge_error(kind: ErrorBody) -> Bytes {
    let sentence = "the hostile registry refuses this, at length. ";
    let text: String = sentence.repeat(HUGE_ERROR / sentence.len() + 1)[..HUGE_ERROR].to_owned();
    match kind {
        ErrorBody::Json => Bytes::from(format!(
            r#"{{"errors":[{{"code":"DENIED","message":"{text}"}}]}}"#
        )),
        ErrorBody::Text => Bytes::from(text),
    }
}

struct State {
    started: Instant,
    hostility: Hostility,
    served: Arc<Served>,
    error_body: Bytes,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl State {
    async fn handle(&self, request: Request<Incoming>) -> Result<Answer, std::io::Error> {
        let line = format!(
            "+{:.3}s {} {}",
            self.started.elapsed().as_secs_f64(),
            request.method(),
            request.uri().path()
        );
        let answer = self.answer(request).await;
        let status = match &answer {
            Ok(answer) => answer.status().to_string(),
            Err(error) => format!("error: {error}"),
        };
        self.served
            .log
            .lock()
            .unwrap()
            .push(format!("{line} -> {status}"));
        answer
    }

    async fn answer(&self, request: Request<Incoming>) -> Result<Answer, std::io::Error> {
        let path = request.uri().path().to_owned();
        let method = request.method().clone();
        let manifest = path.starts_with("/v2/") && path.contains("/manifests/");
        match &self.hostility {
            Hostility::PoisonedManifests {
                upstream,
                body,
                head,
            } => {
                if manifest && method == Method::GET {
                    return Ok(self.huge_manifest(*body));
                }
                if manifest && method == Method::HEAD {
                    let digest = match head {
                        ManifestHead::NoDigest => None,
                        ManifestHead::UpstreamDigest => {
                            let response = forward(&self.client, upstream, request).await?;
                            if response.status() != StatusCode::OK {
                                return Ok(response);
                            }
                            response.headers().get("docker-content-digest").cloned()
                        }
                    };
                    let mut answer = Response::builder()
                        .status(StatusCode::OK)
                        .header(CONTENT_TYPE, MANIFEST_TYPE);
                    if *body == ManifestBody::Sized {
                        answer = answer.header(CONTENT_LENGTH, HUGE_MANIFEST);
                    }
                    if let Some(digest) = digest {
                        answer = answer.header("docker-content-digest", digest);
                    }
                    return Ok(answer.body(empty()).unwrap());
                }
                forward(&self.client, upstream, request).await
            }
            Hostility::HugeErrors(kind) => {
                if method == Method::GET && (path == "/v2/" || path == "/v2") {
                    return Ok(Response::builder()
                        .status(StatusCode::OK)
                        .header(CONTENT_TYPE, "application/json")
                        .header("docker-distribution-api-version", "registry/2.0")
                        .body(full(Bytes::from_static(b"{}")))
                        .unwrap());
                }
                if method == Method::HEAD {
                    return Ok(Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(empty())
                        .unwrap());
                }
                // Take what was sent (a layer, a manifest): small here.
                let _ = request.into_body().collect().await;
                self.served.huge_errors.fetch_add(1, Ordering::Relaxed);
                let content_type = match kind {
                    ErrorBody::Json => "application/json",
                    ErrorBody::Text => "text/plain",
                };
                Ok(Response::builder()
                    .status(StatusCode::FORBIDDEN)
                    .header(CONTENT_TYPE, content_type)
                    .header("docker-distribution-api-version", "registry/2.0")
                    .body(full(self.error_body.clone()))
                    .unwrap())
            }
        }
    }

    fn huge_manifest(&self, kind: ManifestBody) -> Answer {
        self.served.manifest_gets.fetch_add(1, Ordering::Relaxed);
        let body = LazyManifest {
            remaining: HUGE_MANIFEST,
            sized: kind == ManifestBody::Sized,
            first: true,
            started: Instant::now(),
            served: self.served.clone(),
        };
        Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, MANIFEST_TYPE)
            .body(BoxBody::new(body))
            .unwrap()
    }
}

/// 1 GiB of manifest, made one 64 KiB piece at a time as the server asks
/// for it: a JSON opening, then a string that never ends.
struct LazyManifest {
    remaining: u64,
    sized: bool,
    first: bool,
    started: Instant,
    served: Arc<Served>,
}

impl Drop for LazyManifest {
    fn drop(&mut self) {
        let handed_out = HUGE_MANIFEST - self.remaining;
        self.served
            .manifest_reads
            .lock()
            .unwrap()
            .push((handed_out, self.started.elapsed()));
    }
}

/// The pieces every `LazyManifest` hands out (shared, not copied).
fn pieces() -> &'static (Bytes, Bytes) {
    static PIECES: std::sync::OnceLock<(Bytes, Bytes)> = std::sync::OnceLock::new();
    PIECES.get_or_init(|| {
        let opening = format!(
            r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","annotations":{{"padding":""#
        );
        let mut first = opening.into_bytes();
        first.resize(PIECE, b'a');
        (Bytes::from(first), Bytes::from(vec![b'a'; PIECE]))
    })
}

impl Body for LazyManifest {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let (first, rest) = pieces();
        let piece = if std::mem::take(&mut self.first) {
            first
        } else {
            rest
        };
        let length = piece.len().min(self.remaining as usize);
        self.remaining -= length as u64;
        self.served
            .manifest_bytes
            .fetch_add(length as u64, Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(piece.slice(..length)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.sized {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}

fn full(bytes: Bytes) -> BoxBody<Bytes, Infallible> {
    Full::new(bytes).boxed()
}

fn empty() -> BoxBody<Bytes, Infallible> {
    full(Bytes::new())
}

/// `request` as sent to the real registry at `upstream`, Host header and
/// all (its upload URLs then point back here), and its answer.
async fn forward(
    client: &Client<HttpConnector, Full<Bytes>>,
    upstream: &str,
    request: Request<Incoming>,
) -> Result<Answer, std::io::Error> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut upstream = Request::builder()
        .method(parts.method)
        .uri(format!("http://{upstream}{path}"));
    for (name, value) in &parts.headers {
        upstream = upstream.header(name, value);
    }
    let upstream = upstream
        .body(Full::new(body))
        .map_err(std::io::Error::other)?;
    let response = client
        .request(upstream)
        .await
        .map_err(std::io::Error::other)?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok(Response::from_parts(parts, full(body)))
}
