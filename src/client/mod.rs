//! The operations a client performs on backends — create, get, delete, wait for Ready or for
//! deletion, connect by key, and the URL with its token — shared by the `spawner` CLI, the
//! xtask's demo and the tests, and ready for an API server. Errors are typed ([`Error`]) and
//! keep their sources.

mod error;
pub mod names;
mod request;
mod state;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};

pub use error::Error;
use error::status_code;
use names::{CONNECT_KEY_ANNOTATION, check_key, name_for_key};
pub use request::{BackendRequest, Naming, Source};
pub use state::{State, condition, phase_of, state, why_not_ready};

use crate::crd::{AuthMode, Phase, SessionLivedBackend, SessionLivedBackendSpec};

/// Key of the token in the backend's Secret (named like the backend).
pub const TOKEN_KEY: &str = "token";

/// The backends of one namespace, and the operations on them.
#[derive(Clone)]
pub struct Backends {
    pub client: Client,
    pub namespace: String,
}

impl Backends {
    pub fn new(client: Client, namespace: impl Into<String>) -> Backends {
        Backends { client, namespace: namespace.into() }
    }

    pub fn backends(&self) -> Api<SessionLivedBackend> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn not_found(&self, name: &str) -> Error {
        Error::NotFound { name: name.into(), namespace: self.namespace.clone() }
    }

    /// Gets one backend; a missing one is [`Error::NotFound`].
    pub async fn get(&self, name: &str) -> Result<SessionLivedBackend, Error> {
        self.backends()
            .get_opt(name)
            .await
            .map_err(|e| Error::api(format!("cannot get backend {name:?} in namespace {:?}", self.namespace), e))?
            .ok_or_else(|| self.not_found(name))
    }

    /// Every backend in the namespace, read from the API server: it includes one created a moment
    /// ago, which a watch-fed cache may not show yet.
    pub async fn list(&self) -> Result<Vec<SessionLivedBackend>, Error> {
        let listed = self
            .backends()
            .list(&ListParams::default())
            .await
            .map_err(|e| Error::api(format!("cannot list backends in namespace {:?}", self.namespace), e))?;
        Ok(listed.items)
    }

    /// Creates a backend; an existing name is [`Error::AlreadyExists`].
    pub async fn create(&self, request: &BackendRequest) -> Result<SessionLivedBackend, Error> {
        let backend = request.to_backend();
        match self.backends().create(&PostParams::default(), &backend).await {
            Ok(created) => Ok(created),
            Err(e) if status_code(&e) == Some(409) => Err(Error::AlreadyExists {
                name: backend.metadata.name.unwrap_or_default(),
                namespace: self.namespace.clone(),
            }),
            Err(e) => Err(Error::api(format!("cannot create a backend in namespace {:?}", self.namespace), e)),
        }
    }

    /// Deletes a backend (its Pod, Service and Secret go with it by garbage collection).
    pub async fn delete(&self, name: &str) -> Result<SessionLivedBackend, Error> {
        match self.backends().delete(name, &DeleteParams::background()).await {
            Ok(either) => Ok(either.left_or_else(|_| SessionLivedBackend::new(name, self.placeholder_spec()))),
            Err(e) if status_code(&e) == Some(404) => Err(self.not_found(name)),
            Err(e) => Err(Error::api(format!("cannot delete backend {name:?} in namespace {:?}", self.namespace), e)),
        }
    }

    fn placeholder_spec(&self) -> SessionLivedBackendSpec {
        BackendRequest::new(Naming::Name(String::new()), "").to_backend().spec
    }

