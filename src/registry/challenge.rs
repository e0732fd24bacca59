//! `WWW-Authenticate` challenges of the distribution API: how a registry says
//! which credentials it wants (RFC 7235 syntax; the Docker token spec's
//! `Bearer realm="…",service="…",scope="…"`).

use std::collections::HashMap;

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
