//! Text from peers (registries, the engine) as publishd keeps it: bounded,
//! and visibly so when cut.

use std::borrow::Cow;

/// `text`, at most `limit` bytes of it (cut at a character boundary), with
/// `…` where it was cut.
pub fn cut(text: &str, limit: usize) -> Cow<'_, str> {
    if text.len() <= limit {
        return Cow::Borrowed(text);
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &text[..end]))
}

/// An error and each of its causes, `: `-separated: a client library's own
/// message is often terse ("error sending request"), its causes say what
/// happened.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut chain = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push(cause.to_string());
        source = cause.source();
    }
    chain.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_cut_visibly_on_a_boundary() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "abc…");
        // 'é' is two bytes: the cut does not split it.
        assert_eq!(cut("aéb", 2), "a…");
    }
}
