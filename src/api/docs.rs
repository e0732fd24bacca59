//! The API docs page at `/docs`: Redoc rendering `/openapi.json`. Redoc's
//! bundle is vendored in `assets/docs/` (see its README) and embedded in the
//! binary, so the page needs nothing but this service: no CDN, no web fonts.
//! Like `/openapi.json`, it is open (the token check guards only `/api/`).

use std::sync::LazyLock;

use axum::Router;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::get;
use sha2::{Digest, Sha256};

/// Redoc's standalone bundle, patched by `assets/docs/update.sh`.
const REDOC_JS: &[u8] = include_bytes!("../../assets/docs/redoc.standalone.js");
/// The notices of what the bundle contains, which its first line points to.
const REDOC_JS_LICENSES: &str = include_str!("../../assets/docs/redoc.standalone.js.LICENSE.txt");
const PAGE_TEMPLATE: &str = include_str!("../../assets/docs/index.html");

const PAGE_PATH: &str = "/docs";
const SCRIPT_PATH: &str = "/docs/redoc.standalone.js";
const LICENSES_PATH: &str = "/docs/redoc.standalone.js.LICENSE.txt";

/// The page names the script with a hash of its bytes, so the script can be
/// cached for good and a binary with another bundle still gets its own.
static PAGE: LazyLock<String> = LazyLock::new(|| {
    let hash = hex::encode(Sha256::digest(REDOC_JS));
    let script = format!("{SCRIPT_PATH}?v={}", &hash[..16]);
    PAGE_TEMPLATE.replace("{{redoc_script}}", &script)
});

/// What the page may load: this service and nothing else. Redoc styles
/// through injected `<style>` elements, draws a few icons as `data:` images
/// and runs its search index in a worker made from a `blob:`.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
    connect-src 'self'; worker-src blob:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The routes, for any router state.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(PAGE_PATH, get(page))
        .route(SCRIPT_PATH, get(script))
        .route(LICENSES_PATH, get(licenses))
}

const NOSNIFF: (HeaderName, HeaderValue) = (
    header::X_CONTENT_TYPE_OPTIONS,
    HeaderValue::from_static("nosniff"),
);

async fn page() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            // Revalidated each time: it names the script of this binary.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(PAGE_CSP),
            ),
            NOSNIFF,
        ],
        PAGE.as_str(),
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
            NOSNIFF,
        ],
        REDOC_JS,
    )
}

async fn licenses() -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=86400"),
            ),
            NOSNIFF,
        ],
        REDOC_JS_LICENSES,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_the_script_and_the_document() {
        assert!(!PAGE.contains("{{"), "placeholder left: {}", *PAGE);
        assert!(PAGE.contains(&format!("<script src=\"{SCRIPT_PATH}?v=")));
        assert!(PAGE.contains("spec-url=\"/openapi.json\""));
    }
}
