//! API keys: who may call `spawner-api`, in which namespaces, from which pools, how many
//! backends at once.
//!
//! A key is `spk_<id>_<secret>`: `id` (12 hex digits) names its record, `secret` (256 random
//! bits) proves it. The records live in one Secret, `spawner-system/spawner-api-keys`, one data
//! entry per id holding [`KeyRecord`] as JSON with the secret's SHA-256, never the secret: a
//! copy of the Secret does not let anyone call the API. (Plain SHA-256 suffices because the
//! secret is random, not a password.) One Secret, so that the API's ServiceAccount reads it by
//! name and no other Secret of Spawner's namespace.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The Secret holding every key's record.
pub const KEYS_SECRET: &str = "spawner-api-keys";
/// Prefix of every key, so a leaked one is recognizable (secret scanners, logs).
const PREFIX: &str = "spk_";
/// Hex digits of a key's id.
const ID_LEN: usize = 12;
/// The pool scope that admits every pool.
pub const ANY_POOL: &str = "*";

/// What a key may do, as stored (JSON in the Secret's data entry named by its id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRecord {
    /// A label for people ("lobby", "ci").
    pub name: String,
    /// SHA-256 of the secret part, hex.
    pub sha256: String,
    /// Namespaces it may use.
    pub namespaces: Vec<String>,
    /// Pools it may make backends from (`*`: any).
    pub pools: Vec<String>,
    /// Live backends it may have at once.
    pub max_backends: u32,
    /// When it was made (RFC 3339).
    pub created: String,
}

impl KeyRecord {
    pub fn allows_namespace(&self, namespace: &str) -> bool {
        self.namespaces.iter().any(|n| n == namespace)
    }

    pub fn allows_pool(&self, pool: &str) -> bool {
        self.pools.iter().any(|p| p == pool || p == ANY_POOL)
    }
}

/// A key the caller presented and the keyring accepted.
#[derive(Clone, Debug)]
pub struct Caller {
    pub id: String,
    pub record: KeyRecord,
}

/// A newly made key: shown once, stored as its record.
pub struct NewKey {
    pub id: String,
    /// The whole key, `spk_<id>_<secret>`: give it to the web application.
    pub key: String,
    pub record: KeyRecord,
}

/// Makes a key with a fresh id and secret.
pub fn generate(name: &str, namespaces: Vec<String>, pools: Vec<String>, max_backends: u32) -> NewKey {
    let mut id_bytes = [0u8; ID_LEN / 2];
    rand::rng().fill_bytes(&mut id_bytes);
    let id: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
    let secret = crate::controllers::secret::new_token();
    let record = KeyRecord {
        name: name.into(),
        sha256: sha256_hex(&secret),
        namespaces,
        pools,
        max_backends,
        created: jiff::Timestamp::now().to_string(),
    };
    NewKey { key: format!("{PREFIX}{id}_{secret}"), id, record }
}

fn sha256_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits `spk_<id>_<secret>`.
fn parse(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_at_checked(ID_LEN)?;
    let secret = secret.strip_prefix('_')?;
    (id.bytes().all(|b| b.is_ascii_hexdigit()) && !secret.is_empty()).then_some((id, secret))
}

/// The records by id, as the keys Secret has them now.
#[derive(Clone, Default)]
pub struct Keyring {
    records: Arc<RwLock<BTreeMap<String, KeyRecord>>>,
}

impl Keyring {
    /// The caller behind `key`, if it is one of ours. Unknown ids and wrong secrets are alike
    /// to the caller; the comparison takes the same time however much of the hash matches.
    pub fn verify(&self, key: &str) -> Option<Caller> {
        let (id, secret) = parse(key)?;
        let record = self.records.read().expect("keyring lock").get(id).cloned()?;
        let presented = sha256_hex(secret);
        bool::from(presented.as_bytes().ct_eq(record.sha256.as_bytes())).then(|| Caller { id: id.to_owned(), record })
    }

    /// Replaces the records with the Secret's (a missing Secret: no keys). Entries that do not
    /// parse are skipped and logged by id, never by content.
    pub fn load(&self, secret: Option<&Secret>) {
        let records = secret.map(records_of).unwrap_or_default();
        *self.records.write().expect("keyring lock") = records;
    }

