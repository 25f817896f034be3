//! The keys that let the controller, and only it, claim a warm pod.
//!
//! Each warm pod gets its own claim key, mounted into its sidecar from the pod's Secret. The
//! controller does not store them (it cannot read Secrets): it derives each one as
//! HMAC-SHA256(controller key, "namespace/pod"), so it can present it again after a restart as
//! long as the controller key is the same. The controller key comes from `--claim-key-file`;
//! without one, each process draws a random key, and the warm pods of an earlier process (whose
//! keys it cannot derive) count as stale and are replaced: the key's id is part of a warm pod's
//! template hash.

use std::path::Path;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The controller key and its public id.
#[derive(Clone)]
pub struct ClaimKeys {
    key: Vec<u8>,
    id: String,
}

impl std::fmt::Debug for ClaimKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimKeys").field("id", &self.id).finish_non_exhaustive()
    }
}

impl Default for ClaimKeys {
    /// A random key, for this process only.
    fn default() -> Self {
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self::new(key)
    }
}

impl ClaimKeys {
    fn new(key: Vec<u8>) -> Self {
        let digest = Sha256::digest(&key);
        let id = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Self { key, id }
    }

    /// The key in `path` (its bytes as they are; at least 16 of them).
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        let key = std::fs::read(path)?;
        if key.len() < 16 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} holds {} bytes; a claim key needs at least 16", path.display(), key.len()),
            ));
        }
        Ok(Self::new(key))
    }

    /// A short public fingerprint of the key (safe to put in labels).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The claim key of the warm pod `namespace/pod`: base64url, usable as a bearer token.
    pub fn for_pod(&self, namespace: &str, pod: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes a key of any length");
        mac.update(namespace.as_bytes());
        mac.update(b"/");
        mac.update(pod.as_bytes());
        crate::controllers::secret::base64url(&mac.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pod_has_its_own_key_derived_again_from_the_same_controller_key() {
        let keys = ClaimKeys::new(b"0123456789abcdef".to_vec());
        let again = ClaimKeys::new(b"0123456789abcdef".to_vec());
        assert_eq!(keys.for_pod("games", "lobby-x2b4c"), again.for_pod("games", "lobby-x2b4c"));
        assert_ne!(keys.for_pod("games", "lobby-x2b4c"), keys.for_pod("games", "lobby-b9k2d"));
        assert_ne!(keys.for_pod("games", "lobby-x2b4c"), keys.for_pod("other", "lobby-x2b4c"));
        assert_eq!(keys.for_pod("games", "lobby-x2b4c").len(), 43);
        assert_eq!(keys.id(), again.id());
    }

    #[test]
    fn random_keys_differ_and_so_do_their_ids() {
        let (a, b) = (ClaimKeys::default(), ClaimKeys::default());
        assert_ne!(a.id(), b.id());
        assert_ne!(a.for_pod("ns", "p"), b.for_pod("ns", "p"));
        assert_eq!(a.id().len(), 12);
        assert!(!format!("{a:?}").contains(&a.for_pod("ns", "p")));
    }

    #[test]
    fn a_short_key_file_is_refused() {
        let path = std::env::temp_dir().join(format!("spawner-claim-key-{}", std::process::id()));
        std::fs::write(&path, b"short").unwrap();
        let err = ClaimKeys::from_file(&path).unwrap_err();
        assert!(err.to_string().contains("at least 16"), "{err}");
        let _ = std::fs::remove_file(&path);
    }
}
