//! The API docs page at `/docs`: served from the binary, open without a
//! token, and loading nothing from outside the service.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::TestApp;

const VENDORED_JS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/assets/docs/redoc.standalone.js"
);

fn vendored_js() -> Vec<u8> {
    std::fs::read(VENDORED_JS).expect("the vendored Redoc bundle")
}

/// Every `http://` or `https://` string in `text`, up to the first character
/// that cannot be part of it in HTML, CSS or JS source.
fn urls(text: &str) -> BTreeSet<&str> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = ["http://", "https://"]
        .iter()
        .filter_map(|scheme| rest.find(scheme))
        .min()
    {
        let candidate = &rest[start..];
        let end = candidate
            .find(|c: char| c.is_whitespace() || "\"'`()<>\\".contains(c))
            .unwrap_or(candidate.len());
        found.insert(&candidate[..end]);
        rest = &candidate[end..];
    }
    found
}

/// The URL-like strings in the vendored bundle that no browser fetches,
/// each with why. Anything else the scan finds fails the test: look at it in
/// the bundle, and patch it out in `assets/docs/update.sh` if the page
/// would load it, or add it here with the reason it is never loaded.
const NEVER_FETCHED: &[(&str, &str)] = &[
    // Prefix tests and concatenations: `isAbsoluteUrl` and
    // `isMappingRef` (`e.startsWith("http://")`), `new URL("https://" + host)`
    // (parsing only), and marked turning a `www.` autolink in Markdown into
    // an `<a href>` (a link, not a load).
    ("http://", "scheme prefix tests and link building"),
    ("https://", "scheme prefix tests and URL parsing"),
    // Sample values Redoc's example generator shows for string formats.
    ("http://example.com", "sample value of format: uri"),
    ("http://example.com/entity/1", "sample value of format: iri"),
    (
        "http://example.com/{endpoint}",
        "sample value of format: uri-template",
    ),
    // XML namespace names React and DOMPurify compare and pass to
    // createElementNS: identifiers, never dereferenced.
    (
        "http://www.w3.org/1998/Math/MathML",
        "MathML namespace name",
    ),
    ("http://www.w3.org/1999/xhtml", "XHTML namespace name"),
    ("http://www.w3.org/1999/xlink", "XLink namespace name"),
    ("http://www.w3.org/2000/svg", "SVG namespace name"),
    (
        "http://www.w3.org/XML/1998/namespace",
        "XML namespace name (xml:lang)",
    ),
    // JSON Schema `$schema`/`$id`/`$vocabulary` identifiers of the
    // meta-schemas ajv carries inside the bundle: resolved from its own
    // table, never fetched.
    ("http://json-schema.org/schema", "ajv meta-schema key"),
    (
        "https://json-schema.org/draft/2020-12/schema",
        "bundled meta-schema id",
    ),
    (
        "https://json-schema.org/draft/2020-12/meta/applicator",
        "bundled meta-schema id",
    ),
    (
        "https://json-schema.org/draft/2020-12/meta/content",
        "bundled meta-schema id",
    ),
    (
        "https://json-schema.org/draft/2020-12/meta/core",
        "bundled meta-schema id",
    ),
    (
        "https://json-schema.org/draft/2020-12/meta/format-annotation",
        "bundled meta-schema id",
    ),
    (
        "https://json-schema.org/draft/2020-12/meta/meta-data",
        "bundled meta-schema id",
    ),
    (
        "https://json-schema.org/draft/2020-12/meta/unevaluated",
        "bundled meta-schema id",
    ),
    (
        "https://json-schema.org/draft/2020-12/meta/validation",
        "bundled meta-schema id",
    ),
    (
        "https://json-schema.org/draft/2020-12/vocab/applicator",
        "vocabulary id",
    ),
    (
        "https://json-schema.org/draft/2020-12/vocab/content",
        "vocabulary id",
    ),
    (
        "https://json-schema.org/draft/2020-12/vocab/core",
        "vocabulary id",
    ),
    (
        "https://json-schema.org/draft/2020-12/vocab/format-annotation",
        "vocabulary id",
    ),
    (
        "https://json-schema.org/draft/2020-12/vocab/meta-data",
        "vocabulary id",
    ),
    (
        "https://json-schema.org/draft/2020-12/vocab/unevaluated",
        "vocabulary id",
    ),
    (
        "https://json-schema.org/draft/2020-12/vocab/validation",
        "vocabulary id",
    ),
    (
        "https://raw.githubusercontent.com/ajv-validator/ajv/master/lib/refs/data.json#",
        "$id of ajv's bundled $data meta-schema, and a $ref to it",
    ),
    // Text of error messages thrown by libraries in the bundle.
    (
        "http://fb.me/use-check-prop-types",
        "prop-types error message",
    ),
    ("https://git.io/JUIaE#", "styled-components error message"),
    (
        "https://github.com/markedjs/marked.",
        "marked error message",
    ),
    (
        "https://github.com/mobxjs/mobx/blob/main/packages/mobx/src/errors.ts",
        "MobX error message",
    ),
    (
        "https://github.com/styled-components/polished/blob/main/src/internalHelpers/errors.md#",
        "polished error message",
    ),
    (
        "https://marked.js.org/#/USING_ADVANCED.md#options",
        "marked deprecation warning",
    ),
    (
        "https://reactjs.org/docs/error-decoder.html?invariant=",
        "React error message",
    ),
    // Strings in Redocly's OpenAPI library that name, not load.
    (
        "https://github.com/mermade/oas-kit",
        "converter name recorded when converting a Swagger 2 document",
    ),
    (
        "https://api.${i}/registry/",
        "isRedoclyRegistryURL: a prefix test on $ref URLs (ours has none)",
    ),
    (
        "https://api.${r}/registry/",
        "isRedoclyRegistryURL: a prefix test on $ref URLs (ours has none)",
    ),
    (
        "https://redocly.com/docs/cli/",
        "comment text of a lint-ignore file the CLI writes",
    ),
    (
        "https://redocly.com/sso/teams",
        "default value in the Redocly config schema",
    ),
    // The one link a user sees.
    (
        "https://redocly.com/redoc/",
        "href of the \"API docs by Redocly\" footer link (its logo image is patched out)",
    ),
    (
        "https://stackoverflow.com/a/31732902/1749888",
        "a comment inside a CSS template",
    ),
];

