//! What a web page cannot make a browser do to publishd. Any page a
//! developer visits can send requests to a publishd their browser reaches
//! (a token-less one on loopback included): a `no-cors` request with a
//! `text/plain` body, a form posted from another site, or, by DNS
//! rebinding, a read under the page's own name. So, before anything else:
//! - the `Host` must be one publishd answers to, when it has no tokens (a
//!   rebound name is the attacker's, never an IP address, `localhost` or
//!   `--public-url`'s host);
//! - a request another site's page makes (`Sec-Fetch-Site` `cross-site` or
//!   `same-site`, or an `Origin` not publishd's own) is refused unless its
//!   origin is in `--allow-origin`; only following a link (a GET
//!   navigation) is let through, since it changes nothing and the page
//!   that linked cannot read the answer;
//! - an `/api/` request with a body must say `application/json`, which no
//!   page can send to another origin without a CORS preflight (which
//!   publishd never grants).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::body::HttpBody;
use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use url::Url;

use super::error::ApiError;
use crate::access::AccessControl;

/// Who publishd is to browsers.
#[derive(Clone)]
pub struct Fence {
    /// Origins other than publishd's own whose pages may call it, as
    /// `scheme://host[:port]` (`--allow-origin`).
    pub allowed_origins: Arc<[String]>,
    /// Where publishd is reached from outside (`--public-url`).
    pub public_url: Option<Url>,
    /// The listening address: a loopback (or every-address) listener also
    /// answers to `localhost`.
    pub listen: SocketAddr,
    /// The tokens in force: without any, the `Host` is checked.
    pub access: AccessControl,
}

/// Refuses what a browser was made to send (see the module's comment)
/// before the request is looked at further.
pub async fn fence(State(fence): State<Fence>, request: Request, next: Next) -> Response {
    // What the body says of its length: exactly 0 when there is none.
    let has_body = request.body().size_hint().upper() != Some(0);
    let checked = fence.check(
        request.method(),
        request.uri().path(),
        request.headers(),
        has_body,
    );
    match checked {
        Ok(()) => next.run(request).await,
        Err(refusal) => refusal.into_response(),
    }
}

impl Fence {
    fn check(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        has_body: bool,
    ) -> Result<(), ApiError> {
        let host = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .and_then(|host| Authority::from_str(host).ok());
        if self.access.current().is_empty()
            && let Some(host) = &host
            && !self.answers_to(host)
        {
            return Err(ApiError::MisdirectedRequest(format!(
                "publishd does not answer to the name {:?}: without API tokens it answers to IP \
                 addresses, localhost on a loopback address, and --public-url's host",
                host.host()
            )));
        }
        if self.cross_site(headers, host.as_ref()) && !is_navigation(method, headers) {
            return Err(ApiError::Forbidden {
                field: None,
                rule: "cross-site".to_owned(),
                message: "a request from another site's page is refused (a page on an origin \
                          in --allow-origin may call publishd)"
                    .to_owned(),
            });
        }
        if path.starts_with("/api/") && has_body && !is_json(headers) {
            return Err(ApiError::UnsupportedMediaType(
                "a request body must be Content-Type: application/json".to_owned(),
            ));
        }
        Ok(())
    }

    /// Whether `host` names this publishd: an IP address (a rebinding
    /// attack always uses a name of its own), `localhost` when publishd
    /// listens on loopback, or `--public-url`'s host. The port is not
    /// compared: a rebound name cannot be told by its port, and a port
    /// forwarded from elsewhere must still be answered.
    fn answers_to(&self, host: &Authority) -> bool {
        let name = host.host().trim_end_matches('.');
        let address = name.trim_start_matches('[').trim_end_matches(']');
        if address.parse::<IpAddr>().is_ok() {
            return true;
        }
        let ip = self.listen.ip();
        if name.eq_ignore_ascii_case("localhost") && (ip.is_loopback() || ip.is_unspecified()) {
            return true;
        }
        self.public_url
            .as_ref()
            .and_then(Url::host_str)
            .is_some_and(|public| public.eq_ignore_ascii_case(name))
    }

