//! The backend's access token, kept in a Secret named after it.
//!
//! The token is generated once, when the Secret is created, and never rotated: browsers hold it
//! (cookie, URL) for the backend's whole life.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rand::RngCore;

use crate::controllers::children::Child;
use crate::controllers::context::Context;
use crate::controllers::pod::child_meta;
use crate::crd::{AuthMode, SessionLivedBackend};

impl Child for Secret {
    const KIND: &'static str = "Secret";

    /// Only a backend whose sidecar checks a token has one.
    fn build(backend: &SessionLivedBackend, _: &Context) -> Option<Self> {
        (backend.spec.shape.sidecar.inject && backend.spec.shape.auth.mode == AuthMode::Token)
            .then(|| build_secret(backend))
    }
}

/// Key of the token in the Secret (the file name in the sidecar's mount).
pub const TOKEN_KEY: &str = "token";
/// Key of a warm pod's claim key in its Secret, in the token's place.
pub const CLAIM_KEY: &str = "claim-key";
/// Random bytes in a token (256 bits).
const TOKEN_BYTES: usize = 32;

/// A new token Secret for `backend`, with a fresh random token.
pub fn build_secret(backend: &SessionLivedBackend) -> Secret {
    Secret {
        metadata: child_meta(backend),
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(TOKEN_KEY.to_string(), ByteString(new_token().into_bytes()))])),
        immutable: Some(true),
        ..Secret::default()
    }
}

/// 32 random bytes from the OS-seeded CSPRNG, base64url without padding (43 characters, safe in
/// URLs, cookies and headers).
pub fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    base64url(&bytes)
}

pub(crate) fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        // One output character per 6 bits actually present in the chunk.
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::fixtures::BackendExt;

    #[test]
    fn base64url_matches_rfc4648_test_vectors_without_padding() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(input.as_bytes()), expected);
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn tokens_are_43_url_safe_characters_and_differ() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 43);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
    }

    #[test]
    fn the_secret_is_named_after_the_backend_owned_by_it_and_immutable() {
        let secret = build_secret(&SessionLivedBackend::test());
        assert_eq!(secret.metadata.name.as_deref(), Some("game"));
        assert_eq!(secret.metadata.owner_references.unwrap()[0].uid, "uid-game");
        assert_eq!(secret.immutable, Some(true));
        assert_eq!(secret.data.unwrap()[TOKEN_KEY].0.len(), 43);
    }
}
