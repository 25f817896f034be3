//! Backend names: derived from connect keys, checked, generated from an image.
//!
//! The same key must always give the same name, on every machine and with every version of the
//! CLI, so that two callers racing to connect meet at one backend: the name is computed with
//! FNV-1a (fixed by its specification, unlike `std`'s hasher), never stored anywhere.

/// Annotation holding the key a `connect`-made backend was made for.
pub const CONNECT_KEY_ANNOTATION: &str = "spawner.dev/connect-key";

/// Longest readable part of the key kept in the name.
const READABLE_MAX: usize = 30;

/// `k-<readable part of the key>-<16 hex digits of its hash>`: a valid DNS-1035 label (the
/// backend's Service is named after it) of at most 49 characters.
pub fn name_for_key(key: &str) -> String {
    let mut readable = String::new();
    for c in key.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_alphanumeric() { c } else { '-' };
        if !(c == '-' && readable.ends_with('-')) {
            readable.push(c);
        }
        if readable.len() >= READABLE_MAX {
            break;
        }
    }
    let readable = readable.trim_matches('-');
    let hash = format!("{:016x}", fnv1a(key.as_bytes()));
    if readable.is_empty() { format!("k-{hash}") } else { format!("k-{readable}-{hash}") }
}

/// Refuses a `connect` key that names nothing: empty or only whitespace (it would still map to
/// a backend, one that every such mistake would then share).
pub fn check_key(key: &str) -> Result<(), super::Error> {
    if key.trim().is_empty() {
        return Err(super::Error::Invalid(format!(
            "invalid connect key {key:?}: it must name the session, user, document or room (not be empty or blank)"
        )));
    }
    Ok(())
}

/// Checks a backend name (or a generated name's prefix, followed by `suffix` more characters)
/// before the API server sees it: the backend's Service is named after it, so it must be a
/// DNS-1035 label, stricter than what the API server accepts for the backend itself.
pub fn check_name(name: &str, suffix: usize) -> Result<String, super::Error> {
    let prefix = suffix > 0;
    let body = if prefix { name.trim_end_matches('-') } else { name };
    let valid = !body.is_empty()
        && body.len() + suffix + usize::from(prefix && body.len() < name.len()) <= 63
        && body.starts_with(|c: char| c.is_ascii_lowercase())
        && !body.ends_with('-')
        && body.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(name.to_owned())
    } else {
        let what = if prefix { "name prefix" } else { "backend name" };
        Err(super::Error::Invalid(format!(
            "invalid {what} {name:?}: use lowercase letters, digits and '-', start with a letter, \
             at most 63 characters in all (the backend's Service is named after it)"
        )))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

/// The part of an image reference that names it, for default generated names:
/// `localhost/spawner/demo-drop-four:0.1.0` → `demo-drop-four-`.
/// `<pool>-session-`: never the shape of the pool's own warm pods (`<pool>-<5 characters>`),
/// so a backend that starts cold (its pod named after it) cannot collide with one.
pub fn generate_name_for_pool(pool: &str) -> String {
    format!("{pool}-session-")
}

pub fn generate_name_for_image(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let base = last.split(':').next().unwrap_or(last);
    let mut out: String =
        base.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(40).collect();
    out = out.trim_matches('-').to_owned();
    if out.is_empty() || !out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out.insert_str(0, "backend-");
        out = out.trim_end_matches('-').to_owned();
    }
    out.push('-');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_1035_label(name: &str) -> bool {
        name.len() <= 63
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && !name.ends_with('-')
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }

    #[test]
    fn the_same_key_always_gives_the_same_name() {
        // Pinned: changing the function would strand every backend made by an older CLI.
        assert_eq!(name_for_key("room-42"), "k-room-42-b57038d1b56f17b3");
        assert_eq!(name_for_key("room-42"), name_for_key("room-42"));
    }

    #[test]
    fn different_keys_give_different_names_even_when_they_read_alike() {
        assert_ne!(name_for_key("Room 42"), name_for_key("room-42"));
        assert_ne!(name_for_key("a/b"), name_for_key("a_b"));
    }

    #[test]
    fn any_key_gives_a_valid_service_name() {
        let long = "x".repeat(500);
        for key in ["", "---", "Ünïcødé 🎲", "user@example.com/doc#1", &long, "42", "-a-"] {
            let name = name_for_key(key);
            assert!(is_dns_1035_label(&name), "{key:?} gave {name:?}");
        }
    }

    #[test]
    fn a_connect_key_must_name_something() {
        for blank in ["", " ", "\t\n "] {
            let error = check_key(blank).unwrap_err();
            assert!(matches!(error, super::super::Error::Invalid(_)), "refused before the API server: {error:?}");
            assert_eq!(crate::cli::Error::from(error).exit_code(), 2, "a usage error for the CLI");
            let error = check_key(blank).unwrap_err();
            assert!(error.to_string().starts_with("invalid connect key"), "{error}");
        }
        assert!(check_key(" room 42 ").is_ok());
    }

    #[test]
    fn names_must_be_able_to_name_a_service() {
        assert!(check_name("game-1", 0).is_ok());
        assert!(check_name("game-", 5).is_ok());
        for bad in ["Game", "1game", "a.b", "a_b", "game-", ""] {
            assert!(check_name(bad, 0).is_err(), "{bad:?}");
        }
        assert!(check_name(&"a".repeat(64), 0).is_err());
        assert!(check_name(&format!("{}-", "a".repeat(57)), 5).is_ok());
        assert!(check_name(&format!("{}-", "a".repeat(58)), 5).is_err());
    }

    #[test]
    fn generated_names_come_from_the_image_name() {
        assert_eq!(generate_name_for_image("localhost/spawner/demo-drop-four:0.1.0"), "demo-drop-four-");
        assert_eq!(generate_name_for_image("nginx"), "nginx-");
        assert_eq!(generate_name_for_image("reg:5000/team/App_Server@sha256:abc"), "app-server-");
        assert_eq!(generate_name_for_image("r/9lives:1"), "backend-9lives-");
    }
}
