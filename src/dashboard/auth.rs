//! Who a dashboard request acts as, and what it may do.
//!
//! In the operator ([`Mode::Tokens`]) a request carries its user's bearer
//! token: in the `theseus-token` cookie (pasted once on the login page; the
//! cookie is `HttpOnly`, `Secure`, `SameSite=Strict`) or in an
//! `Authorization` header set by an authenticating proxy. Behind a trusted
//! proxy ([`Mode::Impersonate`]) the proxy names the user in
//! `X-Forwarded-User` and `X-Forwarded-Groups`, and the operator forwards
//! them as impersonation headers with its own credentials. On a laptop
//! ([`Mode::Kubeconfig`]) every request acts as the kubeconfig's user.
//!
//! Every request's reads and writes go to the API server with that
//! identity, so RBAC decides. A POST must carry the session's CSRF token
//! (derived from the credential, so it needs no server state and is the
//! same on every replica) and, when the browser sends one, an `Origin` of
//! this host.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

use super::Dashboard;

/// The cookie that holds a user's token.
pub const TOKEN_COOKIE: &str = "theseus-token";
/// The header (or form field `csrf`) a POST carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long an unused user's client is kept.
const CLIENT_IDLE: Duration = Duration::from_secs(300);
/// At most this many users' clients are kept.
const CLIENT_CACHE: usize = 256;

/// How requests are authenticated.
#[derive(Clone)]
pub enum Mode {
    /// Each request brings its user's bearer token; `base` says where the
    /// API server is and how to trust it (its credentials are not used).
    Tokens { base: kube::Config },
    /// A trusted authenticating proxy names the user; the operator's own
    /// credentials (`base`) impersonate them.
    Impersonate { base: kube::Config },
    /// Every request is the kubeconfig's user (`theseus dashboard`).
    Kubeconfig { client: Client, csrf_key: [u8; 32] },
}

/// Authenticates requests and keeps one API client per user.
pub struct Auth {
    mode: Mode,
    clients: Mutex<HashMap<[u8; 32], (Client, Instant)>>,
}

/// The identity a request acts as.
#[derive(Clone)]
pub struct Session {
    /// A client that acts as the user.
    pub client: Client,
    /// The token POSTs must carry.
    pub csrf: String,
    /// Whether the user can sign out (they signed in with a cookie).
    pub signed_in_by_cookie: bool,
}

/// Why a request has no session.
#[derive(Debug)]
pub enum Rejection {
    /// No credential, or the API server refused it: to the login page.
    Login { expired: bool, htmx: bool },
    /// The proxy did not name a user.
    NoProxyUser,
    /// The client could not be built.
    Internal(String),
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        match self {
            Rejection::Login { expired, htmx } => login_redirect(expired, htmx),
            Rejection::NoProxyUser => (
                StatusCode::UNAUTHORIZED,
                "the authenticating proxy sent no X-Forwarded-User\n",
            )
                .into_response(),
            Rejection::Internal(why) => (StatusCode::INTERNAL_SERVER_ERROR, why).into_response(),
        }
    }
}

/// To the login page: a redirect, or for htmx requests an `HX-Redirect`;
/// both clear the token cookie, which the API server no longer accepts.
pub fn login_redirect(expired: bool, htmx: bool) -> Response {
    let to = if expired {
        "/ui/login?expired=1"
    } else {
        "/ui/login"
    };
    let clear = format!("{TOKEN_COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; Secure; SameSite=Strict");
    if htmx {
        (
            StatusCode::UNAUTHORIZED,
            [
                ("hx-redirect", to.to_owned()),
                (header::SET_COOKIE.as_str(), clear),
            ],
        )
            .into_response()
    } else {
        let mut response = Redirect::to(to).into_response();
        if let Ok(value) = clear.parse() {
            response.headers_mut().insert(header::SET_COOKIE, value);
        }
        response
    }
}

impl Auth {
    /// Authentication as `mode` says.
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Whether users sign in on the login page (they do with tokens).
    pub fn uses_login(&self) -> bool {
        matches!(self.mode, Mode::Tokens { .. })
    }

