//! A node's page (`/ui/nodes/NAME`): its NodeInstall (phase, sets,
//! address, heartbeat, conditions, hooks) and, for users who may `get`
//! `nodeinstalls/log`, its services with CPU, memory and restarts and the
//! tail of each one's log, read from the node's agent.
//!
//! The operator reads the agent's authenticated API at the endpoint the
//! agent reports (`status.apiEndpoint`), with the fleet's agent token
//! (`--agent-token`): `GET /services.json` and `GET /logs/NAME`. The
//! browser never talks to a node. An endpoint is the node's own claim, so
//! only `http(s)://HOST:PORT` is followed, fixed paths are read, answers
//! are capped at [`MAX_ANSWER`] bytes and calls time out after
//! [`TIMEOUT`]; the page then says what failed.

use std::time::Duration;

use kube::ResourceExt;

use crate::agent::api::LogTail;
use crate::agent::observe::{ServiceReport, ServicesReport};
use crate::api::NodeInstall;

/// Lines of each service's log the page shows.
pub const LOG_LINES: usize = 40;

/// How long a call to an agent may take.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// The largest answer read from an agent.
pub const MAX_ANSWER: usize = 1024 * 1024;

/// How often a node page's live stream reads the agent again.
pub const POLL: Duration = Duration::from_secs(3);

/// Reads nodes' agents for the dashboard.
#[derive(Clone)]
pub struct Agents {
    http: reqwest::Client,
    token: Option<String>,
}

/// What a node's agent said, or why it could not be read.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentView {
    /// The services, and each one's log tail (by service, in their order).
    Read {
        services: Vec<ServiceReport>,
        logs: Vec<(String, Vec<String>)>,
    },
    /// Why nothing was read.
    Unavailable(String),
}

impl Agents {
    /// A reader sending `token` (the agents' `--api-token`), if any.
    pub fn new(token: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(TIMEOUT)
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a plain HTTP client builds");
        Self {
            http,
            token: token.filter(|t| !t.is_empty()),
        }
    }

    /// The services of `node` and their log tails, from its agent.
    pub async fn read(&self, node: &NodeInstall) -> AgentView {
        let name = node.name_any();
        let Some(endpoint) = node.status.as_ref().and_then(|s| s.api_endpoint.clone()) else {
            return AgentView::Unavailable(format!(
                "node {name} reports no agent API endpoint (an agent older than this dashboard, or not started)"
            ));
        };
        let base = match base_url(&endpoint) {
            Ok(base) => base,
            Err(why) => return AgentView::Unavailable(format!("node {name}: {why}")),
        };
        let report: ServicesReport = match self.get(&base, "services.json").await {
            Ok(report) => report,
            Err(why) => {
                return AgentView::Unavailable(format!(
                    "the agent of node {name} at {base} did not answer: {why}"
                ));
            }
        };
        let names: Vec<String> = report.services.iter().map(|s| s.name.clone()).collect();
        let tails = futures::future::join_all(names.into_iter().map(|service| {
            let path = format!("logs/{service}?lines={LOG_LINES}");
            let base = base.clone();
            async move {
                let lines = match self.get::<LogTail>(&base, &path).await {
                    Ok(tail) => tail.lines,
                    Err(why) => vec![format!("(log not read: {why})")],
                };
                (service, lines)
            }
        }))
        .await;
        AgentView::Read {
            services: report.services,
            logs: tails,
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
    ) -> Result<T, String> {
        let mut request = self.http.get(format!("{base}/{path}"));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let mut response = request.send().await.map_err(|e| short_error(&e))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| short_error(&e))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_ANSWER {
                return Err(format!("an answer over {MAX_ANSWER} bytes"));
            }
        }
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(
                "401: the agent wants a token; give the operator the agents' token (--agent-token)"
                    .to_owned(),
            );
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body);
            return Err(format!("{status}: {}", text.trim()));
        }
        serde_json::from_slice(&body).map_err(|e| format!("an answer that is not its JSON: {e}"))
    }
}

/// `http(s)://HOST[:PORT]` of an endpoint, with nothing after it.
fn base_url(endpoint: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(endpoint)
        .map_err(|e| format!("its agent API endpoint {endpoint:?} is not a URL: {e}"))?;
    let plain = matches!(url.scheme(), "http" | "https")
        && url.host().is_some()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    if !plain {
        return Err(format!(
            "its agent API endpoint {endpoint:?} is not http(s)://HOST:PORT"
        ));
    }
    Ok(endpoint.trim_end_matches('/').to_owned())
}

/// A reqwest error in one line, without the URL (shown beside it).
fn short_error(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        format!("no answer within {}s", TIMEOUT.as_secs())
    } else if e.is_connect() {
        "connection refused or unreachable".to_owned()
    } else {
        let text = e.to_string();
        match e.url() {
            Some(url) => text.replace(&format!(" ({url})"), ""),
            None => text,
        }
    };
    match std::error::Error::source(e) {
        Some(source) if !e.is_timeout() => format!("{what} ({source})"),
        _ => what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_endpoint_is_followed() {
        assert_eq!(
            base_url("http://127.0.0.1:7070").as_deref(),
            Ok("http://127.0.0.1:7070")
        );
        assert_eq!(
            base_url("https://node-1.example:7070/").as_deref(),
            Ok("https://node-1.example:7070")
        );
        for bad in [
            "file:///etc/passwd",
            "http://127.0.0.1:7070/admin",
            "http://user:pw@127.0.0.1:7070",
            "http://127.0.0.1:7070?x=1",
            "not a url",
        ] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
    }
}
