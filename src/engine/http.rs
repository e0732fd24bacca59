//! A bare Engine API client for the two things bollard gets wrong here:
//! - it sends `X-Registry-Auth` in standard base64, which the engine decodes
//!   as URL-safe: a password whose encoding holds `+` or `/` arrives empty and
//!   the push fails as unauthorized;
//! - it prefixes every path with its own API version (1.47), which Debian's
//!   dockerd 20.10 (API 1.41) refuses, so even its version negotiation fails.
//!   `/version` without a prefix answers on every engine.

use std::path::PathBuf;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream, Full};
use hyper::{Method, Request, Response, body::Incoming};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use hyperlocal::UnixConnector;
use serde_json::Value;

use super::EngineError;

#[derive(Clone)]
pub(super) enum EngineHttp {
    Unix {
        client: Client<UnixConnector, Full<Bytes>>,
        socket: PathBuf,
    },
    Tcp {
        client: Client<HttpConnector, Full<Bytes>>,
        authority: String,
    },
}

impl EngineHttp {
    pub(super) fn unix(socket: PathBuf) -> EngineHttp {
        let client = Client::builder(TokioExecutor::new()).build(UnixConnector);
        EngineHttp::Unix { client, socket }
    }

    pub(super) fn tcp(authority: String) -> EngineHttp {
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        EngineHttp::Tcp { client, authority }
    }

    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, String)],
    ) -> Result<Response<Incoming>, EngineError> {
        let uri: hyper::Uri = match self {
            EngineHttp::Unix { socket, .. } => hyperlocal::Uri::new(socket, path_and_query).into(),
            EngineHttp::Tcp { authority, .. } => format!("http://{authority}{path_and_query}")
                .parse()
                .map_err(|error| EngineError::Protocol(format!("bad request uri: {error}")))?,
        };
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|error| EngineError::Protocol(error.to_string()))?;
        let response = match self {
            EngineHttp::Unix { client, .. } => client.request(request).await,
            EngineHttp::Tcp { client, .. } => client.request(request).await,
        };
        response.map_err(|error| EngineError::Unreachable(error.to_string()))
    }

    /// The engine's highest API version, e.g. `1.41`.
    pub(super) async fn api_version(&self) -> Result<String, EngineError> {
        let response = self.send(Method::GET, "/version", &[]).await?;
        let body = read_json(response).await?;
        body.get("ApiVersion")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| EngineError::Protocol("/version has no ApiVersion".to_owned()))
    }

    /// Pushes one tag and drains the progress stream to its end: the engine
    /// answers 200 at once and reports errors as items inside the stream.
    pub(super) async fn push(
        &self,
        api_version: &str,
        repository: &str,
        tag: &str,
        registry_auth: String,
    ) -> Result<String, EngineError> {
        let path = format!("/v{api_version}/images/{repository}/push?tag={tag}");
        let response = self
            .send(Method::POST, &path, &[("X-Registry-Auth", registry_auth)])
            .await?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let message = read_json(response)
                .await
                .ok()
                .and_then(|body| {
                    body.get("message")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "no message".to_owned());
            return Err(EngineError::Api { status, message });
        }
        let mut lines = LineReader::default();
        let mut digest = None;
        let mut stream = BodyStream::new(response.into_body());
        while let Some(frame) = stream.next().await {
            let frame =
                frame.map_err(|error| EngineError::Push(format!("stream broke: {error}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for line in lines.push(&data) {
                let item: Value = serde_json::from_slice(&line).map_err(|error| {
                    EngineError::Protocol(format!("push stream item is not JSON: {error}"))
                })?;
                if let Some(message) = push_error(&item) {
                    return Err(EngineError::Push(message));
                }
                digest = push_digest(&item, tag).or(digest);
            }
        }
        digest.ok_or_else(|| {
            EngineError::Push("the push stream ended without reporting a digest".to_owned())
        })
    }
}

async fn read_json(response: Response<Incoming>) -> Result<Value, EngineError> {
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|error| EngineError::Unreachable(error.to_string()))?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|error| EngineError::Protocol(format!("answer is not JSON: {error}")))
}

fn push_error(item: &Value) -> Option<String> {
    let detail = item
        .get("errorDetail")
        .and_then(|d| d.get("message"))
        .and_then(Value::as_str);
    let error = item.get("error").and_then(Value::as_str);
    detail.or(error).map(str::to_owned)
}

/// The digest from the final items: `aux.Digest`, or the status line
/// `TAG: digest: sha256:... size: N` that every engine version prints.
fn push_digest(item: &Value, tag: &str) -> Option<String> {
    if let Some(digest) = item
        .get("aux")
        .and_then(|aux| aux.get("Digest"))
        .and_then(Value::as_str)
    {
        return Some(digest.to_owned());
    }
    let status = item.get("status").and_then(Value::as_str)?;
    let rest = status.strip_prefix(tag)?.strip_prefix(": digest: ")?;
    rest.split_whitespace()
        .next()
        .filter(|d| d.starts_with("sha256:"))
        .map(str::to_owned)
}

/// Splits a byte stream into lines, whatever the frame boundaries.
#[derive(Default)]
struct LineReader {
    pending: Vec<u8>,
}

impl LineReader {
    fn push(&mut self, data: &[u8]) -> Vec<Vec<u8>> {
        self.pending.extend_from_slice(data);
        let mut lines = Vec::new();
        while let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=end).collect();
            if line.iter().any(|b| !b.is_ascii_whitespace()) {
                lines.push(line);
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_survive_any_framing() {
        let mut reader = LineReader::default();
        assert!(reader.push(b"{\"a\":").is_empty());
        assert_eq!(
            reader.push(b"1}\r\n{\"b\":2}\n\n{"),
            vec![b"{\"a\":1}\r\n".to_vec(), b"{\"b\":2}\n".to_vec()]
        );
    }

    #[test]
    fn errors_and_digests_are_read_from_items() {
        let error = json!({"errorDetail": {"message": "denied"}, "error": "denied"});
        assert_eq!(push_error(&error).as_deref(), Some("denied"));
        assert_eq!(push_error(&json!({"status": "Pushed"})), None);
        let status = json!({"status": "v1: digest: sha256:abc size: 528"});
        assert_eq!(push_digest(&status, "v1").as_deref(), Some("sha256:abc"));
        assert_eq!(push_digest(&status, "v2"), None);
        let aux = json!({"aux": {"Tag": "v1", "Digest": "sha256:def", "Size": 528}});
        assert_eq!(push_digest(&aux, "v1").as_deref(), Some("sha256:def"));
    }
}
