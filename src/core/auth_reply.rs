//! `noise_auth_request`, sans-IO: the request put to an HTTP authority about a proven client
//! key, and the reading of its answer (docs/nginx-integration.md §6).
//!
//! * The request is one `GET` in HTTP/1.0 with `Connection: close`: the authority answers
//!   and closes, so no body framing, keep-alive or chunking is ever needed.
//! * The answer is read from its status line and headers only, with `httparse`, and only
//!   from the first [`MAX_HEADER_BYTES`]: an authority (or whatever answers in its place)
//!   cannot make a worker hold more. The body is never read.
//! * 2xx allows, 401 and 403 deny, anything else is an error, as nginx's `auth_request`.
//!   `X-Noise-Attr-NAME: value` headers of an allowing answer become the key's attributes
//!   (NAME lowercased, `-` read as `_`), under the key zone's limits: an answer whose
//!   attributes the zone could not hold is an error, never half-applied.

use base64::Engine;

use super::key_table::{self, Access, KeyTable, Record};

/// How much of an answer is read before its headers must have ended.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Headers an answer may have.
const MAX_HEADERS: usize = 64;
/// The header prefix that names an attribute.
const ATTR_PREFIX: &str = "x-noise-attr-";

/// What is put to the authority.
pub struct Query<'a> {
    /// The `Host` header: the authority's name as configured.
    pub host: &'a str,
    /// The request target (path and query).
    pub uri: &'a str,
    pub key: &'a [u8; 32],
    /// The Noise protocol name the client runs.
    pub protocol: &'a str,
    /// The client's address as nginx prints it (`$remote_addr`).
    pub client_addr: &'a str,
}

/// The request bytes for `q`.
pub fn request(q: &Query<'_>) -> Vec<u8> {
    let key = base64::engine::general_purpose::STANDARD.encode(q.key);
    format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\nX-Noise-Client-Key: {key}\r\nX-Noise-Protocol: {}\r\nX-Noise-Client-Addr: {}\r\n\r\n",
        q.uri, q.host, q.protocol, q.client_addr
    )
    .into_bytes()
}

/// The authority's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 2xx, with the attributes its headers gave.
    Allow(Vec<(String, String)>),
    /// 401 or 403.
    Deny,
}

impl Answer {
    /// The zone record that caches this answer until `expires` (Unix seconds).
    pub fn record(&self, expires: u64) -> Record {
        match self {
            Answer::Allow(attrs) => Record {
                access: Access::Allow,
                expires,
                attrs: attrs.clone(),
            },
            Answer::Deny => Record {
                access: Access::Deny,
                expires,
                attrs: Vec::new(),
            },
        }
    }
}

/// Why an answer was not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("the authority's response headers are over {MAX_HEADER_BYTES} bytes")]
    TooLarge,
    #[error("the authority sent an invalid HTTP response ({0})")]
    Garbage(String),
    #[error("the authority answered with status {0} (2xx allows, 401 and 403 deny)")]
    Status(u16),
    #[error("the authority's attributes cannot be kept: {0}")]
    Attributes(String),
    #[error("the authority closed the connection before its response headers ended")]
    Truncated,
}