    /// The session of a request with `headers`.
    pub fn session(&self, headers: &HeaderMap) -> Result<Session, Rejection> {
        let htmx = headers.contains_key("hx-request");
        match &self.mode {
            Mode::Kubeconfig { client, csrf_key } => Ok(Session {
                client: client.clone(),
                csrf: csrf_token(csrf_key, b""),
                signed_in_by_cookie: false,
            }),
            Mode::Tokens { base } => {
                let (token, by_cookie) = bearer(headers)
                    .map(|t| (t, false))
                    .or_else(|| cookie(headers, TOKEN_COOKIE).map(|t| (t, true)))
                    .ok_or(Rejection::Login {
                        expired: false,
                        htmx,
                    })?;
                let client =
                    self.client_for(&format!("token\0{token}"), || token_client(base, &token))?;
                Ok(Session {
                    client,
                    csrf: csrf_token(b"theseus-dashboard", token.as_bytes()),
                    signed_in_by_cookie: by_cookie,
                })
            }
            Mode::Impersonate { base } => {
                let user = header_value(headers, "x-forwarded-user")
                    .filter(|u| !u.is_empty())
                    .ok_or(Rejection::NoProxyUser)?;
                let groups: Vec<String> = header_value(headers, "x-forwarded-groups")
                    .map(|g| {
                        g.split(',')
                            .map(|s| s.trim().to_owned())
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default();
                let identity = format!("proxy\0{user}\0{}", groups.join(","));
                let client = self.client_for(&identity, || {
                    let mut config = base.clone();
                    config.auth_info.impersonate = Some(user.clone());
                    config.auth_info.impersonate_groups = Some(groups.clone());
                    Client::try_from(config).map_err(|e| e.to_string())
                })?;
                // The proxy authenticated the request, so a forged POST
                // would come through it; the CSRF token still binds the
                // form to the user it was rendered for.
                Ok(Session {
                    client,
                    csrf: csrf_token(b"theseus-dashboard-proxy", identity.as_bytes()),
                    signed_in_by_cookie: false,
                })
            }
        }
    }

    /// The cached client of `identity`, or a new one.
    fn client_for(
        &self,
        identity: &str,
        build: impl FnOnce() -> Result<Client, String>,
    ) -> Result<Client, Rejection> {
        let key: [u8; 32] = Sha256::digest(identity.as_bytes()).into();
        let now = Instant::now();
        let mut clients = self.clients.lock().expect("dashboard clients");
        if let Some((client, used)) = clients.get_mut(&key) {
            *used = now;
            return Ok(client.clone());
        }
        let client = build().map_err(Rejection::Internal)?;
        clients.retain(|_, (_, used)| now.duration_since(*used) < CLIENT_IDLE);
        if clients.len() >= CLIENT_CACHE
            && let Some(oldest) = clients
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k)
        {
            clients.remove(&oldest);
        }
        clients.insert(key, (client.clone(), now));
        Ok(client)
    }

    /// A client that acts as the holder of `token` (the login page checks
    /// a pasted token with it before setting the cookie).
    pub fn client_with_token(&self, token: &str) -> Result<Client, String> {
        match &self.mode {
            Mode::Tokens { base } => token_client(base, token),
            _ => Err("this dashboard does not sign in with tokens".to_owned()),
        }
    }
}

fn token_client(base: &kube::Config, token: &str) -> Result<Client, String> {
    let mut config = base.clone();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_owned().into()),
        ..Default::default()
    };
    Client::try_from(config).map_err(|e| format!("cannot build a client for the token: {e}"))
}

impl FromRequestParts<Dashboard> for Session {
    type Rejection = Rejection;

    async fn from_request_parts(
        parts: &mut Parts,
        dashboard: &Dashboard,
    ) -> Result<Self, Self::Rejection> {
        dashboard.auth().session(&parts.headers)
    }
}

/// The CSRF token of a credential: not guessable without the credential
/// (or, on a laptop, the process's random key).
pub fn csrf_token(key: &[u8], credential: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(b"theseus-dashboard-csrf\0");
    hash.update(key);
    hash.update(b"\0");
    hash.update(credential);
    hex::encode(&hash.finalize()[..20])
}

/// Whether a POST may proceed: its CSRF token (header or form field) is the
/// session's, and its `Origin`, when the browser sent one, is this host.
pub fn check_post(
    session: &Session,
    headers: &HeaderMap,
    form_csrf: Option<&str>,
) -> Result<(), String> {
    if let Some(origin) = header_value(headers, "origin") {
        let host = header_value(headers, "host").unwrap_or_default();
        let origin_host = origin
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(origin.as_str());
        if origin_host != host {
            return Err(format!(
                "cross-site request refused: Origin {origin} is not this dashboard ({host})"
            ));
        }
    }
    let given = header_value(headers, CSRF_HEADER).or_else(|| form_csrf.map(str::to_owned));
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), session.csrf.as_bytes()) => Ok(()),
        Some(_) => Err("the CSRF token does not match this session; reload the page".to_owned()),
        None => Err("the request carries no CSRF token; use the dashboard's buttons".to_owned()),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    header_value(headers, header::AUTHORIZATION.as_str())
        .and_then(|v| v.strip_prefix("Bearer ").map(|t| t.trim().to_owned()))
        .filter(|t| !t.is_empty())
}

/// The value of cookie `name`.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value that keeps `token`.
pub fn token_cookie(token: &str) -> String {
    format!("{TOKEN_COOKIE}={token}; Path=/ui; HttpOnly; Secure; SameSite=Strict")
}

/// The user a client acts as, as the API server sees them.
pub async fn whoami(client: &Client) -> Result<String, kube::Error> {
    let review: SelfSubjectReview = serde_json::from_value(serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"
    }))
    .expect("a SelfSubjectReview");
    let answer = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await?;
    Ok(answer
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_else(|| "unknown".to_owned()))
}