    /// Waits until the backend is Ready; fails as soon as it is Failed or gone.
    pub async fn wait_ready(&self, name: &str, timeout: Duration) -> Result<SessionLivedBackend, Error> {
        // A name that never existed is NotFound, not "deleted while waiting".
        let current = self.get(name).await?;
        match state(&current) {
            State::Ready => return Ok(current),
            State::Over => return Err(self.failed(&current)),
            State::Starting => {}
        }
        let watch = await_condition(self.backends(), name, |obj: Option<&SessionLivedBackend>| match obj {
            None => true,
            Some(backend) => matches!(state(backend), State::Ready | State::Over),
        });
        let waited = match tokio::time::timeout(timeout, watch).await {
            Ok(result) => result.map_err(|source| Error::Watch {
                action: format!("cannot watch backend {name:?} in namespace {:?}", self.namespace),
                source,
            })?,
            Err(_) => return Err(self.not_ready_after(name, timeout).await),
        };
        let Some(backend) = waited else {
            return Err(Error::Deleted { name: name.into(), namespace: self.namespace.clone() });
        };
        match state(&backend) {
            State::Ready => Ok(backend),
            _ => Err(self.failed(&backend)),
        }
    }

    /// Waits until the backend (this incarnation of it, if `uid` is given) is gone.
    pub async fn wait_deleted(&self, name: &str, uid: Option<&str>, timeout: Duration) -> Result<(), Error> {
        let uid = match uid {
            Some(uid) => uid.to_owned(),
            None => match self.backends().get_opt(name).await {
                Ok(Some(backend)) => backend.uid().unwrap_or_default(),
                Ok(None) => return Ok(()),
                Err(e) => return Err(Error::api(format!("cannot get backend {name:?}"), e)),
            },
        };
        let watch = await_condition(self.backends(), name, conditions::is_deleted(&uid));
        match tokio::time::timeout(timeout, watch).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(Error::Watch { action: format!("cannot watch backend {name:?}"), source }),
            Err(_) => Err(Error::Timeout {
                name: name.into(),
                namespace: self.namespace.clone(),
                state: "deleted",
                phase: Phase::Terminating.as_str(),
                why: None,
                timeout,
            }),
        }
    }

    fn failed(&self, backend: &SessionLivedBackend) -> Error {
        let name = backend.name_any();
        if backend.metadata.deletion_timestamp.is_some() {
            return Error::Deleted { name, namespace: self.namespace.clone() };
        }
        let message = why_not_ready(backend).unwrap_or_else(|| format!("phase {}", phase_of(backend)));
        Error::Failed { name, namespace: self.namespace.clone(), message }
    }

    /// The timeout of a wait for Ready, saying what the backend is still waiting for.
    async fn not_ready_after(&self, name: &str, timeout: Duration) -> Error {
        let (phase, why) = match self.get(name).await {
            Ok(backend) => (phase_of(&backend), why_not_ready(&backend)),
            Err(Error::NotFound { .. }) => ("gone", None),
            Err(_) => ("unknown", None),
        };
        Error::Timeout { name: name.into(), namespace: self.namespace.clone(), state: "Ready", phase, why, timeout }
    }

    /// The URL a browser opens: `status.url`, with `?token=` when the backend requires one.
    pub async fn access_url(&self, backend: &SessionLivedBackend) -> Result<String, Error> {
        let name = backend.name_any();
        let url = backend.status.as_ref().and_then(|s| s.url.clone()).ok_or_else(|| Error::NoUrl {
            name: name.clone(),
            namespace: self.namespace.clone(),
            phase: phase_of(backend),
        })?;
        if backend.spec.shape.auth.mode == AuthMode::None {
            return Ok(url);
        }
        let token = self.token(&name).await?;
        Ok(url_with_token(&url, &token))
    }

    /// The backend's access token, from its Secret.
    pub async fn token(&self, name: &str) -> Result<String, Error> {
        let token_error =
            |reason: String| Error::Token { name: name.into(), namespace: self.namespace.clone(), reason };
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
        let secret = secrets
            .get_opt(name)
            .await
            .map_err(|e| token_error(Error::api("reading its Secret", e).to_string()))?
            .ok_or_else(|| token_error(format!("Secret {name:?} does not exist (yet)")))?;
        let bytes = secret
            .data
            .and_then(|mut data| data.remove(TOKEN_KEY))
            .ok_or_else(|| token_error(format!("Secret {name:?} has no key {TOKEN_KEY:?}")))?;
        String::from_utf8(bytes.0).map_err(|_| token_error("the token is not UTF-8".into()))
    }

    /// Get-or-create by key: the same key reaches the same live backend, however many callers
    /// race. Returns the Ready backend.
    pub async fn connect(
        &self,
        key: &str,
        request: &BackendRequest,
        timeout: Duration,
    ) -> Result<SessionLivedBackend, Error> {
        self.connect_until(key, request, timeout, Until::Ready).await.map(|(backend, _)| backend)
    }

    /// [`Backends::connect`] that answers as soon as the key's backend exists and is not over
    /// (it may still be starting), and says whether this call created it. `timeout` bounds the
    /// replacement of a failed backend.
    pub async fn connect_started(
        &self,
        key: &str,
        request: &BackendRequest,
        timeout: Duration,
    ) -> Result<(SessionLivedBackend, bool), Error> {
        self.connect_until(key, request, timeout, Until::Started).await
    }

    async fn connect_until(
        &self,
        key: &str,
        request: &BackendRequest,
        timeout: Duration,
        until: Until,
    ) -> Result<(SessionLivedBackend, bool), Error> {
        check_key(key)?;
        let name = name_for_key(key);
        let mut request = request.clone();
        request.naming = Naming::Name(name.clone());
        request.annotations.insert(CONNECT_KEY_ANNOTATION.into(), key.into());
        let deadline = tokio::time::Instant::now() + timeout;
        // A backend this call created that then fails is reported, not replaced: the same spec
        // would most likely fail again.
        let mut created_uid: Option<String> = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Err(self.not_ready_after(&name, timeout).await);
            }
            let existing = match self.backends().get_opt(&name).await {
                Ok(existing) => existing,
                Err(e) => return Err(Error::api(format!("cannot get backend {name:?}"), e)),
            };
            let Some(backend) = existing else {
                match self.create(&request).await {
                    Ok(created) => created_uid = created.uid(),
                    // Another caller won the race: the next round waits for theirs.
                    Err(Error::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e),
                }
                continue;
            };
            if backend.annotations().get(CONNECT_KEY_ANNOTATION).map(String::as_str) != Some(key) {
                return Err(Error::KeyCollision { key: key.into(), name, namespace: self.namespace.clone() });
            }
            let ours = created_uid.is_some() && backend.uid() == created_uid;
            match state(&backend) {
                State::Ready => return Ok((backend, ours)),
                State::Starting if until == Until::Started => return Ok((backend, ours)),
                State::Starting => match self.wait_ready(&name, left).await {
                    Ok(ready) => return Ok((ready, ours)),
                    Err(e @ Error::Failed { .. }) if ours => return Err(e),
                    // Said with the caller's timeout, not what was left of it.
                    Err(Error::Timeout { name, namespace, state, phase, why, .. }) => {
                        return Err(Error::Timeout { name, namespace, state, phase, why, timeout });
                    }
                    // It failed or went away while we waited: look again (and replace it).
                    Err(Error::Failed { .. } | Error::Deleted { .. } | Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                },
                State::Over if ours && backend.metadata.deletion_timestamp.is_none() => {
                    return Err(self.failed(&backend));
                }
                State::Over => {
                    let uid = backend.uid().unwrap_or_default();
                    if backend.metadata.deletion_timestamp.is_none() {
                        // A Failed backend never recovers. The UID precondition makes sure a
                        // racing caller's fresh replacement is never the one deleted.
                        let params = DeleteParams {
                            preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
                            ..DeleteParams::background()
                        };
                        match self.backends().delete(&name, &params).await {
                            Ok(_) => {}
                            Err(e) if matches!(status_code(&e), Some(404 | 409)) => {}
                            Err(e) => return Err(Error::api(format!("cannot delete failed backend {name:?}"), e)),
                        }
                    }
                    self.wait_deleted(&name, Some(&uid), left).await?;
                }
            }
        }
    }
}

