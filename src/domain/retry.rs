//! Which failures are worth another try, and how long to wait before it.

use std::time::Duration;

/// How a failed step is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Retrying cannot help: bad credentials, a missing image, an invalid name.
    Permanent,
    /// May pass on another try (5xx, 429, a reset, a timeout); costs an attempt.
    Transient,
    /// A dependency (the engine, the registry) cannot be reached at all: wait
    /// for it to come back without spending attempts, up to the outage limit.
    Outage,
}

/// Retry settings; the defaults are the documented ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Tries of one step before it fails, the first included.
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub multiplier: f64,
    pub max_backoff: Duration,
    /// How long a step waits out an unreachable dependency before failing.
    pub outage_limit: Duration,
    /// How long a step keeps retrying transient failures; `attempts` tries
    /// are made even if this has passed.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_secs(1),
            multiplier: 2.0,
            max_backoff: Duration::from_secs(60),
            outage_limit: Duration::from_secs(600),
            max_elapsed: Duration::from_secs(600),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first retry):
    /// exponential, capped, with "equal jitter" (between half and all of it)
    /// so that lanes failing together do not retry together. `jitter` is a
    /// random number in [0, 1).
    pub fn backoff(&self, retry: u32, jitter: f64) -> Duration {
        let exponent = retry.saturating_sub(1).min(63) as i32;
        let full = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        let capped = full.min(self.max_backoff.as_secs_f64());
        Duration::from_secs_f64(capped * (0.5 + 0.5 * jitter.clamp(0.0, 1.0)))
    }
}

/// Classifies an error message from the engine's push stream or a registry.
/// The engine passes registry errors through as text, so text is what there is.
pub fn classify_registry_message(message: &str) -> FailureKind {
    let message = message.to_lowercase();
    let permanent = [
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "denied",
        "403 forbidden",
        "name unknown",
        "manifest unknown",
        "invalid reference",
        "repository name must",
        "does not exist locally",
        "manifest invalid",
        "blob unknown to registry",
    ];
    let outage = [
        "connection refused",
        "no such host",
        "no route to host",
        "network is unreachable",
    ];
    if outage.iter().any(|word| message.contains(word)) {
        FailureKind::Outage
    } else if permanent.iter().any(|word| message.contains(word)) || refused_by_status(&message) {
        FailureKind::Permanent
    } else {
        // 5xx, 429 / TOOMANYREQUESTS, resets, EOFs, timeouts, TLS handshake
        // timeouts and anything unknown: worth another bounded try.
        FailureKind::Transient
    }
}

/// The engine reports a registry answer it could not read by its status
/// ("error parsing HTTP 403 response body"): a 4xx other than 408 and 429
/// is a refusal, whatever the body.
fn refused_by_status(message: &str) -> bool {
    message
        .split("http ")
        .skip(1)
        .filter_map(|rest| rest.get(..3)?.parse::<u16>().ok())
        .any(|status| (400..500).contains(&status) && status != 408 && status != 429)
}

/// Classifies an error the engine answered (`status` 200 for one reported
/// inside a streamed answer, such as a load's). A full disk is an outage to
/// wait out, not a reason to fail every queued target in seconds; an
/// unknown in-stream error may pass; a bad request, a missing image or a
/// conflict (a name a container uses) will not.
pub fn classify_engine_error(status: u16, message: &str) -> FailureKind {
    let lower = message.to_lowercase();
    if lower.contains("no space left on device") || lower.contains("disk quota exceeded") {
        return FailureKind::Outage;
    }
    match status {
        // 409: a name a container uses cannot be removed; it stays so.
        400 | 404 | 406 | 409 => FailureKind::Permanent,
        429 => FailureKind::Transient,
        500.. => FailureKind::Transient,
        200 => {
            let permanent = [
                "no such image",
                "not found",
                "invalid reference",
                "invalid argument",
                "unknown instruction",
                "dockerfile parse error",
            ];
            if permanent.iter().any(|word| lower.contains(word)) {
                FailureKind::Permanent
            } else {
                FailureKind::Transient
            }
        }
        _ => FailureKind::Permanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(1, 0.999_999).as_millis(), 999);
        assert_eq!(policy.backoff(1, 0.0), Duration::from_millis(500));
        assert_eq!(policy.backoff(3, 0.999_999).as_secs(), 3);
        assert_eq!(policy.backoff(30, 0.999_999).as_secs(), 59);
        assert_eq!(policy.backoff(30, 0.0), Duration::from_secs(30));
        assert!(policy.backoff(200, 0.5) <= policy.max_backoff);
    }

    #[test]
    fn engine_errors_are_classified() {
        use FailureKind::*;
        let cases = [
            (
                200,
                "write /var/lib/docker/tmp/x: no space left on device",
                Outage,
            ),
            (
                500,
                "mkdir /var/lib/docker/image: no space left on device",
                Outage,
            ),
            (500, "containerd: connection reset", Transient),
            (200, "unexpected EOF", Transient),
            (
                200,
                "open /var/lib/docker/tmp/docker-import-1/x: no such file",
                Transient,
            ),
            (200, "No such image: sha256:abc", Permanent),
            (404, "No such image: app:v1", Permanent),
            (
                409,
                "conflict: unable to remove repository reference",
                Permanent,
            ),
            (400, "invalid reference format", Permanent),
        ];
        for (status, message, kind) in cases {
            assert_eq!(
                classify_engine_error(status, message),
                kind,
                "{status} {message}"
            );
        }
    }

    #[test]
    fn registry_messages_are_classified() {
        use FailureKind::*;
        let cases = [
            ("unauthorized: authentication required", Permanent),
            (
                "denied: requested access to the resource is denied",
                Permanent,
            ),
            ("no basic auth credentials", Permanent),
            ("received unexpected HTTP status: 403 Forbidden", Permanent),
            (
                "received unexpected HTTP status: 503 Service Unavailable",
                Transient,
            ),
            ("toomanyrequests: slow down", Transient),
            (
                "error parsing HTTP 429 response body: unexpected end of JSON input",
                Transient,
            ),
            (
                "Put \"http://127.0.0.1:5000/v2/x/blobs/uploads/1\": EOF",
                Transient,
            ),
            (
                "read tcp 127.0.0.1:1->127.0.0.1:2: read: connection reset by peer",
                Transient,
            ),
            ("net/http: TLS handshake timeout", Transient),
            (
                "error parsing HTTP 403 response body: invalid character 'h'",
                Permanent,
            ),
            (
                "error parsing HTTP 408 response body: unexpected end of JSON input",
                Transient,
            ),
            (
                "dial tcp 127.0.0.1:5000: connect: connection refused",
                Outage,
            ),
        ];
        for (message, kind) in cases {
            assert_eq!(classify_registry_message(message), kind, "{message}");
        }
    }
}
