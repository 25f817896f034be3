//! Who may use the public port, and how a warm pod's sidecar learns its backend's token.
//!
//! A pool's warm pod starts with no token: its sidecar answers every public request 503 until
//! the controller claims it with `POST /claim` on the admin port, presenting the pod's claim key
//! (mounted from the warm pod's Secret) and handing over the backend's token. From then on it
//! checks that token exactly as a cold backend's sidecar does. The token is never on disk and
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
    /// The backend's token.
    pub token: String,
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
    claimed: RwLock<Option<(String, Arc<Auth>)>>,
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

    /// The token's checker once claimed.
    pub fn current(&self) -> Option<Arc<Auth>> {
        self.claimed.read().unwrap_or_else(|e| e.into_inner()).as_ref().map(|(_, auth)| auth.clone())
    }

    /// Claims the pod for `request.backend` if `key` is the claim key.
    pub fn claim(&self, key: &[u8], request: &ClaimRequest) -> Result<(), Refusal> {
        if !self.key.is(key) {
            return Err(Refusal::BadKey);
        }
        let auth = Auth::new(&request.token).map_err(|_| Refusal::BadToken)?;
        let mut claimed = self.claimed.write().unwrap_or_else(|e| e.into_inner());
        if claimed.as_ref().is_some_and(|(backend, _)| *backend != request.backend) {
            return Err(Refusal::OtherBackend);
        }
        *claimed = Some((request.backend.clone(), Arc::new(auth)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(backend: &str, token: &str) -> ClaimRequest {
        ClaimRequest { backend: backend.into(), token: token.into() }
    }

    #[test]
    fn only_the_claim_key_claims_and_then_the_token_is_the_backends() {
        let claim = Claim::new("claim-key").unwrap();
        assert!(claim.current().is_none());
        assert_eq!(claim.claim(b"wrong", &request("uid-a", "token-a")), Err(Refusal::BadKey));
        assert!(claim.current().is_none());
        claim.claim(b"claim-key", &request("uid-a", "token-a")).unwrap();
        let auth = claim.current().expect("claimed");
        assert!(auth.is(b"token-a") && !auth.is(b"claim-key"));
    }

    #[test]
    fn a_claimed_pod_never_serves_another_backend_but_its_own_may_replace_the_token() {
        let claim = Claim::new("k").unwrap();
        claim.claim(b"k", &request("uid-a", "token-a")).unwrap();
        assert_eq!(claim.claim(b"k", &request("uid-b", "token-b")), Err(Refusal::OtherBackend));
        assert!(claim.current().unwrap().is(b"token-a"));
        claim.claim(b"k", &request("uid-a", "token-a2")).unwrap();
        assert!(claim.current().unwrap().is(b"token-a2") && !claim.current().unwrap().is(b"token-a"));
    }

    #[test]
    fn a_token_unusable_in_a_url_or_cookie_is_refused() {
        let claim = Claim::new("k").unwrap();
        assert_eq!(claim.claim(b"k", &request("uid-a", "has space")), Err(Refusal::BadToken));
        assert_eq!(claim.claim(b"k", &request("uid-a", "")), Err(Refusal::BadToken));
        assert!(claim.current().is_none());
    }
}