    /// Whether another site's page made the request, by what the browser
    /// says: `Sec-Fetch-Site`, and an `Origin` that is neither publishd's
    /// own (as the request's `Host` or `--public-url` name it) nor allowed.
    fn cross_site(&self, headers: &HeaderMap, host: Option<&Authority>) -> bool {
        let origin = headers
            .get(header::ORIGIN)
            .map(|origin| origin.to_str().ok().and_then(|text| Url::parse(text).ok()));
        let allowed = origin.as_ref().is_some_and(|origin| {
            origin.as_ref().is_some_and(|origin| {
                let serialized = origin.origin().ascii_serialization();
                self.allowed_origins.contains(&serialized)
            })
        });
        if allowed {
            return false;
        }
        let fetched_from_elsewhere = headers
            .get("sec-fetch-site")
            .is_some_and(|site| site == "cross-site" || site == "same-site");
        let foreign_origin = origin.is_some_and(|origin| match origin {
            // `Origin: null` (a sandboxed or local page), or unreadable.
            None => true,
            Some(origin) => {
                !(host.is_some_and(|host| same_authority(&origin, host))
                    || self.public_url.as_ref().is_some_and(|public| {
                        public.origin().ascii_serialization()
                            == origin.origin().ascii_serialization()
                    }))
            }
        });
        fetched_from_elsewhere || foreign_origin
    }
}

/// Documents what the fence answers, on every operation.
pub struct FenceResponses;

impl utoipa::Modify for FenceResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        const CROSS_SITE: &str =
            "request another site's web page made (unless its origin is in --allow-origin)";
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ];
            for operation in operations.into_iter().flatten() {
                let responses = &mut operation.responses.responses;
                match responses.get_mut("403") {
                    Some(RefOr::T(forbidden)) => {
                        forbidden.description =
                            format!("{}; or a {CROSS_SITE}", forbidden.description);
                    }
                    _ => {
                        responses.insert("403".to_owned(), error(&format!("A {CROSS_SITE}")));
                    }
                }
                responses.insert(
                    "421".to_owned(),
                    error("Without API tokens: a Host that is not an IP address, localhost or --public-url's host"),
                );
            }
        }
    }
}

/// Whether `origin` is the request's own `Host` (a port left out is the
/// origin scheme's default).
fn same_authority(origin: &Url, host: &Authority) -> bool {
    let (Some(origin_host), Some(origin_port)) =
        (origin.host_str(), origin.port_or_known_default())
    else {
        return false;
    };
    origin_host.eq_ignore_ascii_case(host.host())
        && host.port_u16().unwrap_or(origin_port) == origin_port
}

/// Following a link: the browser shows the answer to the user only.
fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && headers
            .get("sec-fetch-mode")
            .is_some_and(|mode| mode == "navigate")
}

