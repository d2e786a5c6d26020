//! An in-process fake API server for controller tests: a `kube::Client`
//! whose requests are answered by a scripted function and recorded, in
//! order, into a shared log that fake providers write to as well. A
//! scenario runs one reconcile and asserts the exact requests it made.

use std::sync::{Arc, Mutex};

use axum::http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

/// One request (or a fake provider's call), as the log keeps it.
#[derive(Clone, Debug)]
pub struct Call {
    /// `GET`, `PATCH`… or `provider` for a provider call.
    pub method: String,
    /// The path and query, or the provider call (`launch 0 2`).
    pub path: String,
    /// The JSON body, if any.
    pub body: Value,
}

impl Call {
    /// `METHOD path` without the query.
    pub fn line(&self) -> String {
        let path = self.path.split('?').next().unwrap_or_default();
        format!("{} {path}", self.method)
    }
}

/// The shared, ordered log of a scenario.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Call>>>);

impl Log {
    /// Appends a call.
    pub fn push(&self, method: &str, path: &str, body: Value) {
        self.0.lock().expect("log").push(Call {
            method: method.to_owned(),
            path: path.to_owned(),
            body,
        });
    }

    /// The calls so far, events left out (they are asserted apart).
    pub fn calls(&self) -> Vec<Call> {
        self.0
            .lock()
            .expect("log")
            .iter()
            .filter(|c| !c.path.contains("/events"))
            .cloned()
            .collect()
    }

    /// [`Log::calls`] as `METHOD path` lines.
    pub fn lines(&self) -> Vec<String> {
        self.calls().iter().map(Call::line).collect()
    }

    /// Forgets the requests so far.
    pub fn clear(&self) {
        self.0.lock().expect("log").clear();
    }
}

/// An answer: a status code and a JSON body.
pub type Answer = (StatusCode, Value);

/// A `kube::Client` answered by `answer` (events are accepted as created),
/// every request recorded into `log`.
pub fn client(log: &Log, answer: impl Fn(&Call) -> Answer + Send + Sync + 'static) -> kube::Client {
    let (log, answer) = (log.clone(), Arc::new(answer));
    let service = tower::service_fn(move |request: Request<Body>| {
        let (log, answer) = (log.clone(), answer.clone());
        async move {
            let method = request.method().to_string();
            let path = request
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let bytes = http_body_util::BodyExt::collect(request.into_body())
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let call = Call { method, path, body };
            log.push(&call.method, &call.path, call.body.clone());
            let (status, out) = if call.path.contains("/events") {
                (StatusCode::CREATED, call.body.clone())
            } else {
                answer(&call)
            };
            let out = Body::from(serde_json::to_vec(&out).expect("json"));
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(out)
                    .expect("response"),
            )
        }
    });
    kube::Client::new(service, "default")
}

/// A Kubernetes `Status` answer with `code`.
pub fn status(code: u16, reason: &str) -> Answer {
    (
        StatusCode::from_u16(code).expect("status code"),
        json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("fake API server: {reason}"), "reason": reason, "code": code
        }),
    )
}

/// A 200 answer with `object`.
pub fn ok(object: impl serde::Serialize) -> Answer {
    (StatusCode::OK, serde_json::to_value(object).expect("json"))
}

/// The shared handle of a scenario: `client` (the fake API server), fresh
/// metrics, no selector, and `stores`; and an event recorder over it.
pub fn shared(
    client: kube::Client,
    stores: super::stores::Stores,
) -> (super::Shared, kube::runtime::events::Recorder) {
    let reporter = kube::runtime::events::Reporter {
        controller: "test".into(),
        instance: None,
    };
    let shared = super::Shared {
        client: client.clone(),
        metrics: super::metrics::Metrics::default(),
        halt: super::halt::HaltStore::new(client.clone(), "theseus-system"),
        reporter: reporter.clone(),
        namespace: "theseus-system".into(),
        selector: None,
        stores,
    };
    (
        shared,
        kube::runtime::events::Recorder::new(client, reporter),
    )
}

/// Asserts that `metrics` counted a failed reconcile of `controller` for
/// `reason` (the step's name).
pub fn assert_failure_counted(metrics: &super::metrics::Metrics, controller: &str, reason: &str) {
    let text = metrics.render();
    assert!(
        text.contains(&format!(r#"controller="{controller}",reason="{reason}""#)),
        "no {controller} failure counted for {reason}:\n{text}"
    );
}
