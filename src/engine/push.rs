//! The push: `POST /images/{name}/push?tag=T`. The engine answers 200 at once
//! and writes the push's progress as JSON lines; errors arrive inside that
//! stream, and a registry's error body is passed on whole, on one line, so a
//! hostile or broken registry can make a line of many megabytes. Read here
//! line by line, scanning only new bytes and keeping at most
//! `LINE_LIMIT` bytes of a line, where bollard's decoder re-reads and
//! re-parses its whole buffer on every chunk (quadratic time, unbounded
//! memory: measured 9 s and 99 MiB for one 10 MiB line).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, BodyStream};
use hyper::{Method, Request};
use serde_json::Value;

use super::transport::EngineTransport;
use super::{EngineError, PushProgress};
use crate::domain::text::cut;

/// Most bytes kept of one line of the push's answer; progress lines are a
/// few hundred bytes.
const LINE_LIMIT: usize = 64 << 10;
/// Most bytes of an error the engine reported kept in the message.
const MESSAGE_LIMIT: usize = 2048;

/// Pushes `repository:tag` with `auth` (the credentials' JSON) and drains
/// the progress stream to its end; answers the manifest digest, if the
/// engine reported one.
pub(super) async fn push(
    transport: &EngineTransport,
    repository: &str,
    tag: &str,
    auth: &[u8],
    progress: &(dyn Fn(PushProgress) + Send + Sync),
) -> Result<Option<String>, EngineError> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!(
            "{}/images/{repository}/push?tag={tag}",
            super::transport::BOLLARD_ADDRESS
        ))
        // URL-safe base64: the alphabet the engine decodes the header with.
        .header("X-Registry-Auth", URL_SAFE.encode(auth))
        .body(bollard::body_full(Bytes::new()))
        .map_err(|error| EngineError::Protocol(error.to_string()))?;
    let response = transport
        .send(request)
        .await
        .map_err(|error| EngineError::Unreachable(error.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        let body = http_body_util::Limited::new(response.into_body(), LINE_LIMIT)
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        let message = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|body| body["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(EngineError::Api {
            status: status.as_u16(),
            message: cut(&message, MESSAGE_LIMIT).into_owned(),
        });
    }
    let mut lines = LineReader::default();
    let mut layers = Layers::default();
    let mut digest = None;
    let mut stream = BodyStream::new(response.into_body());
    while let Some(frame) = stream.next().await {
        let frame =
            frame.map_err(|error| EngineError::Push(format!("push stream broke: {error}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for line in lines.push(&data) {
            if let Some(found) = read_line(&line, tag)? {
                digest = Some(found);
            }
            if layers.read(&line) {
                progress(layers.total());
            }
        }
    }
    Ok(digest)
}

/// What one line of the stream says: an error (the push failed), a digest,
/// or nothing of interest.
fn read_line(line: &Line, tag: &str) -> Result<Option<String>, EngineError> {
    if line.dropped > 0 {
        // Only an error makes a line this long; its start says what it is.
        let start = String::from_utf8_lossy(&line.kept);
        if start.contains("\"error") {
            return Err(EngineError::Push(format!(
                "{} ({} bytes in all)",
                cut(error_text(&start), MESSAGE_LIMIT),
                line.kept.len() + line.dropped
            )));
        }
        return Ok(None);
    }
    let Ok(item) = serde_json::from_slice::<Value>(&line.kept) else {
        return Err(EngineError::Protocol(format!(
            "push stream item is not JSON: {}",
            cut(&String::from_utf8_lossy(&line.kept), MESSAGE_LIMIT)
        )));
    };
    let error = item["errorDetail"]["message"]
        .as_str()
        .or(item["error"].as_str());
    if let Some(error) = error {
        return Err(EngineError::Push(cut(error, MESSAGE_LIMIT).into_owned()));
    }
    if let Some(digest) = item["aux"]["Digest"].as_str() {
        return Ok(Some(digest.to_owned()));
    }
    Ok(item["status"]
        .as_str()
        .and_then(|status| status_digest(status, tag)))
}

/// How far each layer's upload has come, by layer id, from the stream's
/// progress lines (`{"status":"Pushing","progressDetail":{"current":…,
/// "total":…},"id":…}`); a layer that is done or already there counts whole.
#[derive(Default)]
struct Layers {
    uploads: std::collections::HashMap<String, (u64, u64)>,
}

impl Layers {
    /// Takes in a line; answers whether the progress changed.
    fn read(&mut self, line: &Line) -> bool {
        if line.dropped > 0 {
            return false;
        }
        let Ok(item) = serde_json::from_slice::<Value>(&line.kept) else {
            return false;
        };
        let Some(id) = item["id"].as_str() else {
            return false;
        };
        let detail = &item["progressDetail"];
        let upload = self.uploads.entry(id.to_owned()).or_insert((0, 0));
        let before = *upload;
        match item["status"].as_str() {
            Some("Pushing") => {
                if let (Some(current), Some(total)) =
                    (detail["current"].as_u64(), detail["total"].as_u64())
                {
                    *upload = (current.min(total), total);
                }
            }
            Some("Pushed" | "Layer already exists" | "Mounted from") => upload.0 = upload.1,
            Some(status) if status.starts_with("Mounted from") => upload.0 = upload.1,
            _ => {}
        }
        *upload != before
    }

    fn total(&self) -> PushProgress {
        let (done, total) = self
            .uploads
            .values()
            .fold((0, 0), |(done, total), (d, t)| (done + d, total + t));
        PushProgress {
            bytes_done: done,
            bytes_total: total,
        }
    }
}

/// The message of a cut error line: from the first `"message":"` on, or
/// the line's start.
fn error_text(start: &str) -> &str {
    const KEY: &str = "\"message\":\"";
    start.find(KEY).map_or(start, |at| &start[at + KEY.len()..])
}

/// The digest in the status line `TAG: digest: sha256:... size: N` that
/// every engine version prints at the end of a push.
fn status_digest(status: &str, tag: &str) -> Option<String> {
    let rest = status.strip_prefix(tag)?.strip_prefix(": digest: ")?;
    rest.split_whitespace()
        .next()
        .filter(|digest| digest.starts_with("sha256:"))
        .map(str::to_owned)
}

/// One line of the stream: its first `LINE_LIMIT` bytes, and how many more
/// there were.
#[derive(Debug, Default, PartialEq, Eq)]
struct Line {
    kept: Vec<u8>,
    dropped: usize,
}

/// Splits a byte stream into lines, whatever the frame boundaries, looking
/// at each byte once.
#[derive(Default)]
struct LineReader {
    current: Line,
}

impl LineReader {
    fn push(&mut self, mut data: &[u8]) -> Vec<Line> {
        let mut lines = Vec::new();
        while !data.is_empty() {
            let end = data.iter().position(|&b| b == b'\n');
            let (part, rest) = match end {
                Some(end) => (&data[..end], &data[end + 1..]),
                None => (data, &data[data.len()..]),
            };
            let room = LINE_LIMIT.saturating_sub(self.current.kept.len());
            let taken = part.len().min(room);
            self.current.kept.extend_from_slice(&part[..taken]);
            self.current.dropped += part.len() - taken;
            if end.is_some() {
                let line = std::mem::take(&mut self.current);
                if line.dropped > 0 || line.kept.iter().any(|b| !b.is_ascii_whitespace()) {
                    lines.push(line);
                }
            }
            data = rest;
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_survive_any_framing() {
        let mut reader = LineReader::default();
        assert!(reader.push(b"{\"a\":").is_empty());
        let lines = reader.push(b"1}\r\n{\"b\":2}\n\n{");
        let kept: Vec<&[u8]> = lines.iter().map(|line| line.kept.as_slice()).collect();
        assert_eq!(kept, [b"{\"a\":1}\r".as_slice(), b"{\"b\":2}"]);
    }

    #[test]
    fn a_huge_line_is_kept_to_its_start_in_linear_time() {
        let mut reader = LineReader::default();
        let message = "x".repeat(10 << 20);
        let line = format!("{{\"errorDetail\":{{\"message\":\"denied: {message}\"}}}}\n");
        let started = std::time::Instant::now();
        let mut lines = Vec::new();
        for chunk in line.as_bytes().chunks(8192) {
            lines.extend(reader.push(chunk));
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].kept.len(), LINE_LIMIT);
        assert_eq!(lines[0].kept.len() + lines[0].dropped, line.len() - 1);
        let Err(EngineError::Push(error)) = read_line(&lines[0], "v1") else {
            panic!("an error");
        };
        assert!(error.starts_with("denied: xxx"), "{error}");
        assert!(error.len() < 4096, "{}", error.len());
        assert!(
            error.ends_with(&format!("({} bytes in all)", line.len() - 1)),
            "{error}"
        );
    }

    #[test]
    fn progress_adds_up_the_layers() {
        let line = |text: &str| Line {
            kept: text.as_bytes().to_vec(),
            dropped: 0,
        };
        let mut layers = Layers::default();
        assert!(layers.read(&line(
            r#"{"status":"Pushing","progressDetail":{"current":100,"total":400},"id":"a"}"#
        )));
        assert!(layers.read(&line(
            r#"{"status":"Pushing","progressDetail":{"current":50,"total":100},"id":"b"}"#
        )));
        assert_eq!(
            layers.total(),
            PushProgress {
                bytes_done: 150,
                bytes_total: 500
            }
        );
        assert!(layers.read(&line(r#"{"status":"Pushed","progressDetail":{},"id":"a"}"#)));
        assert_eq!(layers.total().bytes_done, 450);
        assert!(!layers.read(&line(
            r#"{"status":"Preparing","progressDetail":{},"id":"c"}"#
        )));
        assert!(!layers.read(&line(r#"{"status":"v1: digest: sha256:abc size: 1"}"#)));
    }

    #[test]
    fn errors_and_digests_are_read_from_items() {
        let line = |text: &str| Line {
            kept: text.as_bytes().to_vec(),
            dropped: 0,
        };
        let error = read_line(
            &line(r#"{"errorDetail":{"message":"denied"},"error":"denied"}"#),
            "v1",
        );
        assert!(matches!(error, Err(EngineError::Push(message)) if message == "denied"));
        assert_eq!(
            read_line(&line(r#"{"status":"Pushed"}"#), "v1").unwrap(),
            None
        );
        let status = line(r#"{"status":"v1: digest: sha256:abc size: 528"}"#);
        assert_eq!(
            read_line(&status, "v1").unwrap().as_deref(),
            Some("sha256:abc")
        );
        assert_eq!(read_line(&status, "v2").unwrap(), None);
        let aux = line(r#"{"aux":{"Tag":"v1","Digest":"sha256:def","Size":528}}"#);
        assert_eq!(
            read_line(&aux, "v1").unwrap().as_deref(),
            Some("sha256:def")
        );
    }
}