/// Whether the body is declared `application/json` (parameters such as
/// `charset` allowed).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;
    use crate::access::{QueueShare, TokenSources};

    fn fence(listen: &str, tokens: &str) -> Fence {
        Fence {
            allowed_origins: vec!["https://ci.example.com".to_owned()].into(),
            public_url: Some(Url::parse("https://publishd.example.com/").unwrap()),
            listen: listen.parse().unwrap(),
            access: AccessControl::new(
                TokenSources {
                    tokens: Some(tokens.to_owned()),
                    ..TokenSources::default()
                },
                QueueShare {
                    queued_targets: 100,
                    at_least: 10,
                },
            )
            .unwrap(),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn status(fence: &Fence, method: Method, path: &str, pairs: &[(&'static str, &str)]) -> u16 {
        answer(fence, method, path, pairs, false)
    }

    fn answer(
        fence: &Fence,
        method: Method,
        path: &str,
        pairs: &[(&'static str, &str)],
        has_body: bool,
    ) -> u16 {
        match fence.check(&method, path, &headers(pairs), has_body) {
            Ok(()) => 200,
            Err(error) => error.status_and_code().0.as_u16(),
        }
    }

    #[test]
    fn without_tokens_only_names_publishd_answers_to_are_served() {
        let loopback = fence("127.0.0.1:8080", "");
        for host in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "10.1.2.3:9000",
            "publishd.example.com",
        ] {
            assert_eq!(
                status(&loopback, Method::GET, "/api/v1/jobs", &[("host", host)]),
                200,
                "{host}"
            );
        }
        for host in ["attacker.example:8080", "localhost.attacker.example"] {
            assert_eq!(
                status(&loopback, Method::GET, "/ui/", &[("host", host)]),
                421,
                "{host}"
            );
        }
        let public = fence("192.0.2.1:8080", "");
        assert_eq!(
            status(&public, Method::GET, "/", &[("host", "localhost:8080")]),
            421
        );
        // With tokens, a name needs a token anyway.
        let tokens = fence("127.0.0.1:8080", "t");
        assert_eq!(
            status(&tokens, Method::GET, "/", &[("host", "attacker.example")]),
            200
        );
    }

    #[test]
    fn another_sites_page_is_refused_unless_its_origin_is_allowed() {
        let fence = fence("127.0.0.1:8080", "t");
        let host = ("host", "127.0.0.1:8080");
        let post = |pairs: &[(&'static str, &str)]| {
            status(&fence, Method::POST, "/api/v1/jobs/x/cancel", pairs)
        };
        // The dashboard's own requests, and clients that are not browsers.
        assert_eq!(
            post(&[
                host,
                ("origin", "http://127.0.0.1:8080"),
                ("sec-fetch-site", "same-origin")
            ]),
            200
        );
        assert_eq!(post(&[host]), 200);
        assert_eq!(
            post(&[host, ("origin", "https://publishd.example.com")]),
            200
        );
        // Another site, by either header; `same-site` is another origin too.
        assert_eq!(post(&[host, ("origin", "https://evil.example")]), 403);
        assert_eq!(post(&[host, ("sec-fetch-site", "cross-site")]), 403);
        assert_eq!(
            post(&[
                host,
                ("origin", "http://127.0.0.1:3000"),
                ("sec-fetch-site", "same-site")
            ]),
            403
        );
        assert_eq!(post(&[host, ("origin", "null")]), 403);
        // An origin the operator allows.
        assert_eq!(
            post(&[
                host,
                ("origin", "https://ci.example.com"),
                ("sec-fetch-site", "cross-site")
            ]),
            200
        );
        // Following a link from elsewhere reads a page; posting a form does not pass.
        let navigate = [
            host,
            ("sec-fetch-site", "cross-site"),
            ("sec-fetch-mode", "navigate"),
        ];
        assert_eq!(status(&fence, Method::GET, "/ui/jobs/x", &navigate), 200);
        assert_eq!(status(&fence, Method::POST, "/ui/sign-in", &navigate), 403);
        assert_eq!(
            status(
                &fence,
                Method::GET,
                "/api/v1/jobs",
                &[
                    host,
                    ("sec-fetch-site", "cross-site"),
                    ("sec-fetch-mode", "no-cors")
                ]
            ),
            403
        );
    }

    #[test]
    fn api_bodies_must_be_json() {
        let fence = fence("127.0.0.1:8080", "t");
        let post = |content_type: Option<&str>, has_body: bool| {
            let pairs: Vec<_> = content_type
                .map(|value| ("content-type", value))
                .into_iter()
                .collect();
            answer(&fence, Method::POST, "/api/v1/jobs", &pairs, has_body)
        };
        assert_eq!(post(Some("text/plain;charset=UTF-8"), true), 415);
        assert_eq!(post(Some("application/x-www-form-urlencoded"), true), 415);
        assert_eq!(post(None, true), 415);
        assert_eq!(post(Some("application/json; charset=utf-8"), true), 200);
        // No body, nothing to declare (a cancel).
        assert_eq!(post(None, false), 200);
        // Only the API's bodies: the sign-in form posts a form.
        let form = [("content-type", "application/x-www-form-urlencoded")];
        assert_eq!(
            answer(&fence, Method::POST, "/ui/sign-in", &form, true),
            200
        );
    }
}