/// Reads the answer in `buf` (all that arrived so far). `Ok(None)`: its headers have not
/// ended yet and more may come; `closed` says none will.
pub fn parse(buf: &[u8], closed: bool) -> Result<Option<Answer>, ReplyError> {
    let head = &buf[..buf.len().min(MAX_HEADER_BYTES)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEADER_BYTES => {
            return Err(ReplyError::TooLarge)
        }
        Ok(httparse::Status::Partial) if closed => return Err(ReplyError::Truncated),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ReplyError::Garbage(e.to_string())),
    }
    let code = response.code.unwrap_or(0);
    match code {
        200..=299 => {}
        401 | 403 => return Ok(Some(Answer::Deny)),
        _ => return Err(ReplyError::Status(code)),
    }
    let mut attrs = Vec::new();
    for h in response.headers.iter() {
        let lower = h.name.to_ascii_lowercase();
        let Some(name) = lower.strip_prefix(ATTR_PREFIX) else {
            continue;
        };
        let name = name.replace('-', "_");
        let value = std::str::from_utf8(h.value)
            .map_err(|_| ReplyError::Attributes(format!("attribute \"{name}\" is not text")))?
            .trim()
            .to_string();
        key_table::check_attr(&name, &value).map_err(|e| ReplyError::Attributes(e.to_string()))?;
        if attrs.iter().any(|(n, _): &(String, String)| *n == name) {
            return Err(ReplyError::Attributes(format!(
                "attribute \"{name}\" is given twice"
            )));
        }
        attrs.push((name, value));
    }
    let answer = Answer::Allow(attrs);
    KeyTable::check(&answer.record(0)).map_err(|e| ReplyError::Attributes(e.to_string()))?;
    Ok(Some(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Option<Answer> {
        parse(text.as_bytes(), false).expect("an answer")
    }

    #[test]
    fn the_request_names_key_protocol_and_address() {
        let key = [7u8; 32];
        let text = String::from_utf8(request(&Query {
            host: "auth:8080",
            uri: "/check?x=1",
            key: &key,
            protocol: "Noise_IK_25519_ChaChaPoly_BLAKE2s",
            client_addr: "127.0.0.1",
        }))
        .expect("text");
        assert!(text.starts_with("GET /check?x=1 HTTP/1.0\r\nHost: auth:8080\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(
            text.contains("X-Noise-Client-Key: BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\r\n")
        );
        assert!(text.contains("X-Noise-Protocol: Noise_IK_25519_ChaChaPoly_BLAKE2s\r\n"));
        assert!(text.ends_with("X-Noise-Client-Addr: 127.0.0.1\r\n\r\n"));
    }

    #[test]
    fn statuses() {
        assert_eq!(ok("HTTP/1.1 200 OK\r\n\r\n"), Some(Answer::Allow(vec![])));
        assert_eq!(
            ok("HTTP/1.0 204 No Content\r\n\r\n"),
            Some(Answer::Allow(vec![]))
        );
        assert_eq!(ok("HTTP/1.1 401 No\r\n\r\n"), Some(Answer::Deny));
        assert_eq!(
            ok("HTTP/1.1 403 No\r\nX-Noise-Attr-A: b\r\n\r\n"),
            Some(Answer::Deny)
        );
        for code in ["302", "404", "500", "503"] {
            let text = format!("HTTP/1.1 {code} x\r\n\r\n");
            assert!(matches!(
                parse(text.as_bytes(), false),
                Err(ReplyError::Status(_))
            ));
        }
    }

    #[test]
    fn attributes_from_headers() {
        let a = ok("HTTP/1.1 200 OK\r\nX-Noise-Attr-Device: d-1\r\nx-noise-attr-tenant-id:  acme \r\nServer: x\r\n\r\nbody");
        assert_eq!(
            a,
            Some(Answer::Allow(vec![
                ("device".into(), "d-1".into()),
                ("tenant_id".into(), "acme".into())
            ]))
        );
    }

    #[test]
    fn bad_attributes_are_errors() {
        for text in [
            "HTTP/1.1 200 OK\r\nX-Noise-Attr-D.x: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-Noise-Attr-: 1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-Noise-Attr-A: 1\r\nX-Noise-Attr-A: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX-Noise-Attr-A: \u{e9}\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse(text.as_bytes(), false),
                    Err(ReplyError::Attributes(_)) | Err(ReplyError::Garbage(_))
                ),
                "{text:?}"
            );
        }
        let mut many = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..9 {
            many.push_str(&format!("X-Noise-Attr-A{i}: v\r\n"));
        }
        many.push_str("\r\n");
        assert!(matches!(
            parse(many.as_bytes(), false),
            Err(ReplyError::Attributes(_))
        ));
        let long = format!(
            "HTTP/1.1 200 OK\r\nX-Noise-Attr-A: {}\r\n\r\n",
            "v".repeat(90)
        );
        assert!(matches!(
            parse(long.as_bytes(), false),
            Err(ReplyError::Attributes(_))
        ));
    }

    #[test]
    fn incomplete_truncated_garbage_and_too_large() {
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\nX-A: b\r\n", false), Ok(None));
        assert_eq!(parse(b"", false), Ok(None));
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nX-A: b\r\n", true),
            Err(ReplyError::Truncated)
        );
        assert_eq!(parse(b"", true), Err(ReplyError::Truncated));
        assert!(matches!(
            parse(b"SSH-2.0-OpenSSH\r\n\r\n", false),
            Err(ReplyError::Garbage(_))
        ));
        let mut big = b"HTTP/1.1 200 OK\r\n".to_vec();
        while big.len() < MAX_HEADER_BYTES + 10 {
            big.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(
            parse(&big, false),
            Err(ReplyError::TooLarge) | Err(ReplyError::Garbage(_))
        ));
        let mut long_line = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
        long_line.resize(MAX_HEADER_BYTES + 1, b'a');
        assert_eq!(parse(&long_line, false), Err(ReplyError::TooLarge));
    }
}