#[test]
fn the_vendored_bundle_fetches_nothing_from_elsewhere() {
    let js = String::from_utf8(vendored_js()).expect("the bundle is UTF-8");
    let found = urls(&js);
    let allowed: BTreeSet<&str> = NEVER_FETCHED.iter().map(|(url, _)| *url).collect();
    let unexplained: Vec<&&str> = found.difference(&allowed).collect();
    assert!(
        unexplained.is_empty(),
        "URLs in {VENDORED_JS} that may be fetched: {unexplained:#?}"
    );
    // The allow-list stays exact: an entry the bundle no longer has goes.
    let stale: Vec<&&str> = allowed.difference(&found).collect();
    assert!(stale.is_empty(), "allow-listed but not found: {stale:?}");

    // What update.sh patches out, and what Redoc's own examples add.
    for fetched in [
        "cdn.redoc.ly",
        "fonts.googleapis.com",
        "fonts.gstatic.com",
        // The bundle's own map, not vendored. (The search worker's map
        // comment stays: it is relative to the worker's blob: URL, which
        // resolves to nothing on the network.)
        "sourceMappingURL=redoc.standalone.js.map",
    ] {
        assert!(!js.contains(fetched), "{fetched} is in the bundle");
    }
}

/// The `src` of the page's one `<script>`.
fn script_src(page: &str) -> &str {
    let (_, after) = page
        .split_once("<script src=\"")
        .expect("the page has a script");
    assert!(
        !after.contains("<script"),
        "the page has exactly one script"
    );
    after.split_once('"').expect("closing quote").0
}

#[tokio::test]
async fn the_docs_page_serves_redoc_from_the_binary_on_the_served_document() {
    let app = TestApp::spawn().await;

    let response = app.get("/docs").await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"),
        "{headers:?}"
    );
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(
        !csp.contains("http"),
        "the policy allows no other origin: {csp}"
    );
    let page = response.text().await.unwrap();

    // The page renders the document the service serves, from the same origin.
    assert!(page.contains("<redoc spec-url=\"/openapi.json\""), "{page}");
    let document: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert_eq!(document["info"]["title"], "publishd");

    // Nothing on the page points elsewhere: no URL with a scheme, and every
    // src and href is a path on this service or inline data.
    assert!(urls(&page).is_empty(), "{:?}", urls(&page));
    for attribute in ["src=\"", "href=\"", "spec-url=\""] {
        for (_, after) in page
            .match_indices(attribute)
            .map(|(at, _)| page.split_at(at))
        {
            let value = after[attribute.len()..].split('"').next().unwrap();
            assert!(
                (value.starts_with('/') && !value.starts_with("//")) || value.starts_with("data:"),
                "{attribute}{value}"
            );
        }
    }

    // The script is the vendored file, byte for byte, cached for good.
    let src = script_src(&page);
    assert!(src.starts_with("/docs/redoc.standalone.js?v="), "{src}");
    let response = app.get(src).await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    let content_type = headers["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/javascript")
            || content_type.starts_with("application/javascript"),
        "{content_type}"
    );
    let cache = headers["cache-control"].to_str().unwrap();
    assert!(
        cache.contains("max-age=31536000") && cache.contains("immutable"),
        "{cache}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let body = response.bytes().await.unwrap();
    assert!(
        body.as_ref() == vendored_js().as_slice(),
        "served script differs from {VENDORED_JS}"
    );

    // The notices the bundle's first line points to.
    let response = app.get("/docs/redoc.standalone.js.LICENSE.txt").await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("ReDoc"));

    // Anything else under /docs is the usual JSON 404.
    let response = app.get("/docs/other.js").await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn the_docs_page_is_open_when_tokens_are_configured() {
    let app = TestApp::spawn_with(|settings| settings.tokens.tokens = Some("t".into())).await;

    // The API itself asks for the token...
    assert_eq!(app.get("/api/v1/jobs").await.status(), 401);

    // ...the page, its script and the document do not.
    let response = app.get("/docs").await;
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    let src = script_src(&page).to_owned();
    assert_eq!(app.get(&src).await.status(), 200);
    assert_eq!(app.get("/docs/redoc.standalone.js").await.status(), 200);
    assert_eq!(
        app.get("/docs/redoc.standalone.js.LICENSE.txt")
            .await
            .status(),
        200
    );
    assert_eq!(app.get("/openapi.json").await.status(), 200);
}

#[test]
fn the_url_scan_finds_urls_where_they_end() {
    let text =
        r#"a "https://x.test/a?b=1" b url(http://y.test/f.woff2) `https://z.test/${v}/` http://"#;
    let found: Vec<&str> = urls(text).into_iter().collect();
    assert_eq!(
        found,
        [
            "http://",
            "http://y.test/f.woff2",
            "https://x.test/a?b=1",
            "https://z.test/${v}/",
        ]
    );
}
