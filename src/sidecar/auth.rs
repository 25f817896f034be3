//! Per-backend token auth: `Authorization: Bearer <token>`, `?token=<token>` (which also sets a
//! cookie so page assets and browser WebSockets, which cannot send headers, work) or that
//! cookie. Comparison is constant-time; whichever form carried the token is removed before the
//! request reaches the app, so the app never learns the secret.

use std::path::{Path, PathBuf};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use subtle::ConstantTimeEq;

/// Name of the cookie `?token=` sets.
pub const COOKIE_NAME: &str = "spawner-token";
static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read the token file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token in {path} is empty")]
    Empty { path: PathBuf },
    #[error("the token in {path} has characters other than A-Z a-z 0-9 . _ ~ + / = -")]
    Charset { path: PathBuf },
}

/// The backend's secret.
pub struct Auth {
    token: Box<[u8]>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth { token: <redacted> }")
    }
}

/// What [`Auth::check`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the (now token-free) request; add `set_cookie` to the response if present.
    Allowed {
        set_cookie: Option<HeaderValue>,
    },
    Denied,
}

impl Auth {
    /// Read the token the controller mounted from the backend's Secret (surrounding whitespace,
    /// such as a trailing newline, is ignored).
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let raw = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.into(), source })?;
        Self::new(raw.trim()).map_err(|e| match e {
            Error::Empty { .. } => Error::Empty { path: path.into() },
            _ => Error::Charset { path: path.into() },
        })
    }

    /// A token usable verbatim in a header, a query and a cookie.
    pub fn new(token: &str) -> Result<Self, Error> {
        if token.is_empty() {
            return Err(Error::Empty { path: PathBuf::new() });
        }
        if !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~+/=-".contains(&b)) {
            return Err(Error::Charset { path: PathBuf::new() });
        }
        Ok(Self { token: token.as_bytes().into() })
    }

    fn matches(&self, candidate: &[u8]) -> bool {
        self.token.ct_eq(candidate).into()
    }

    /// Whether `candidate` is the token (constant-time).
    pub fn is(&self, candidate: &[u8]) -> bool {
        self.matches(candidate)
    }

    /// Decide on a request and remove our token from it, wherever it was.
    pub fn check(&self, uri: &mut Uri, headers: &mut HeaderMap) -> Verdict {
        let by_header = self.take_bearer(headers);
        let by_cookie = self.take_cookie(headers);
        let by_query = self.take_query(uri);
        if by_query {
            return Verdict::Allowed { set_cookie: Some(self.cookie(headers)) };
        }
        if by_header || by_cookie { Verdict::Allowed { set_cookie: None } } else { Verdict::Denied }
    }

    fn take_bearer(&self, headers: &mut HeaderMap) -> bool {
        let ours = |v: &HeaderValue| {
            let b = v.as_bytes();
            b.len() > 7 && b[..7].eq_ignore_ascii_case(b"bearer ") && self.matches(b[7..].trim_ascii())
        };
        if !headers.get_all(header::AUTHORIZATION).iter().any(ours) {
            return false;
        }
        // Keep any other Authorization the app itself may use.
        let others: Vec<HeaderValue> =
            headers.get_all(header::AUTHORIZATION).iter().filter(|v| !ours(v)).cloned().collect();
        headers.remove(header::AUTHORIZATION);
        for v in others {
            headers.append(header::AUTHORIZATION, v);
        }
        true
    }

    fn take_cookie(&self, headers: &mut HeaderMap) -> bool {
        let mut found = false;
        let mut has_ours = false;
        for value in headers.get_all(header::COOKIE) {
            for pair in value.as_bytes().split(|&b| b == b';') {
                if let Some((name, val)) = split_pair(pair)
                    && name == COOKIE_NAME.as_bytes()
                {
                    has_ours = true;
                    found |= self.matches(val);
                }
            }
        }
        if has_ours {
            // Rebuild Cookie without ours (only paid when our cookie is there).
            let mut rest: Vec<u8> = Vec::new();
            for value in headers.get_all(header::COOKIE) {
                for pair in value.as_bytes().split(|&b| b == b';') {
                    match split_pair(pair) {
                        Some((name, _)) if name == COOKIE_NAME.as_bytes() => {}
                        _ if pair.trim_ascii().is_empty() => {}
                        _ => {
                            if !rest.is_empty() {
                                rest.extend_from_slice(b"; ");
                            }
                            rest.extend_from_slice(pair.trim_ascii());
                        }
                    }
                }
            }
            headers.remove(header::COOKIE);
            if let Ok(v) = HeaderValue::from_bytes(&rest)
                && !rest.is_empty()
            {
                headers.insert(header::COOKIE, v);
            }
        }
        found
    }

    fn take_query(&self, uri: &mut Uri) -> bool {
        let Some(query) = uri.query() else { return false };
        let is_ours = |param: &str| param.strip_prefix("token=").is_some_and(|v| self.matches(&percent_decode(v)));
        if !query.split('&').any(is_ours) {
            return false;
        }
        let rest: Vec<&str> = query.split('&').filter(|p| !is_ours(p)).collect();
        let mut pq = uri.path().to_owned();
        if !rest.is_empty() {
            pq.push('?');
            pq.push_str(&rest.join("&"));
        }
        let mut parts = std::mem::take(uri).into_parts();
        parts.path_and_query = PathAndQuery::try_from(pq).ok();
        *uri = Uri::from_parts(parts).unwrap_or_default();
        true
    }

    /// `Set-Cookie` for the token, scoped to the backend's public path: the prefix the cluster's
    /// proxy strips (`X-Forwarded-Prefix`), or `/` when reached directly.
    fn cookie(&self, headers: &HeaderMap) -> HeaderValue {
        let path = headers
            .get(&X_FORWARDED_PREFIX)
            .map(HeaderValue::as_bytes)
            .filter(|p| p.first() == Some(&b'/') && p.iter().all(|&b| b.is_ascii_graphic() && b != b';' && b != b','))
            .unwrap_or(b"/");
        let secure = headers.get(&X_FORWARDED_PROTO).is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
        let mut v = Vec::with_capacity(64 + self.token.len() + path.len());
        v.extend_from_slice(COOKIE_NAME.as_bytes());
        v.push(b'=');
        v.extend_from_slice(&self.token);
        v.extend_from_slice(b"; Path=");
        v.extend_from_slice(path);
        v.extend_from_slice(b"; HttpOnly; SameSite=Lax");
        if secure {
            v.extend_from_slice(b"; Secure");
        }
        HeaderValue::from_bytes(&v).expect("token and path were checked to be header-safe")
    }
}

