//! Who may use the public port, and how a warm pod's sidecar learns its backend's token.
//!
//! A pool's warm pod starts unclaimed: its sidecar answers every public request 503 until the
//! controller claims it with `POST /claim` on the admin port, presenting the pod's claim key
//! (mounted from the warm pod's Secret) and handing over the backend's token (none for a backend
//! without auth). From then on it checks that token exactly as a cold backend's sidecar does,
//! and its idle time counts from the claim: the session starts there, not when the pod did. The token is never on disk and
//! never in the pod spec; a pod is claimed by one backend for life (a second claim for the same
//! backend replaces the token, which the controller does only when it lost the first one before
//! handing it out; a claim for another backend is refused).

use std::path::Path;
use std::sync::{Arc, RwLock};

use serde::Deserialize;

use super::auth::{self, Auth};

/// Path of the claim request on the admin port.
pub const CLAIM_PATH: &str = "/claim";

/// Who may use the public port.
#[derive(Debug)]
pub enum Access {
    /// Anyone (auth mode None).
    Open,
    /// Holders of the backend's token.
    Token(Auth),
    /// A warm pod: nobody until claimed, then holders of the token the claim handed over.
    Claimable(Arc<Claim>),
}

/// The body of `POST /claim`.
#[derive(Debug, Deserialize)]
pub struct ClaimRequest {
    /// The claiming backend's uid.
    pub backend: String,
    /// The backend's token; absent for a backend without auth (anyone may then connect).
    #[serde(default)]
    pub token: Option<String>,
    /// The session's settings, for the application (`GET /session`).
    #[serde(default)]
    pub session: Option<super::session::Session>,
}

/// Who may use the public port of a claimed pod.
#[derive(Debug)]
pub enum Claimed {
    /// Holders of the backend's token.
    Token(Arc<Auth>),
    /// Anyone (the backend has no auth).
    Open,
}

/// Why a claim was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("wrong or missing claim key")]
    BadKey,
    #[error("already claimed by another backend")]
    OtherBackend,
    #[error("the token is empty or has characters other than A-Z a-z 0-9 . _ ~ + / = -")]
    BadToken,
}

/// A warm pod's claim state.
pub struct Claim {
    key: Auth,
    claimed: RwLock<Option<(String, Arc<Claimed>)>>,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim").field("claimed", &self.current().is_some()).finish_non_exhaustive()
    }
}

impl Claim {
    /// Unclaimed, with the claim key read from `path`.
    pub fn from_file(path: &Path) -> Result<Self, auth::Error> {
        Ok(Self { key: Auth::from_file(path)?, claimed: RwLock::new(None) })
    }

    /// Unclaimed, with this claim key (tests).
    pub fn new(key: &str) -> Result<Self, auth::Error> {
        Ok(Self { key: Auth::new(key)?, claimed: RwLock::new(None) })
    }

    /// Who may connect, once claimed.
    pub fn current(&self) -> Option<Arc<Claimed>> {
        self.claimed.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(_, claimed)| claimed.clone())
    }

    /// Claims the pod for `request.backend` if `key` is the claim key.
    pub fn claim(&self, key: &[u8], request: &ClaimRequest) -> Result<(), Refusal> {
        if !self.key.is(key) {
            return Err(Refusal::BadKey);
        }
        let access = match &request.token {
            Some(token) => Claimed::Token(Arc::new(Auth::new(token).map_err(|_| Refusal::BadToken)?)),
            None => Claimed::Open,
        };
        let mut claimed = self.claimed.write().unwrap_or_else(|e| e.into_inner());
        if claimed.as_ref().is_some_and(|(backend, _)| *backend != request.backend) {
            return Err(Refusal::OtherBackend);
        }
        *claimed = Some((request.backend.clone(), Arc::new(access)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(backend: &str, token: &str) -> ClaimRequest {
        ClaimRequest { backend: backend.into(), token: Some(token.into()), session: None }
    }

    fn token_of(claim: &Claim) -> Arc<Auth> {
        match &*claim.current().expect("claimed") {
            Claimed::Token(auth) => auth.clone(),
            Claimed::Open => panic!("claimed without a token"),
        }
    }

    #[test]
    fn only_the_claim_key_claims_and_then_the_token_is_the_backends() {
        let claim = Claim::new("claim-key").unwrap();
        assert!(claim.current().is_none());
        assert_eq!(claim.claim(b"wrong", &request("uid-a", "token-a")), Err(Refusal::BadKey));
        assert!(claim.current().is_none());
        claim.claim(b"claim-key", &request("uid-a", "token-a")).unwrap();
        let auth = token_of(&claim);
        assert!(auth.is(b"token-a") && !auth.is(b"claim-key"));
    }

    #[test]
    fn a_claimed_pod_never_serves_another_backend_but_its_own_may_replace_the_token() {
        let claim = Claim::new("k").unwrap();
        claim.claim(b"k", &request("uid-a", "token-a")).unwrap();
        assert_eq!(claim.claim(b"k", &request("uid-b", "token-b")), Err(Refusal::OtherBackend));
        assert!(token_of(&claim).is(b"token-a"));
        claim.claim(b"k", &request("uid-a", "token-a2")).unwrap();
        assert!(token_of(&claim).is(b"token-a2") && !token_of(&claim).is(b"token-a"));
    }

    #[test]
    fn a_token_unusable_in_a_url_or_cookie_is_refused() {
        let claim = Claim::new("k").unwrap();
        assert_eq!(claim.claim(b"k", &request("uid-a", "has space")), Err(Refusal::BadToken));
        assert_eq!(claim.claim(b"k", &request("uid-a", "")), Err(Refusal::BadToken));
        assert!(claim.current().is_none());
    }

    #[test]
    fn a_backend_without_auth_claims_with_no_token_and_is_open() {
        let claim = Claim::new("k").unwrap();
        claim.claim(b"k", &ClaimRequest { backend: "uid-a".into(), token: None, session: None }).unwrap();
        assert!(matches!(*claim.current().unwrap(), Claimed::Open));
    }
}
