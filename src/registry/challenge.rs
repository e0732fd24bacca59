//! `WWW-Authenticate` challenges of the distribution API: how a registry says
//! which credentials it wants (RFC 7235 syntax; the Docker token spec's
//! `Bearer realm="…",service="…",scope="…"`).

use std::collections::HashMap;

use crate::domain::access::Patterns;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// HTTP basic credentials, sent with every request.
    Basic,
    /// A token from `realm`, for `service` and `scope`.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// The first challenge of a `WWW-Authenticate` value that publishd can
    /// answer, preferring Bearer (a registry offering both would rather
    /// not see a password on every request).
    pub fn parse(header: &str) -> Option<Challenge> {
        let mut basic = false;
        for (scheme, params) in challenges(header) {
            if scheme.eq_ignore_ascii_case("bearer")
                && let Some(realm) = params.get("realm")
            {
                return Some(Challenge::Bearer {
                    realm: realm.clone(),
                    service: params.get("service").cloned(),
                    scope: params.get("scope").cloned(),
                });
            }
            basic |= scheme.eq_ignore_ascii_case("basic");
        }
        basic.then_some(Challenge::Basic)
    }
}

/// Which token servers a registry may send publishd to, with the
/// credentials publishd holds for that registry: one on the registry's own
/// host (any port: a token server beside its registry is common), or one
/// the operator pairs with it (`--allow-token-realm REGISTRY=REALM`, both
/// patterns). Docker Hub's own pair is known.
#[derive(Debug, Clone)]
pub struct TokenRealms {
    pairs: Vec<(Patterns, Patterns)>,
}

/// Registries whose token server is on a host of its own, paired always.
const KNOWN_REALMS: &[&str] = &["docker.io=auth.docker.io", "index.docker.io=auth.docker.io"];

impl TokenRealms {
    /// The known pairs and `written` ones, `REGISTRY=REALM_HOST` each.
    pub fn new(written: &[String]) -> Result<TokenRealms, String> {
        let pairs = KNOWN_REALMS
            .iter()
            .copied()
            .chain(written.iter().map(String::as_str))
            .map(|pair| {
                let (registry, realm) = pair
                    .split_once('=')
                    .filter(|(registry, realm)| !registry.is_empty() && !realm.is_empty())
                    .ok_or_else(|| format!("{pair:?} is not REGISTRY=REALM_HOST"))?;
                let patterns = |written: &str| {
                    Patterns::new(&[written.trim().to_ascii_lowercase()])
                        .map_err(|error| format!("{pair:?}: {error}"))
                };
                Ok((patterns(registry)?, patterns(realm)?))
            })
            .collect::<Result<_, String>>()?;
        Ok(TokenRealms { pairs })
    }

    /// May `registry` (as references name it: `host[:port]`), reached at
    /// `api_host`, send publishd to the token server at `realm`?
    pub fn allow(&self, registry: &str, api_host: &str, realm: &url::Url) -> bool {
        let Some(realm_host) = realm.host_str() else {
            return false;
        };
        let host_of = |name: &str| {
            url::Url::parse(&format!("http://{name}"))
                .ok()
                .and_then(|url| url.host_str().map(str::to_owned))
        };
        if [registry, api_host]
            .iter()
            .any(|name| host_of(name).as_deref() == Some(realm_host))
        {
            return true;
        }
        let realm_with_port = match realm.port() {
            Some(port) => format!("{realm_host}:{port}"),
            None => realm_host.to_owned(),
        };
        self.pairs.iter().any(|(registries, realms)| {
            registries.matches(registry)
                && (realms.matches(&realm_with_port) || realms.matches(realm_host))
        })
    }
}

