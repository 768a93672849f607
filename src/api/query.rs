//! URL query strings (`?county=420502&industry=%E9%A4%90%E9%A5%AE`): percent
//! decoding and strict parameter names, so a misspelt filter is refused
//! instead of silently ignored.

use super::wire::FieldError;

/// Longest query string read.
pub const MAX_QUERY_BYTES: usize = 2_048;

/// The parameters of `query`, each name at most once and one of `allowed`.
pub fn parse_query(
    query: Option<&str>,
    allowed: &[&'static str],
) -> Result<Vec<(&'static str, String)>, FieldError> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(Vec::new());
    };
    if query.len() > MAX_QUERY_BYTES {
        return Err(FieldError::new(
            "query",
            format!("must be at most {MAX_QUERY_BYTES} bytes"),
        ));
    }
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(raw_name).map_err(|r| FieldError::new("query", r))?;
        let Some(known) = allowed.iter().find(|a| **a == name) else {
            return Err(FieldError::new(
                name,
                format!("unknown query parameter; known: {}", allowed.join(", ")),
            ));
        };
        if out.iter().any(|(n, _)| n == known) {
            return Err(FieldError::new(*known, "given more than once"));
        }
        let value = decode(raw_value).map_err(|r| FieldError::new(*known, r))?;
        out.push((known, value));
    }
    Ok(out)
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| "a % must be followed by two hex digits".to_owned())?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "is not UTF-8 once percent-decoded".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOWED: &[&str] = &["industry", "page_size"];

    #[test]
    fn decodes_and_refuses_unknown_or_repeated_names() {
        let got = parse_query(Some("industry=%E9%A4%90%E9%A5%AE&page_size=5"), ALLOWED);
        assert_eq!(
            got,
            Ok(vec![("industry", "餐饮".into()), ("page_size", "5".into())])
        );
        assert_eq!(parse_query(None, ALLOWED), Ok(vec![]));
        assert_eq!(
            parse_query(Some("industry=a+b"), ALLOWED).unwrap()[0].1,
            "a b"
        );
        assert_eq!(
            parse_query(Some("indsutry=x"), ALLOWED).unwrap_err().field,
            "indsutry"
        );
        assert_eq!(
            parse_query(Some("page_size=1&page_size=2"), ALLOWED)
                .unwrap_err()
                .field,
            "page_size"
        );
        assert!(parse_query(Some("industry=%E9%A4"), ALLOWED).is_err());
        assert!(parse_query(Some("industry=%zz"), ALLOWED).is_err());
        assert!(parse_query(Some("industry=%4"), ALLOWED).is_err());
    }
}
