//! Bearer tokens for `/api/`. Probes and the OpenAPI document stay open.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// The accepted tokens, kept as sha256 digests: comparing digests of equal
/// length in constant time leaks neither a token's content nor its length.
#[derive(Debug, Clone, Default)]
pub struct ApiTokens {
    digests: Vec<[u8; 32]>,
}

impl ApiTokens {
    /// One token per line (or separated by commas); blank lines and lines
    /// starting with `#` are skipped.
    pub fn parse(text: &str) -> ApiTokens {
        let digests = text
            .split(['\n', ','])
            .map(str::trim)
            .filter(|token| !token.is_empty() && !token.starts_with('#'))
            .map(|token| Sha256::digest(token.as_bytes()).into())
            .collect();
        ApiTokens { digests }
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn len(&self) -> usize {
        self.digests.len()
    }

    fn accepts(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Check every token, so the time does not tell which one matched.
        self.digests
            .iter()
            .fold(subtle::Choice::from(0), |found, digest| {
                found | digest.ct_eq(&presented)
            })
            .into()
    }
}

/// Answers 401 for an `/api/` request without a valid bearer token, when
/// tokens are configured.
pub async fn require_token(
    State(tokens): State<std::sync::Arc<ApiTokens>>,
    request: Request,
    next: Next,
) -> Response {
    if tokens.is_empty() || !request.uri().path().starts_with("/api/") {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(token) if tokens.accepts(token.trim()) => next.run(request).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_parsed_and_checked() {
        let tokens = ApiTokens::parse("# pipelines\nalpha\n\n beta ,gamma\n");
        assert_eq!(tokens.len(), 3);
        assert!(tokens.accepts("alpha") && tokens.accepts("beta") && tokens.accepts("gamma"));
        assert!(!tokens.accepts("alph") && !tokens.accepts("") && !tokens.accepts("# pipelines"));
        assert!(ApiTokens::parse("\n#only comments\n").is_empty());
    }
}