fn split_pair(pair: &[u8]) -> Option<(&[u8], &[u8])> {
    let pair = pair.trim_ascii();
    let eq = pair.iter().position(|&b| b == b'=')?;
    Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
}

/// Decode `%XX` (and `+` as space, as forms do); a malformed escape stays as it is.
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "s3cr3t-Tok_en";

    fn check(uri: &str, headers: &[(&str, &str)]) -> (Verdict, Uri, HeaderMap) {
        let auth = Auth::new(TOKEN).unwrap();
        let mut uri: Uri = uri.parse().unwrap();
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        let verdict = auth.check(&mut uri, &mut map);
        (verdict, uri, map)
    }

    #[test]
    fn a_request_without_a_token_is_denied() {
        assert_eq!(check("/x", &[]).0, Verdict::Denied);
        assert_eq!(check("/x?token=wrong", &[("authorization", "Bearer nope")]).0, Verdict::Denied);
        assert_eq!(check("/x", &[("cookie", "spawner-token=s3cr3t-Tok_eN")]).0, Verdict::Denied);
    }

    #[test]
    fn a_bearer_token_is_accepted_and_removed_but_other_authorizations_stay() {
        let (v, _, h) = check("/x", &[("authorization", "bearer s3cr3t-Tok_en"), ("authorization", "Basic abc")]);
        assert_eq!(v, Verdict::Allowed { set_cookie: None });
        assert_eq!(h.get_all("authorization").iter().collect::<Vec<_>>(), ["Basic abc"]);
    }

    #[test]
    fn a_query_token_is_removed_from_the_uri_and_sets_a_cookie_scoped_to_the_prefix() {
        let (v, uri, _) = check(
            "/a/b?x=1&token=s3cr3t-Tok_en&y=2",
            &[("x-forwarded-prefix", "/p/ns/app"), ("x-forwarded-proto", "https")],
        );
        assert_eq!(uri, "/a/b?x=1&y=2");
        let Verdict::Allowed { set_cookie: Some(c) } = v else { panic!("{v:?}") };
        assert_eq!(c, "spawner-token=s3cr3t-Tok_en; Path=/p/ns/app; HttpOnly; SameSite=Lax; Secure");

        let (v, uri, _) = check("/?token=s3cr3t%2DTok_en", &[("x-forwarded-prefix", "bad;prefix")]);
        assert_eq!(uri, "/");
        let Verdict::Allowed { set_cookie: Some(c) } = v else { panic!("{v:?}") };
        assert_eq!(c, "spawner-token=s3cr3t-Tok_en; Path=/; HttpOnly; SameSite=Lax");
    }

    #[test]
    fn the_cookie_is_accepted_and_removed_while_the_apps_cookies_stay() {
        let (v, _, h) = check("/", &[("cookie", "a=1; spawner-token=s3cr3t-Tok_en; b=2")]);
        assert_eq!(v, Verdict::Allowed { set_cookie: None });
        assert_eq!(h["cookie"], "a=1; b=2");
        let (_, _, h) = check("/", &[("cookie", "spawner-token=s3cr3t-Tok_en")]);
        assert!(!h.contains_key("cookie"));
    }

    #[test]
    fn tokens_that_cannot_travel_in_a_cookie_are_refused() {
        assert!(Auth::new("").is_err());
        assert!(Auth::new("a;b").is_err());
        assert!(Auth::new("a b").is_err());
    }

    #[test]
    fn percent_decoding_leaves_malformed_escapes_alone() {
        assert_eq!(percent_decode("a%2Db"), b"a-b");
        assert_eq!(percent_decode("a%2"), b"a%2");
        assert_eq!(percent_decode("%zz+"), b"%zz ");
    }
}
