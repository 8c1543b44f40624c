//! What a request must look like before anything identifies or answers
//! it, for every listener: a path in origin form (no absolute-form, no
//! CONNECT), a Host header on HTTP/1.1 (RFC 9112 3.2), and a path that
//! decodes to UTF-8 without NUL or `..` segments (answered 400, never
//! resolved against anything). The other limits (header count and size,
//! body size, timeouts, conflicting lengths) are hyper's, set in
//! [`super::Limits`]. A request with both Content-Length and
//! Transfer-Encoding is hyper's to handle: it reads the body as chunked
//! and closes the connection after the answer (RFC 9112 6.3), so nothing
//! can be smuggled behind it; the Content-Length never reaches this code.

use http::{Method, StatusCode, Version, request::Parts};

use crate::backends::Reply;

/// The answer when the request breaks a rule.
pub fn refusal(parts: &Parts) -> Option<Reply> {
    if parts.method == Method::CONNECT {
        return Some(Reply::method_not_allowed("GET, HEAD, POST, PUT"));
    }
    let bad = || Reply::status(StatusCode::BAD_REQUEST);
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        // Absolute-form is for proxies; this is not one.
        return Some(bad());
    }
    if parts.version == Version::HTTP_11 && !parts.headers.contains_key(http::header::HOST) {
        return Some(bad());
    }

    (!path_ok(parts.uri.path())).then(bad)
}

/// Whether `path` percent-decodes to UTF-8 with no NUL and no `..` (or
/// `.`) segment.
fn path_ok(path: &str) -> bool {
    let Some(decoded) = percent_decode(path) else {
        return false;
    };
    let Ok(text) = String::from_utf8(decoded) else {
        return false;
    };
    !text.contains('\0')
        && !text
            .split(['/', '\\'])
            .any(|segment| segment == ".." || segment == ".")
}

/// `%XX` decoded; `None` for a malformed escape.
fn percent_decode(path: &str) -> Option<Vec<u8>> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, uri: &str, version: Version, host: bool) -> Parts {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(uri)
            .version(version);
        if host {
            builder = builder.header("host", "169.254.169.254");
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn status(parts: &Parts) -> StatusCode {
        refusal(parts).map_or(StatusCode::OK, |reply| reply.status)
    }

    #[test]
    fn requests_that_break_a_rule_are_refused() {
        let ok = |uri| status(&parts(Method::GET, uri, Version::HTTP_11, true));
        assert_eq!(ok("/openstack/latest/meta_data.json"), StatusCode::OK);
        assert_eq!(ok("/latest/meta-data/"), StatusCode::OK);
        for path in [
            "/openstack/../etc/passwd",
            "/openstack/%2e%2e/x",
            "/a/%2E%2E",
            "/a/%00b",
            "/a/%ff%fe",
            "/a/%zz",
            "/a/./b",
            "/a\\..\\b",
        ] {
            assert_eq!(ok(path), StatusCode::BAD_REQUEST, "{path}");
        }
        assert_eq!(
            ok("http://evil.example/latest/meta-data/"),
            StatusCode::BAD_REQUEST,
            "absolute-form"
        );
        assert_eq!(
            status(&parts(Method::GET, "/", Version::HTTP_11, false)),
            StatusCode::BAD_REQUEST,
            "no Host"
        );
        assert_eq!(
            status(&parts(Method::GET, "/", Version::HTTP_10, false)),
            StatusCode::OK,
            "HTTP/1.0 needs none"
        );
        assert_eq!(
            status(&parts(
                Method::CONNECT,
                "169.254.169.254:443",
                Version::HTTP_11,
                true
            )),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