    pub fn len(&self) -> usize {
        self.records.read().expect("keyring lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The records in the keys Secret.
pub fn records_of(secret: &Secret) -> BTreeMap<String, KeyRecord> {
    let mut out = BTreeMap::new();
    for (id, ByteString(bytes)) in secret.data.iter().flatten() {
        match serde_json::from_slice::<KeyRecord>(bytes) {
            Ok(record) => {
                out.insert(id.clone(), record);
            }
            Err(e) => tracing::warn!(id, error = %e, "skipping an API key record that does not parse"),
        }
    }
    out
}

/// The Secret data entry that stores `record`.
pub fn entry(record: &KeyRecord) -> ByteString {
    ByteString(serde_json::to_vec(record).expect("a key record serializes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_with(new: &NewKey) -> Keyring {
        let secret =
            Secret { data: Some(BTreeMap::from([(new.id.clone(), entry(&new.record))])), ..Default::default() };
        let ring = Keyring::default();
        ring.load(Some(&secret));
        ring
    }

    #[test]
    fn a_generated_key_verifies_and_its_record_keeps_only_the_hash() {
        let new = generate("lobby", vec!["default".into()], vec!["drop-four".into()], 5);
        assert!(new.key.starts_with("spk_") && new.key.len() == 4 + 12 + 1 + 43, "{}", new.key);
        let stored = String::from_utf8(entry(&new.record).0).unwrap();
        let secret = new.key.rsplit('_').next().unwrap();
        assert!(!stored.contains(secret), "the secret itself is not stored: {stored}");
        let caller = ring_with(&new).verify(&new.key).expect("the key verifies");
        assert_eq!(caller.id, new.id);
        assert!(caller.record.allows_namespace("default") && !caller.record.allows_namespace("other"));
        assert!(caller.record.allows_pool("drop-four") && !caller.record.allows_pool("other"));
    }

    #[test]
    fn wrong_secrets_unknown_ids_and_malformed_keys_are_refused() {
        let new = generate("a", vec!["default".into()], vec![ANY_POOL.into()], 1);
        let ring = ring_with(&new);
        let mut wrong = new.key.clone();
        wrong.pop();
        wrong.push(if new.key.ends_with('A') { 'B' } else { 'A' });
        let other = generate("b", vec![], vec![], 1);
        for key in
            [wrong.as_str(), other.key.as_str(), "", "spk_", "Bearer x", "spk_0123456789ab", "spk_zzzzzzzzzzzz_x"]
        {
            assert!(ring.verify(key).is_none(), "{key:?} was accepted");
        }
        assert!(ring.verify(&new.key).unwrap().record.allows_pool("anything"));
    }

    #[test]
    fn revoking_is_loading_the_secret_without_the_entry() {
        let new = generate("a", vec!["default".into()], vec![ANY_POOL.into()], 1);
        let ring = ring_with(&new);
        ring.load(Some(&Secret::default()));
        assert!(ring.verify(&new.key).is_none());
        assert!(ring.is_empty());
    }
}

/// Making, listing and revoking keys with an administrator's credentials (the CLI's
/// `spawner api-key`, and the tests).
pub mod admin {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::api::rbac::v1::RoleBinding;
    use kube::Client;
    use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

    use super::{KEYS_SECRET, KeyRecord, NewKey, entry, generate, records_of};
    use crate::client::Error;
    use crate::names::{MANAGED_BY_LABEL, MANAGED_BY_VALUE, SYSTEM_NAMESPACE};

    fn secrets(client: &Client) -> Api<Secret> {
        Api::namespaced(client.clone(), SYSTEM_NAMESPACE)
    }

    /// Makes a key for `namespaces` and `pools`, and grants spawner-api those namespaces
    /// (a RoleBinding in each, see [`crate::rbac::served_binding`]).
    pub async fn create(
        client: &Client,
        name: &str,
        namespaces: Vec<String>,
        pools: Vec<String>,
        max_backends: u32,
    ) -> Result<NewKey, Error> {
        if namespaces.iter().any(|n| n == SYSTEM_NAMESPACE) {
            return Err(Error::Invalid(format!(
                "an API key cannot serve {SYSTEM_NAMESPACE:?}: Spawner's own namespace holds its keys"
            )));
        }
        if namespaces.is_empty() || pools.is_empty() {
            return Err(Error::Invalid("an API key needs at least one namespace and one pool".into()));
        }
        let new = generate(name, namespaces, pools, max_backends);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(KEYS_SECRET.into()),
                labels: Some([(MANAGED_BY_LABEL.to_string(), MANAGED_BY_VALUE.to_string())].into()),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(new.id.clone(), entry(&new.record))])),
            ..Default::default()
        };
        match secrets(client).create(&PostParams::default(), &secret).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {
                // One entry added by a merge patch: racing creates of other keys are kept.
                let patch = serde_json::json!({"data": {new.id.clone(): entry(&new.record)}});
                secrets(client)
                    .patch(KEYS_SECRET, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(|e| Error::api("cannot add the key to the keys Secret", e))?;
            }
            Err(e) => return Err(Error::api("cannot create the keys Secret", e)),
        }
        let role = crate::rbac::api_role();
        for namespace in &new.record.namespaces {
            let binding = crate::rbac::served_binding(role, namespace);
            Api::<RoleBinding>::namespaced(client.clone(), namespace)
                .patch(role.name, &PatchParams::apply("spawner").force(), &Patch::Apply(&binding))
                .await
                .map_err(|e| Error::api(format!("cannot grant spawner-api namespace {namespace:?}"), e))?;
        }
        Ok(new)
    }

    /// Every key's id and record.
    pub async fn list(client: &Client) -> Result<BTreeMap<String, KeyRecord>, Error> {
        let secret =
            secrets(client).get_opt(KEYS_SECRET).await.map_err(|e| Error::api("cannot read the keys Secret", e))?;
        Ok(secret.as_ref().map(records_of).unwrap_or_default())
    }

    /// Revokes the key with `id` (spawner-api refuses it within moments: it watches the Secret).
    pub async fn revoke(client: &Client, id: &str) -> Result<KeyRecord, Error> {
        let Some(record) = list(client).await?.remove(id) else {
            return Err(Error::Invalid(format!("no API key with id {id:?} (`spawner api-key list` shows them)")));
        };
        let patch = serde_json::json!({"data": {id: null}});
        secrets(client)
            .patch(KEYS_SECRET, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::api("cannot remove the key from the keys Secret", e))?;
        Ok(record)
    }
}
