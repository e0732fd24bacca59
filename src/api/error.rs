//! The one error type of the HTTP layer, and the one JSON shape every error
//! answer has: `{"error":{"code","message","field"}}`. Internals never leak:
//! a 500 says only "internal error" and carries the detail to the log
//! middleware in a response extension. A database that is busy or cannot
//! write (full, failing) is the service's trouble for now, not a bug: 503
//! with `Retry-After`, whatever the route.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::spec::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    MalformedJson(String),
    #[error("{message}")]
    Invalid {
        field: Option<String>,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    IdempotencyConflict(String),
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A body that is not `application/json`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A `Host` this publishd does not answer to (DNS rebinding).
    #[error("{0}")]
    MisdirectedRequest(String),
    #[error("a valid bearer token is required (Authorization: Bearer TOKEN)")]
    Unauthorized,
    #[error("{pending} targets are queued, the limit is {limit}: retry later")]
    Overloaded { pending: i64, limit: usize },
    #[error("{who} has {pending} targets queued, its limit is {limit}: retry later")]
    SubmitterOverloaded {
        who: String,
        pending: i64,
        limit: usize,
    },
    #[error("{who} has {limit} event streams open, as many as a token may: retry later")]
    TooManyStreams { who: String, limit: usize },
    /// Outside the caller's role or scope.
    #[error("{message}")]
    Forbidden {
        field: Option<String>,
        rule: String,
        message: String,
    },
    #[error("{trouble}: retry later")]
    Unavailable {
        trouble: DatabaseTrouble,
        /// For the log, never the answer.
        detail: String,
    },
    #[error("internal error")]
    Internal(anyhow::Error),
}

/// Why the database cannot take a request right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DatabaseTrouble {
    #[error("the database is busy")]
    Busy,
    #[error("the database is full")]
    Full,
    #[error("the database cannot write")]
    Failing,
    #[error("the database cannot be reached")]
    Unreachable,
}

// SQLite's primary result codes (the low byte of an extended code).
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_IOERR: i64 = 10;
const SQLITE_FULL: i64 = 13;

impl DatabaseTrouble {
    /// The trouble an error of the store shows, if it is one that passes.
    pub fn of(error: &anyhow::Error) -> Option<DatabaseTrouble> {
        let sqlx = error
            .chain()
            .find_map(|cause| cause.downcast_ref::<sqlx::Error>())?;
        match sqlx {
            sqlx::Error::PoolTimedOut => Some(DatabaseTrouble::Busy),
            // A PostgreSQL server that is down, restarting or cut off.
            sqlx::Error::Io(_) | sqlx::Error::PoolClosed => Some(DatabaseTrouble::Unreachable),
            sqlx::Error::Database(database) => {
                let code = database.code()?;
                if database
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some()
                {
                    Self::of_sqlstate(&code)
                } else {
                    Self::of_sqlite(code.parse().ok()?)
                }
            }
            _ => None,
        }
    }

    fn of_sqlite(code: i64) -> Option<DatabaseTrouble> {
        match code & 0xff {
            SQLITE_BUSY | SQLITE_LOCKED => Some(DatabaseTrouble::Busy),
            SQLITE_FULL => Some(DatabaseTrouble::Full),
            SQLITE_IOERR => Some(DatabaseTrouble::Failing),
            _ => None,
        }
    }