/// One action a button stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub verb: &'static str,
    /// The resource, or `RESOURCE/SUBRESOURCE`.
    pub group: &'static str,
    pub resource: &'static str,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// Whether the client's user may do `access` (a SelfSubjectAccessReview).
/// An error counts as no: the button is hidden, and the API server would
/// refuse the change anyway.
pub async fn can(client: &Client, access: &Access) -> bool {
    // `RESOURCE/SUBRESOURCE`, as RBAC rules write it (`nodeinstalls/log`).
    let (resource, subresource) = match access.resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_owned())),
        None => (access.resource, None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(access.verb.to_owned()),
                group: Some(access.group.to_owned()),
                resource: Some(resource.to_owned()),
                subresource,
                namespace: access.namespace.clone(),
                name: access.name.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    match Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
    {
        Ok(answer) => answer.status.is_some_and(|s| s.allowed),
        Err(_) => false,
    }
}

/// Whether an API error means the credential is no longer accepted.
pub fn unauthenticated(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 401)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(csrf: &str) -> Session {
        let log = crate::shared::fake_api::Log::default();
        let client = crate::shared::fake_api::client(&log, |_| {
            crate::shared::fake_api::status(404, "NotFound")
        });
        Session {
            client,
            csrf: csrf.to_owned(),
            signed_in_by_cookie: true,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_csrf_token_depends_on_the_credential_and_the_key() {
        let a = csrf_token(b"k", b"token-a");
        assert_eq!(a, csrf_token(b"k", b"token-a"), "stable across replicas");
        assert_ne!(a, csrf_token(b"k", b"token-b"));
        assert_ne!(a, csrf_token(b"other", b"token-a"));
        assert_eq!(a.len(), 40);
    }

    #[tokio::test]
    async fn a_post_needs_the_sessions_csrf_token_and_a_same_origin() {
        let s = session("abc");
        let host = ("host", "127.0.0.1:8080");
        assert!(check_post(&s, &headers(&[host, (CSRF_HEADER, "abc")]), None).is_ok());
        assert!(
            check_post(&s, &headers(&[host]), Some("abc")).is_ok(),
            "form field"
        );
        let missing = check_post(&s, &headers(&[host]), None).unwrap_err();
        assert!(missing.contains("no CSRF token"), "{missing}");
        let wrong = check_post(&s, &headers(&[host, (CSRF_HEADER, "abd")]), None).unwrap_err();
        assert!(wrong.contains("does not match"), "{wrong}");
        let cross = check_post(
            &s,
            &headers(&[
                host,
                ("origin", "https://evil.example"),
                (CSRF_HEADER, "abc"),
            ]),
            None,
        )
        .unwrap_err();
        assert!(cross.contains("evil.example"), "{cross}");
        assert!(
            check_post(
                &s,
                &headers(&[
                    host,
                    ("origin", "http://127.0.0.1:8080"),
                    (CSRF_HEADER, "abc")
                ]),
                None
            )
            .is_ok()
        );
    }

    #[test]
    fn the_token_comes_from_the_authorization_header_or_the_cookie() {
        let h = headers(&[("cookie", "a=1; theseus-token=tok; b=2")]);
        assert_eq!(cookie(&h, TOKEN_COOKIE).as_deref(), Some("tok"));
        assert_eq!(cookie(&h, "c"), None);
        let h = headers(&[("authorization", "Bearer xyz")]);
        assert_eq!(bearer(&h).as_deref(), Some("xyz"));
        assert_eq!(bearer(&headers(&[("authorization", "Basic xyz")])), None);
    }

    #[test]
    fn without_a_credential_a_page_goes_to_the_login_page() {
        let base = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        let auth = Auth::new(Mode::Tokens { base });
        let Err(Rejection::Login { expired, htmx }) = auth.session(&HeaderMap::new()) else {
            panic!("expected the login page");
        };
        assert!(!expired && !htmx);
        let response = login_redirect(true, false);
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        assert_eq!(response.headers()["location"], "/ui/login?expired=1");
        assert!(
            response.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
        let htmx = login_redirect(true, true);
        assert_eq!(htmx.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(htmx.headers()["hx-redirect"], "/ui/login?expired=1");
    }

    #[tokio::test]
    async fn one_client_per_token_is_kept() {
        let base = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        let auth = Auth::new(Mode::Tokens { base });
        let a = auth
            .session(&headers(&[("cookie", "theseus-token=a")]))
            .unwrap();
        let b = auth
            .session(&headers(&[("authorization", "Bearer b")]))
            .unwrap();
        assert_ne!(a.csrf, b.csrf);
        assert!(a.signed_in_by_cookie && !b.signed_in_by_cookie);
        auth.session(&headers(&[("cookie", "theseus-token=a")]))
            .unwrap();
        assert_eq!(auth.clients.lock().unwrap().len(), 2);
    }
}
