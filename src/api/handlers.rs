//! The API's routes: parse, authenticate, check the key's scope, act through the client
//! library, answer.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use kube::ResourceExt;
use kube::api::Api;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::keys::Caller;
use super::limits::{API_KEY_LABEL, Recent};
use super::types::{Backend, BackendList, ConnectRequest, CreateRequest};
use super::{Body, MAX_BODY, MAX_WAIT_SECONDS, PREFIX, Service, event_stream, json_response, openapi, stream};
use crate::client::names::{CONNECT_KEY_ANNOTATION, check_name, generate_name_for_pool, name_for_key};
use crate::client::{BackendRequest, Backends, Naming, State, phase_of, state, url_with_token, why_not_ready};
use crate::crd::{SessionLivedBackend, SessionLivedBackendPool};

/// The longest connect key: an annotation value could be longer, but no room code needs it.
pub const MAX_KEY_LEN: usize = 253;
/// How long a connect may spend replacing its key's failed backend when the caller does not
/// wait for Ready.
const REPLACE_TIMEOUT: Duration = Duration::from_secs(30);

type Answer = Result<Response<Body>, ApiError>;

/// Routes a request; returns the route's name (for metrics) and the answer.
pub async fn route(service: &Service, request: Request<Incoming>) -> (&'static str, Answer) {
    let path = request.uri().path().to_owned();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return ("other", Err(ApiError::not_found(format!("no such path {path:?}: the API is under {PREFIX}/"))));
    };
    if rest == "/openapi.json" {
        return ("openapi", only(&request, &Method::GET).map(|()| json_response(StatusCode::OK, &openapi::document())));
    }
    let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return ("other", Err(ApiError::not_found(format!("no such path {path:?}"))));
    }
    let (route, namespace, target) = match segments.as_slice() {
        ["namespaces", ns, "connect"] => ("connect", *ns, Target::Connect),
        ["namespaces", ns, "backends"] => ("backends", *ns, Target::Backends),
        ["namespaces", ns, "backends", name] => ("backend", *ns, Target::Backend(name.to_string())),
        ["namespaces", ns, "backends", name, "status"] => ("status", *ns, Target::Status(name.to_string())),
        _ => return ("other", Err(ApiError::not_found(format!("no such path {path:?}")))),
    };
    let namespace = namespace.to_owned();
    let answer = async {
        let caller = authenticate(service, &request)?;
        if !caller.record.allows_namespace(&namespace) {
            return Err(ApiError::forbidden(format!("this API key may not use namespace {namespace:?}")));
        }
        let call = Call { service, caller, backends: Backends::new(service.client.clone(), namespace.clone()) };
        match (target, request.method().clone()) {
            (Target::Connect, Method::POST) => {
                let wait = wait_of(request.uri().query())?;
                call.connect(read_json(request).await?, wait).await
            }
            (Target::Backends, Method::POST) => {
                let wait = wait_of(request.uri().query())?;
                call.create(read_json(request).await?, wait).await
            }
            (Target::Backends, Method::GET) => call.list().await,
            (Target::Backend(name), Method::GET) => call.get(&name).await,
            (Target::Backend(name), Method::DELETE) => call.delete(&name).await,
            (Target::Status(name), Method::GET) => call.status(&name, last_event_id(&request)).await,
            (_, method) => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on {path:?}"),
            )),
        }
    }
    .await;
    (route, answer)
}

enum Target {
    Connect,
    Backends,
    Backend(String),
    Status(String),
}

fn only(request: &Request<Incoming>, method: &Method) -> Result<(), ApiError> {
    if request.method() == method {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("use {method}")))
    }
}

fn authenticate(service: &Service, request: &Request<Incoming>) -> Result<Caller, ApiError> {
    let key = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(ApiError::unauthorized)?;
    service.keys.verify(key.trim()).ok_or_else(ApiError::unauthorized)
}

/// `?wait=SECONDS`, 0 when absent.
fn wait_of(query: Option<&str>) -> Result<Duration, ApiError> {
    let query = query.unwrap_or_default();
    let Some(value) = query.split('&').find_map(|pair| pair.strip_prefix("wait=")) else {
        return Ok(Duration::ZERO);
    };
    match value.parse::<u64>() {
        Ok(seconds) if seconds <= MAX_WAIT_SECONDS => Ok(Duration::from_secs(seconds)),
        _ => Err(ApiError::bad_request(format!(
            "invalid wait {value:?}: seconds to wait for Ready, 0 to {MAX_WAIT_SECONDS}"
        ))),
    }
}