    /// PostgreSQL's SQLSTATE codes of trouble that passes.
    fn of_sqlstate(code: &str) -> Option<DatabaseTrouble> {
        match code {
            // Serialization failure, deadlock, a lock or statement timeout,
            // too many connections, out of memory.
            "40001" | "40P01" | "55P03" | "57014" | "53300" | "53200" => {
                Some(DatabaseTrouble::Busy)
            }
            "53100" => Some(DatabaseTrouble::Full),
            "58030" => Some(DatabaseTrouble::Failing),
            // Shutting down, starting up, or the connection failed.
            "57P01" | "57P02" | "57P03" => Some(DatabaseTrouble::Unreachable),
            _ if code.starts_with("08") => Some(DatabaseTrouble::Unreachable),
            _ => None,
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        match DatabaseTrouble::of(&error) {
            Some(trouble) => ApiError::Unavailable {
                trouble,
                detail: format!("{error:#}"),
            },
            None => ApiError::Internal(error),
        }
    }
}

/// The error answer's body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `malformed_json`, `invalid_spec`, `not_found`,
    /// `conflict`, `idempotency_conflict`, `payload_too_large`,
    /// `method_not_allowed`, `unsupported_media_type`, `misdirected_request`,
    /// `unauthorized`, `forbidden`, `overloaded`, `too_many_streams`,
    /// `unavailable`, `internal`.
    pub code: String,
    pub message: String,
    /// The field at fault, as a path such as `images[0].source`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `forbidden`: the rule of the caller's scope that refuses it
    /// (`role`, `repos`, `read_repos`, `sources`, `source_labels`, `force`,
    /// `service_credentials`, `allow-registry`, `allow-callback`), or
    /// `cross-site` for a browser's request from another site.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// What an overloaded or unavailable service asks a client to wait, in seconds.
const RETRY_AFTER_SECS: &str = "5";

/// The detail of a 500 or a database 503, for the log middleware.
#[derive(Debug, Clone)]
pub struct InternalErrorDetail(pub String);

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    pub(super) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            ApiError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::IdempotencyConflict(_) => (StatusCode::CONFLICT, "idempotency_conflict"),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::MisdirectedRequest(_) => {
                (StatusCode::MISDIRECTED_REQUEST, "misdirected_request")
            }
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Overloaded { .. } | ApiError::SubmitterOverloaded { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "overloaded")
            }
            ApiError::TooManyStreams { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_streams"),
            ApiError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<crate::domain::access::Forbidden> for ApiError {
    fn from(refusal: crate::domain::access::Forbidden) -> Self {
        ApiError::Forbidden {
            field: refusal.field,
            rule: refusal.rule,
            message: refusal.message,
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(error: ValidationError) -> Self {
        ApiError::Invalid {
            field: Some(error.field),
            message: error.message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let (field, rule) = match &self {
            ApiError::Invalid { field, .. } => (field.clone(), None),
            ApiError::Forbidden { field, rule, .. } => (field.clone(), Some(rule.clone())),
            _ => (None, None),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: self.to_string(),
                field,
                rule,
            },
        };
        let mut response = (status, Json(body)).into_response();
        match &self {
            ApiError::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Overloaded { .. }
            | ApiError::SubmitterOverloaded { .. }
            | ApiError::TooManyStreams { .. }
            | ApiError::Unavailable { .. } => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
            }
            _ => {}
        }
        let detail = match &self {
            ApiError::Internal(error) => Some(format!("{error:#}")),
            ApiError::Unavailable { detail, .. } => Some(detail.clone()),
            _ => None,
        };
        if let Some(detail) = detail {
            response
                .extensions_mut()
                .insert(InternalErrorDetail(detail));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::error::Error;

    use sqlx::error::{DatabaseError, ErrorKind};

    use super::*;

    /// A database error carrying an SQLite extended result code, as
    /// sqlx-sqlite reports them.
    #[derive(Debug)]
    struct Sqlite(i64);

    impl std::fmt::Display for Sqlite {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "(code: {}) disk I/O error in /var/lib/publishd.db",
                self.0
            )
        }
    }

    impl Error for Sqlite {}

    impl DatabaseError for Sqlite {
        fn message(&self) -> &str {
            "disk I/O error in /var/lib/publishd.db"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(self.0.to_string().into())
        }
        fn as_error(&self) -> &(dyn Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> ErrorKind {
            ErrorKind::Other
        }
    }

    /// A store error as handlers see it: wrapped in context.
    fn store_error(error: sqlx::Error) -> anyhow::Error {
        anyhow::Error::new(error).context("inserting a target")
    }

    fn sqlite(code: i64) -> anyhow::Error {
        store_error(sqlx::Error::Database(Box::new(Sqlite(code))))
    }

    #[test]
    fn a_database_in_trouble_is_told_from_a_bug() {
        use DatabaseTrouble::{Busy, Failing, Full, Unreachable};
        let trouble = |error: anyhow::Error| DatabaseTrouble::of(&error);
        assert_eq!(trouble(sqlite(5)), Some(Busy)); // SQLITE_BUSY
        assert_eq!(trouble(sqlite(517)), Some(Busy)); // SQLITE_BUSY_SNAPSHOT
        assert_eq!(trouble(sqlite(262)), Some(Busy)); // SQLITE_LOCKED_SHAREDCACHE
        assert_eq!(trouble(sqlite(13)), Some(Full)); // SQLITE_FULL
        assert_eq!(trouble(sqlite(778)), Some(Failing)); // SQLITE_IOERR_WRITE
        assert_eq!(trouble(sqlite(1034)), Some(Failing)); // SQLITE_IOERR_FSYNC
        assert_eq!(trouble(store_error(sqlx::Error::PoolTimedOut)), Some(Busy));
        assert_eq!(trouble(sqlite(2067)), None); // SQLITE_CONSTRAINT_UNIQUE
        assert_eq!(trouble(sqlite(1)), None); // SQLITE_ERROR
        assert_eq!(trouble(store_error(sqlx::Error::RowNotFound)), None);
        assert_eq!(trouble(anyhow::anyhow!("job vanished")), None);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            trouble(store_error(sqlx::Error::Io(refused))),
            Some(Unreachable)
        );
        assert_eq!(DatabaseTrouble::of_sqlstate("40P01"), Some(Busy));
        assert_eq!(DatabaseTrouble::of_sqlstate("53100"), Some(Full));
        assert_eq!(DatabaseTrouble::of_sqlstate("57P03"), Some(Unreachable));
        assert_eq!(DatabaseTrouble::of_sqlstate("08006"), Some(Unreachable));
        // A unique violation is a bug, not trouble that passes.
        assert_eq!(DatabaseTrouble::of_sqlstate("23505"), None);
    }

    #[test]
    fn a_database_in_trouble_answers_503_without_its_words() {
        let response = ApiError::from(sqlite(778)).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], RETRY_AFTER_SECS);
        let detail = response.extensions().get::<InternalErrorDetail>().unwrap();
        assert!(detail.0.contains("disk I/O error"), "{}", detail.0);
        let error = ApiError::from(sqlite(778));
        assert_eq!(error.to_string(), "the database cannot write: retry later");

        let bug = ApiError::from(sqlite(2067)).into_response();
        assert_eq!(bug.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