/// Splits a header value into (scheme, parameters) pairs. Parameters are
/// `name=token` or `name="quoted, with \"escapes\""`, separated by commas;
/// a new scheme starts at a word not followed by `=`.
fn challenges(header: &str) -> Vec<(String, HashMap<String, String>)> {
    let mut result: Vec<(String, HashMap<String, String>)> = Vec::new();
    let mut rest = header.trim();
    while !rest.is_empty() {
        rest = rest.trim_start_matches([',', ' ', '\t']);
        let word_end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let word = &rest[..word_end];
        let after = rest[word_end..].trim_start();
        if word.is_empty() {
            break;
        }
        if let Some(value_part) = after.strip_prefix('=') {
            let (value, remaining) = parameter_value(value_part.trim_start());
            if let Some((_, params)) = result.last_mut() {
                params.insert(word.to_ascii_lowercase(), value);
            }
            rest = remaining;
        } else {
            result.push((word.to_owned(), HashMap::new()));
            rest = after;
        }
    }
    result
}

/// A parameter value and what follows it.
fn parameter_value(text: &str) -> (String, &str) {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((index, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => return (value, &quoted[index + 1..]),
                other => value.push(other),
            }
        }
        (value, "")
    } else {
        let end = text.find(',').unwrap_or(text.len());
        (text[..end].trim().to_owned(), &text[end..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_as_registries_send_them() {
        let header = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull,push""#;
        assert_eq!(
            Challenge::parse(header),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull,push".into()),
            })
        );
        let unquoted = "bearer realm=http://127.0.0.1:9/token, service=reg";
        assert_eq!(
            Challenge::parse(unquoted),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:9/token".into(),
                service: Some("reg".into()),
                scope: None,
            })
        );
    }

    #[test]
    fn basic_and_mixed_challenges() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        let both = r#"Basic realm="x", Bearer realm="https://t.example/token",service="s""#;
        assert!(matches!(
            Challenge::parse(both),
            Some(Challenge::Bearer { .. })
        ));
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse(""), None);
    }

    #[test]
    fn a_realm_is_taken_on_the_registrys_host_or_where_paired() {
        let realms = TokenRealms::new(&["registry.gitlab.com=gitlab.com".to_owned()]).unwrap();
        let allow = |registry: &str, api: &str, realm: &str| {
            realms.allow(registry, api, &url::Url::parse(realm).unwrap())
        };
        // The registry's own host, on any port.
        assert!(allow(
            "127.0.0.1:5000",
            "127.0.0.1:5000",
            "http://127.0.0.1:5001/token"
        ));
        assert!(allow(
            "reg.example.com",
            "reg.example.com",
            "https://reg.example.com/v2/token"
        ));
        assert!(allow("[::1]:5000", "[::1]:5000", "http://[::1]:9/token"));
        // Another host: only where paired.
        assert!(!allow(
            "127.0.0.1:5000",
            "127.0.0.1:5000",
            "http://127.0.0.2:5001/token"
        ));
        assert!(!allow(
            "reg.example.com",
            "reg.example.com",
            "https://auth.example.com/t"
        ));
        assert!(!allow(
            "reg.example.com",
            "reg.example.com",
            "https://reg.example.com.evil/t"
        ));
        assert!(allow(
            "registry.gitlab.com",
            "registry.gitlab.com",
            "https://gitlab.com/jwt/auth"
        ));
        assert!(!allow(
            "registry.example.com",
            "registry.example.com",
            "https://gitlab.com/jwt/auth"
        ));
        // Docker Hub's token server is known.
        assert!(allow(
            "docker.io",
            "registry-1.docker.io",
            "https://auth.docker.io/token"
        ));
        assert!(!allow("quay.io", "quay.io", "https://auth.docker.io/token"));
        for bad in ["gitlab.com", "=x", "x=", "[=x"] {
            assert!(TokenRealms::new(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn quoted_values_keep_commas_and_escapes() {
        let header =
            r#"Bearer realm="https://t/token",scope="repository:a:pull,push",service="s \"q\"""#;
        let Some(Challenge::Bearer { scope, service, .. }) = Challenge::parse(header) else {
            panic!("bearer");
        };
        assert_eq!(scope.as_deref(), Some("repository:a:pull,push"));
        assert_eq!(service.as_deref(), Some(r#"s "q""#));
    }
}