fn last_event_id(request: &Request<Incoming>) -> u32 {
    request
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The most of an oversized body read (and dropped) before answering 413: a client, or nginx,
/// still sending it when the answer comes would see its connection reset instead of the 413.
/// nginx refuses more than this itself.
const DISCARD_MAX: u64 = 1024 * 1024;

/// The body as `T`: 413 past [`MAX_BODY`], 400 naming what is wrong (unknown fields too).
async fn read_json<T: DeserializeOwned>(request: Request<Incoming>) -> Result<T, ApiError> {
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("the body exceeds {MAX_BODY} bytes"))
    };
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DISCARD_MAX) {
        return Err(too_large());
    }
    let mut body = request.into_body();
    let (mut bytes, mut total) = (Vec::new(), 0u64);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request(format!("cannot read the body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        total += data.len() as u64;
        if total > DISCARD_MAX {
            break;
        }
        if total <= MAX_BODY {
            bytes.extend_from_slice(&data);
        }
    }
    if total > MAX_BODY {
        return Err(too_large());
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// One authenticated call in one namespace.
struct Call<'a> {
    service: &'a Service,
    caller: Caller,
    backends: Backends,
}

impl Call<'_> {
    fn namespace(&self) -> &str {
        &self.backends.namespace
    }

    /// 403 unless the key may use `pool`; 404 unless it exists.
    async fn check_pool(&self, pool: &str) -> Result<(), ApiError> {
        if !self.caller.record.allows_pool(pool) {
            return Err(ApiError::forbidden(format!("this API key may not make backends from pool {pool:?}")));
        }
        let pools: Api<SessionLivedBackendPool> = Api::namespaced(self.service.client.clone(), self.namespace());
        match pools.get_opt(pool).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                Err(ApiError::not_found(format!("pool {pool:?} does not exist in namespace {:?}", self.namespace())))
            }
            Err(e) => Err(crate::client::Error::api(format!("cannot read pool {pool:?}"), e).into()),
        }
    }

    /// 404 for a backend outside the key's scope, as for one that does not exist: a key learns
    /// nothing about backends it may not use.
    fn check_visible(&self, backend: &SessionLivedBackend) -> Result<(), ApiError> {
        if visible(&self.caller, backend) {
            Ok(())
        } else {
            Err(ApiError::not_found(format!(
                "backend {:?} not found in namespace {:?}",
                backend.name_any(),
                self.namespace()
            )))
        }
    }

    /// The key's count of live backends, locked, if it has room for one more: hold it across
    /// the create and record what was made. 429 when it has none.
    async fn admit(&self) -> Result<tokio::sync::OwnedMutexGuard<Recent>, ApiError> {
        let mut recent = self.service.limits.of(&self.caller.id).lock_owned().await;
        let max = self.caller.record.max_backends;
        if recent.live(&self.service.cache, &self.caller.id) >= max as usize {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_backends",
                format!("this API key has its {max} live backends already: delete one, or wait for one to be swept"),
            ));
        }
        Ok(recent)
    }

    fn request(&self, naming: Naming, pool: &str, values: BTreeMap<String, String>) -> BackendRequest {
        let mut request = BackendRequest::from_pool(naming, pool);
        request.values = values;
        request.labels.insert(API_KEY_LABEL.into(), self.caller.id.clone());
        request
    }

    async fn connect(&self, body: ConnectRequest, wait: Duration) -> Answer {
        if body.key.len() > MAX_KEY_LEN {
            return Err(ApiError::bad_request(format!("the key is {} bytes; at most {MAX_KEY_LEN}", body.key.len())));
        }
        crate::client::names::check_key(&body.key)?;
        let name = name_for_key(&body.key);
        let existing = self.service.cache.get(self.namespace(), &name).filter(|b| state(b) != State::Over);
        let (backend, created) = match existing {
            Some(backend) if !visible(&self.caller, &backend) => {
                return Err(ApiError::forbidden(format!(
                    "the backend of key {:?} was made from a pool this API key may not use",
                    body.key
                )));
            }
            Some(backend) => ((*backend).clone(), false),
            None => {
                self.check_pool(&body.pool).await?;
                let mut recent = self.admit().await?;
                let request = self.request(Naming::Name(name.clone()), &body.pool, body.values);
                let (backend, created) = self.backends.connect_started(&body.key, &request, REPLACE_TIMEOUT).await?;
                if created {
                    recent.made(self.namespace(), &name);
                }
                self.check_visible(&backend)?;
                (backend, created)
            }
        };
        let backend = self.waited(backend, wait).await?;
        let status = if created { StatusCode::CREATED } else { StatusCode::OK };
        Ok(json_response(status, &self.view(&backend, true).await))
    }

    async fn create(&self, body: CreateRequest, wait: Duration) -> Answer {
        let prefix = match body.generate_name {
            Some(prefix) => check_name(&prefix, 5)?,
            None => generate_name_for_pool(&body.pool),
        };
        self.check_pool(&body.pool).await?;
        let backend = {
            let mut recent = self.admit().await?;
            let backend =
                self.backends.create(&self.request(Naming::GenerateName(prefix), &body.pool, body.values)).await?;
            recent.made(self.namespace(), &backend.name_any());
            backend
        };
        let backend = self.waited(backend, wait).await?;
        Ok(json_response(StatusCode::CREATED, &self.view(&backend, true).await))
    }

    /// `backend` once Ready, when the caller waits. A wait that runs out, or ends in Failed, still
    /// answers the backend: `ready`, `phase`, `reason` and `message` say how it stands, and the
    /// caller can follow its status stream. Only a backend gone meanwhile is an error.
    async fn waited(&self, backend: SessionLivedBackend, wait: Duration) -> Result<SessionLivedBackend, ApiError> {
        if wait.is_zero() || state(&backend) == State::Ready {
            return Ok(backend);
        }
        let name = backend.name_any();
        match self.backends.wait_ready(&name, wait).await {
            Ok(ready) => Ok(ready),
            Err(crate::client::Error::Timeout { .. } | crate::client::Error::Failed { .. }) => {
                Ok(self.backends.get(&name).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// From the API server, not the cache: a caller that lists right after a create expects to
    /// see what it made, and the cache's watch can lag.
    async fn list(&self) -> Answer {
        let mut items: Vec<Backend> = self
            .backends
            .list()
            .await?
            .iter()
            .filter(|b| visible(&self.caller, b))
            .map(|b| view_of(b, Access::Hidden))
            .collect();
        items.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(json_response(StatusCode::OK, &BackendList { items }))
    }

    async fn get(&self, name: &str) -> Answer {
        let backend = self.backends.get(name).await?;
        self.check_visible(&backend)?;
        Ok(json_response(StatusCode::OK, &self.view(&backend, true).await))
    }

    async fn delete(&self, name: &str) -> Answer {
        let backend = self.backends.get(name).await?;
        self.check_visible(&backend)?;
        let deleted = self.backends.delete(name).await?;
        // Counted against the key that made it, which may not be the caller's.
        if let Some(maker) = backend.labels().get(API_KEY_LABEL) {
            self.service.limits.of(maker).lock().await.deleted(self.namespace(), name);
        }
        Ok(json_response(StatusCode::OK, &self.view(&deleted, false).await))
    }

    async fn status(&self, name: &str, last_id: u32) -> Answer {
        // From the API server, not the cache: a backend made a moment ago is found.
        let backend = self.backends.get(name).await?;
        self.check_visible(&backend)?;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(stream::follow(
            self.service.cache.clone(),
            self.namespace().to_owned(),
            name.to_owned(),
            backend.uid().unwrap_or_default(),
            last_id,
            sender,
            self.service.stop.clone(),
        ));
        Ok(event_stream(receiver))
    }

    /// The backend as answered, its token read from its Secret when `read_token` (else a
    /// backend that needs one is shown without its URL).
    async fn view(&self, backend: &SessionLivedBackend, read_token: bool) -> Backend {
        let token =
            if read_token && needs_token(backend) { self.backends.token(&backend.name_any()).await.ok() } else { None };
        view_of(backend, Access::Shown(token.as_deref()))
    }
}

/// Whether `caller` may see `backend`: one of its pools' (any backend, with `*`).
fn visible(caller: &Caller, backend: &SessionLivedBackend) -> bool {
    match &backend.spec.pool_ref {
        Some(pool) => caller.record.allows_pool(&pool.name),
        None => caller.record.allows_pool(super::keys::ANY_POOL),
    }
}

/// How much of a backend's access a view shows.
#[derive(Clone, Copy)]
enum Access<'a> {
    /// Neither URL nor token (lists).
    Hidden,
    /// The URL once Ready, with this token when the backend needs one (`None`: not known, so no
    /// URL for a backend that needs a token).
    Shown(Option<&'a str>),
}

fn needs_token(backend: &SessionLivedBackend) -> bool {
    backend.spec.shape.auth.mode != crate::crd::AuthMode::None
}

/// The API's view of `backend`.
fn view_of(backend: &SessionLivedBackend, access: Access) -> Backend {
    let status = backend.status.as_ref();
    let ready = state(backend) == State::Ready;
    let ready_url = ready.then(|| status.and_then(|s| s.url.as_deref())).flatten();
    let token = match access {
        Access::Shown(token) => token,
        Access::Hidden => None,
    };
    let url = match (ready_url, access, token) {
        (Some(url), Access::Shown(_), _) if !needs_token(backend) => Some(url.to_owned()),
        (Some(url), Access::Shown(_), Some(token)) => Some(url_with_token(url, token)),
        _ => None,
    };
    Backend {
        name: backend.name_any(),
        namespace: backend.namespace().unwrap_or_default(),
        pool: backend.spec.pool_ref.as_ref().map(|p| p.name.clone()),
        key: backend.annotations().get(CONNECT_KEY_ANNOTATION).cloned(),
        phase: phase_of(backend).into(),
        ready,
        url,
        token: token.map(str::to_owned),
        reason: status.and_then(|s| s.reason.clone()),
        message: if ready { None } else { why_not_ready(backend) },
        created: backend.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Phase, SessionLivedBackendStatus};

    #[test]
    fn wait_is_seconds_up_to_the_cap() {
        assert_eq!(wait_of(None).unwrap(), Duration::ZERO);
        assert_eq!(wait_of(Some("x=1&wait=30")).unwrap(), Duration::from_secs(30));
        for bad in ["wait=-1", "wait=301", "wait=abc", "wait="] {
            assert_eq!(wait_of(Some(bad)).unwrap_err().code, "bad_request", "{bad}");
        }
    }

    fn ready_backend(auth: crate::crd::AuthMode) -> SessionLivedBackend {
        let mut request = BackendRequest::from_pool(Naming::Name("room".into()), "games");
        request.auth = auth;
        request.annotations.insert(CONNECT_KEY_ANNOTATION.into(), "room 1".into());
        let mut backend = request.to_backend();
        backend.metadata.namespace = Some("ns".into());
        backend.status = Some(SessionLivedBackendStatus {
            phase: Some(Phase::Ready),
            url: Some("http://proxy/p/ns/room/".into()),
            ..Default::default()
        });
        backend
    }

    #[test]
    fn a_view_has_the_url_with_its_token_only_when_the_token_is_shown() {
        let backend = ready_backend(crate::crd::AuthMode::Token);
        let shown = view_of(&backend, Access::Shown(Some("t0k")));
        assert_eq!(shown.url.as_deref(), Some("http://proxy/p/ns/room/?token=t0k"));
        assert_eq!(shown.token.as_deref(), Some("t0k"));
        assert!(shown.ready);
        assert_eq!((shown.pool.as_deref(), shown.key.as_deref()), (Some("games"), Some("room 1")));
        let unknown_token = view_of(&backend, Access::Shown(None));
        assert_eq!((unknown_token.url, unknown_token.token), (None, None), "no URL that would be refused");
        let listed = view_of(&backend, Access::Hidden);
        assert_eq!((listed.url, listed.token), (None, None));
        let open = view_of(&ready_backend(crate::crd::AuthMode::None), Access::Shown(None));
        assert_eq!((open.url.as_deref(), open.token), (Some("http://proxy/p/ns/room/"), None));
    }

    #[test]
    fn a_starting_backend_has_no_url_and_says_why() {
        let mut backend = ready_backend(crate::crd::AuthMode::Token);
        backend.status = Some(SessionLivedBackendStatus {
            phase: Some(Phase::Scheduled),
            reason: Some("ContainersNotReady".into()),
            message: Some("waiting for the application".into()),
            ..Default::default()
        });
        let view = view_of(&backend, Access::Shown(Some("t0k")));
        assert!(!view.ready);
        assert_eq!(view.url, None);
        assert_eq!(view.phase, "Scheduled");
        assert_eq!(view.message.as_deref(), Some("ContainersNotReady: waiting for the application"));
    }
}