/// How far [`Backends::connect_until`] goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Until {
    Started,
    Ready,
}

/// `url` with the backend's token as the `?token=` a browser brings (the sidecar turns it into
/// a cookie).
pub fn url_with_token(url: &str, token: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}token={}", query_escape(token))
}

/// Percent-encodes everything but unreserved characters (tokens are URL-safe already; this is
/// for safety should that change).
fn query_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_becomes_a_backend_with_one_application_container() {
        let mut request = BackendRequest::new(Naming::GenerateName("game-".into()), "example/game:1");
        request.env = vec![("MODE".into(), "fast".into())];
        request.grace_period_seconds = 5;
        let backend = request.to_backend();
        assert_eq!(backend.metadata.generate_name.as_deref(), Some("game-"));
        assert_eq!(backend.metadata.name, None);
        let container = &backend.spec.template.as_ref().unwrap().containers[0];
        assert_eq!(container.image.as_deref(), Some("example/game:1"));
        assert_eq!(container.env.as_ref().unwrap()[0].name, "MODE");
        assert_eq!(backend.spec.grace_period_seconds, 5);
        let json = serde_json::to_value(&backend).unwrap();
        assert_eq!(json["apiVersion"], "spawner.dev/v1");
        assert_eq!(json["kind"], "SessionLivedBackend");
    }

    fn with_status(status: crate::crd::SessionLivedBackendStatus) -> SessionLivedBackend {
        let mut backend = BackendRequest::new(Naming::Name("b".into()), "img").to_backend();
        backend.status = Some(status);
        backend
    }

    #[test]
    fn why_a_backend_is_not_ready_is_its_reason_and_message() {
        let backend = with_status(crate::crd::SessionLivedBackendStatus {
            phase: Some(Phase::Scheduled),
            reason: Some("ErrImagePull".into()),
            message: Some("container application: failed to pull image \"x\"".into()),
            ..Default::default()
        });
        assert_eq!(
            why_not_ready(&backend).as_deref(),
            Some("ErrImagePull: container application: failed to pull image \"x\"")
        );
        let error = Error::Timeout {
            name: "b".into(),
            namespace: "ns".into(),
            state: "Ready",
            phase: phase_of(&backend),
            why: why_not_ready(&backend),
            timeout: Duration::from_secs(40),
        };
        assert_eq!(
            error.to_string(),
            "backend \"b\" in namespace \"ns\" is not Ready after 40s (phase Scheduled): ErrImagePull: container \
             application: failed to pull image \"x\""
        );
    }

    #[test]
    fn a_ready_backend_has_nothing_to_explain_and_one_never_reported_on_blames_the_controller() {
        let ready =
            with_status(crate::crd::SessionLivedBackendStatus { phase: Some(Phase::Ready), ..Default::default() });
        assert_eq!(why_not_ready(&ready), None);
        let unseen = BackendRequest::new(Naming::Name("b".into()), "img").to_backend();
        assert!(why_not_ready(&unseen).unwrap().contains("spawner-controller"));
    }

    #[test]
    fn an_unset_startup_timeout_is_left_to_the_crd_rule_as_in_a_manifest() {
        let mut request = BackendRequest::new(Naming::Name("b".into()), "img");
        request.max_lifetime_seconds = Some(20);
        let backend = request.to_backend();
        assert_eq!(serde_json::to_value(&backend).unwrap()["spec"].get("startupTimeoutSeconds"), None);
        assert_eq!(backend.spec.effective_startup_timeout_seconds(), 20);
    }

    #[test]
    fn tokens_are_escaped_in_the_query() {
        assert_eq!(query_escape("abc-_.~XYZ09"), "abc-_.~XYZ09");
        assert_eq!(query_escape("a+b/c="), "a%2Bb%2Fc%3D");
    }
}
