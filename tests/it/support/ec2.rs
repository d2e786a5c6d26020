//! EC2 helpers for NodePool tests: a recording (and, on demand, throttling
//! or silent) proxy in front of moto, and a direct moto client to plant and inspect
//! instances.
//!
//! The proxy throttles in two ways, both answered as EC2 answers (HTTP 503,
//! error `RequestLimitExceeded`): every request until `throttle_until`, or,
//! with `Ec2Proxy::rate_limit`, by EC2's request token buckets, one bucket per
//! action class (`ActionClass`: RunInstances, other mutating actions,
//! Describe*), each holding `size` tokens and refilled continuously at
//! `refill` tokens a second; a request takes one token from its class's
//! bucket or is refused (a refused request takes none).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kube::Api;
use serde_json::json;
use theseus::api::conditions;
use theseus::api::{AwsProvider, NodePool};

use super::fleet::Operator;
use super::{TestNamespace, TestbedEnv, eventually, test_logs};

/// One token bucket: at most `size` tokens, `refill` more each second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    /// The bucket's capacity (the burst).
    pub size: f64,
    /// Tokens added per second, up to `size`.
    pub refill: f64,
}

/// EC2's request-rate classes, each with its own bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ActionClass {
    /// RunInstances.
    RunInstances,
    /// Any other mutating action (CreateTags, TerminateInstances, …).
    Mutating,
    /// Non-mutating actions (Describe*, Get*).
    Describe,
}

impl ActionClass {
    /// The class of an EC2 action.
    pub fn of(action: &str) -> ActionClass {
        if action == "RunInstances" {
            ActionClass::RunInstances
        } else if action.starts_with("Describe") || action.starts_with("Get") {
            ActionClass::Describe
        } else {
            ActionClass::Mutating
        }
    }
}

/// The request buckets, one per `ActionClass`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    /// RunInstances.
    pub run_instances: Bucket,
    /// Other mutating actions.
    pub mutating: Bucket,
    /// Describe* and Get*.
    pub describe: Bucket,
}

impl RateLimits {
    /// EC2's published default request buckets: RunInstances 5 tokens
    /// refilled at 2/s, mutating actions 50 at 5/s, non-mutating actions
    /// 100 at 20/s.
    #[allow(dead_code)] // not every includer throttles by buckets
    pub const EC2: RateLimits = RateLimits {
        run_instances: Bucket {
            size: 5.0,
            refill: 2.0,
        },
        mutating: Bucket {
            size: 50.0,
            refill: 5.0,
        },
        describe: Bucket {
            size: 100.0,
            refill: 20.0,
        },
    };

    /// The bucket of `class`.
    pub fn bucket(&self, class: ActionClass) -> Bucket {
        match class {
            ActionClass::RunInstances => self.run_instances,
            ActionClass::Mutating => self.mutating,
            ActionClass::Describe => self.describe,
        }
    }
}

/// The proxy's buckets and what is left in them.
#[derive(Clone, Debug)]
pub struct Buckets {
    /// Their sizes and refill rates.
    pub limits: RateLimits,
    /// Tokens left by class, as of `at`.
    tokens: BTreeMap<ActionClass, f64>,
    at: Instant,
}

impl Buckets {
    /// Buckets holding `fill` (0 = empty, 1 = full) of their size at `now`.
    #[allow(dead_code)] // not every includer throttles by buckets
    pub fn new(limits: RateLimits, fill: f64, now: Instant) -> Buckets {
        let tokens = [
            ActionClass::RunInstances,
            ActionClass::Mutating,
            ActionClass::Describe,
        ]
        .into_iter()
        .map(|c| (c, limits.bucket(c).size * fill.clamp(0.0, 1.0)))
        .collect();
        Buckets {
            limits,
            tokens,
            at: now,
        }
    }

    /// Takes a token for `class` at `now`; false when there is none.
    pub fn take(&mut self, class: ActionClass, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = self.at.max(now);
        for (c, tokens) in self.tokens.iter_mut() {
            let b = self.limits.bucket(*c);
            *tokens = (*tokens + b.refill * elapsed).min(b.size);
        }
        let tokens = self
            .tokens
            .get_mut(&class)
            .expect("every class has a bucket");
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A request the proxy forwarded to moto.
#[allow(dead_code)] // not every includer reads the forwarded requests
#[derive(Clone, Debug)]
pub struct Upstream {
    /// The EC2 action.
    pub action: String,
    /// When the proxy received it.
    pub at: Instant,
    /// How long moto took to answer it.
    pub took: Duration,
    /// Its `ClientToken`, if it had one (RunInstances).
    pub client_token: Option<String>,
}

/// What the proxy saw.
#[derive(Debug, Default)]
pub struct ProxyLog {
    /// Requests by EC2 action (every attempt, throttled ones included).
    pub calls: BTreeMap<String, usize>,
    /// Requests forwarded to moto, by action.
    pub forwarded: BTreeMap<String, usize>,
    /// DescribeInstances requests without both owner tag filters.
    pub unfiltered_describes: usize,
    /// Requests answered with RequestLimitExceeded.
    pub throttled: usize,
    /// Requests answered with RequestLimitExceeded, by action.
    pub throttled_by: BTreeMap<String, usize>,
    /// Throttle every request until this instant.
    pub throttle_until: Option<Instant>,
    /// While set, throttle by these token buckets.
    pub buckets: Option<Buckets>,
    /// The requests forwarded to moto, in the order they arrived.
    pub upstream: Vec<Upstream>,
    /// While set, accept every request and never answer it.
    pub silent: bool,
    /// Requests left unanswered because the proxy was silent.
    pub unanswered: usize,
}

/// A proxy on 127.0.0.1 in front of moto.
pub struct Ec2Proxy {
    /// Its URL, for `spec.provider.aws.endpoint`.
    pub url: String,
    /// What it saw.
    pub log: Arc<Mutex<ProxyLog>>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    log: Arc<Mutex<ProxyLog>>,
    http: reqwest::Client,
}

impl Ec2Proxy {
    /// Starts a proxy forwarding to `upstream` (the moto URL).
    pub async fn start(upstream: &str) -> Ec2Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(ProxyLog::default()));
        let state = ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            log: log.clone(),
            http: reqwest::Client::new(),
        };
        let app = axum::Router::new().fallback(forward).with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ec2Proxy { url, log }
    }

    /// Calls of `action` seen so far.
    pub fn calls(&self, action: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .calls
            .get(action)
            .copied()
            .unwrap_or(0)
    }

    /// Throttles from now on by `limits`, the buckets holding `fill` (0 =
    /// empty, 1 = full) of their size.
    #[allow(dead_code)] // not every includer throttles by buckets
    pub fn rate_limit(&self, limits: RateLimits, fill: f64) {
        self.log.lock().unwrap().buckets = Some(Buckets::new(limits, fill, Instant::now()));
    }
}

/// EC2's answer to a request over its limit.
fn request_limit_exceeded() -> Response {
    let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>proxy</RequestID></Response>";
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("content-type", "text/xml")],
        xml,
    )
        .into_response()
}

/// Decodes `application/x-www-form-urlencoded`.
pub fn form(body: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let s = s.replace('+', " ");
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let hex = (bytes[i] == b'%' && i + 2 < bytes.len())
                .then(|| u8::from_str_radix(&s[i + 1..i + 3], 16).ok())
                .flatten();
            if let Some(b) = hex {
                out.push(b);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

async fn forward(State(st): State<ProxyState>, headers: HeaderMap, body: Bytes) -> Response {
    let pairs = form(&body);
    let action = pairs
        .iter()
        .find(|(k, _)| k == "Action")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let silent = {
        let mut log = st.log.lock().unwrap();
        if log.silent {
            log.unanswered += 1;
        }
        log.silent
    };
    if silent {
        // An endpoint that accepted the connection and never answers.
        std::future::pending::<()>().await;
    }
    {
        let mut log = st.log.lock().unwrap();
        *log.calls.entry(action.clone()).or_default() += 1;
        if action == "DescribeInstances" {
            let names: Vec<&str> = pairs
                .iter()
                .filter(|(k, _)| k.starts_with("Filter.") && k.ends_with(".Name"))
                .map(|(_, v)| v.as_str())
                .collect();
            if !(names.contains(&"tag:theseus.dev/nodepool")
                && names.contains(&"tag:theseus.dev/cluster"))
            {
                log.unfiltered_describes += 1;
            }
        }
        let now = Instant::now();
        let over_limit = log.throttle_until.is_some_and(|t| now < t)
            || log
                .buckets
                .as_mut()
                .is_some_and(|b| !b.take(ActionClass::of(&action), now));
        if over_limit {
            log.throttled += 1;
            *log.throttled_by.entry(action).or_default() += 1;
            return request_limit_exceeded();
        }
        *log.forwarded.entry(action.clone()).or_default() += 1;
    }
    let at = Instant::now();
    let client_token = pairs
        .iter()
        .find(|(k, _)| k == "ClientToken")
        .map(|(_, v)| v.clone());
    let mut req = st.http.post(format!("{}/", st.upstream)).body(body);
    for (k, v) in headers.iter() {
        if k != "host" && k != "content-length" {
            req = req.header(k.as_str(), v.as_bytes());
        }
    }
    let answer = match req.send().await {
        Ok(resp) => {
            let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("text/xml")
                .to_owned();
            let bytes = resp.bytes().await.unwrap_or_default();
            (status, [("content-type", ct)], bytes).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    st.log.lock().unwrap().upstream.push(Upstream {
        action,
        at,
        took: at.elapsed(),
        client_token,
    });
    answer
}

/// A client straight to moto (not through any proxy).
pub async fn moto(endpoint: &str) -> Client {
    let settings = AwsProvider {
        region: "us-east-1".into(),
        endpoint: Some(endpoint.into()),
        ..Default::default()
    };
    theseus::nodepool::aws::client(&settings, Some(("testing".into(), "testing".into()))).await
}

/// An AMI id moto knows, matching the CRD's `^ami-[0-9a-f]+$`.
pub async fn image(client: &Client) -> String {
    let images = client
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .unwrap();
    images
        .images()
        .iter()
        .filter_map(|i| i.image_id())
        .find(|id| {
            id.strip_prefix("ami-").is_some_and(|h| {
                h.chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            })
        })
        .expect("moto lists an amazon AMI")
        .to_owned()
}

/// Live instances carrying `tag:KEY=VALUE` for every pair, id → tags.
pub async fn live(
    client: &Client,
    tags: &[(&str, &str)],
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut filters: Vec<Filter> = tags
        .iter()
        .map(|(k, v)| {
            Filter::builder()
                .name(format!("tag:{k}"))
                .values(*v)
                .build()
        })
        .collect();
    filters.push(
        Filter::builder()
            .name("instance-state-name")
            .values("pending")
            .values("running")
            .build(),
    );
    let out = client
        .describe_instances()
        .set_filters(Some(filters))
        .send()
        .await
        .unwrap();
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            let tags = i
                .tags()
                .iter()
                .map(|t| {
                    (
                        t.key().unwrap_or_default().to_owned(),
                        t.value().unwrap_or_default().to_owned(),
                    )
                })
                .collect();
            (i.instance_id().unwrap().to_owned(), tags)
        })
        .collect()
}

/// Launches one instance with `tags` directly in moto; returns its id.
pub async fn plant(client: &Client, image: &str, tags: &[(&str, &str)]) -> String {
    let spec = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .set_tags(Some(
            tags.iter()
                .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                .collect(),
        ))
        .build();
    let out = client
        .run_instances()
        .image_id(image)
        .min_count(1)
        .max_count(1)
        .tag_specifications(spec)
        .send()
        .await
        .unwrap();
    out.instances()[0].instance_id().unwrap().to_owned()
}

/// The state name of one instance.
pub async fn state(client: &Client, id: &str) -> String {
    let out = client
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .unwrap();
    out.reservations()[0].instances()[0]
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_owned())
        .unwrap_or_default()
}

/// Terminates instances directly (test clean-up of planted instances).
pub async fn terminate(client: &Client, ids: &[String]) {
    if !ids.is_empty() {
        let _ = client
            .terminate_instances()
            .set_instance_ids(Some(ids.to_vec()))
            .send()
            .await;
    }
}

/// A test's own operator and EC2 pool (moto behind a recording proxy),
/// named after its namespace.
pub struct Ec2Rig {
    /// The testbed.
    pub tb: TestbedEnv,
    /// A client for it.
    pub client: kube::Client,
    /// The test's namespace.
    pub ns: TestNamespace,
    /// The run label, pool name and cluster name (the namespace's name).
    pub run: String,
    /// Where the operator logs.
    pub logs: std::path::PathBuf,
    /// A client straight to moto.
    pub ec2: Client,
    /// The proxy the pool calls EC2 through.
    pub proxy: Ec2Proxy,
    /// An AMI moto knows.
    pub image: String,
}

impl Ec2Rig {
    /// A fresh namespace (and run) tagged `tag`, or `None` without a testbed
    /// outside CI.
    pub async fn new(tag: &str) -> Option<Ec2Rig> {
        let tb = super::testbed()?;
        super::apply_crds(&tb);
        tb.kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "crd/nodepools.theseus.dev",
            "--timeout=60s",
        ]);
        let client = tb.client().await;
        let ns = TestNamespace::create(&tb, &client, tag).await;
        let run = ns.name.clone();
        let logs = test_logs(&run);
        let ec2 = moto(tb.ec2_endpoint()).await;
        let proxy = Ec2Proxy::start(tb.ec2_endpoint()).await;
        let image = image(&ec2).await;
        Some(Ec2Rig {
            tb,
            client,
            ns,
            run,
            logs,
            ec2,
            proxy,
            image,
        })
    }

    /// An operator for this run; its cluster name is the run.
    pub fn operator(&self, identity: &str, env: &[(&str, &str)]) -> Operator {
        Operator::start_with(
            &self.tb,
            &self.ns.name,
            &self.run,
            identity,
            &self.logs,
            &["--cluster-name", &self.run],
            env,
        )
    }

    /// The NodePool API.
    pub fn pools(&self) -> Api<NodePool> {
        Api::all(self.client.clone())
    }

    /// Creates the run's pool with `replicas`.
    pub async fn create_pool(&self, replicas: i32) {
        self.create_pool_with(replicas, json!({})).await;
    }

    /// Creates the pool with `extra` merged into `spec.provider.aws`.
    pub async fn create_pool_with(&self, replicas: i32, extra: serde_json::Value) {
        let mut aws = json!({
            "region": "us-east-1", "instanceType": "t3.micro",
            "imageId": self.image, "endpoint": self.proxy.url,
            "tags": { "team": "theseus-tests" }
        });
        for (k, v) in extra.as_object().unwrap() {
            aws[k] = v.clone();
        }
        let spec = json!({ "provider": { "type": "Aws", "aws": aws } });
        super::pools::apply(&self.pools(), &self.run, replicas, spec).await;
    }

    /// The pool's `type_` condition as (status, reason, message).
    pub async fn condition(&self, type_: &str) -> Option<(String, String, String)> {
        let pool = self.pools().get(&self.run).await.ok()?;
        let st = pool.status.unwrap_or_default();
        conditions::find(&st.conditions, type_)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    }

    /// `kubectl scale` the run's pool.
    pub fn scale(&self, replicas: i32) {
        super::pools::scale(&self.tb, &self.run, replicas);
    }

    /// Our live instances in moto: id → tags.
    pub async fn ours(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        live(
            &self.ec2,
            &[
                ("theseus.dev/nodepool", &self.run),
                ("theseus.dev/cluster", &self.run),
            ],
        )
        .await
    }

    /// Waits until moto and the pool's status agree on `n` instances and the
    /// pool is no longer scaling.
    pub async fn converged(&self, n: usize, timeout: Duration) -> NodePool {
        eventually(timeout, &format!("{n} instances, recorded and live"), || async {
            let pool = self.pools().get(&self.run).await.map_err(|e| e.to_string())?;
            let st = pool.status.clone().unwrap_or_default();
            let recorded: Vec<String> = st.instances.iter().map(|i| i.id.clone()).collect();
            let live: Vec<String> = self.ours().await.into_keys().collect();
            let mut sorted = recorded.clone();
            sorted.sort();
            let scaling = conditions::find(&st.conditions, "Scaling").map(|c| c.status.clone());
            if sorted == live && live.len() == n && st.replicas == n as i32 && scaling.as_deref() == Some("False") {
                Ok(pool)
            } else {
                Err(format!("recorded {sorted:?}, live {live:?}, status.replicas {}, Scaling {scaling:?}", st.replicas))
            }
        })
        .await
    }

    /// Asserts every DescribeInstances carried the owner filters.
    pub fn assert_describes_filtered(&self) {
        let log = self.proxy.log.lock().unwrap();
        assert!(log.calls.get("DescribeInstances").copied().unwrap_or(0) > 0);
        assert_eq!(
            log.unfiltered_describes, 0,
            "every DescribeInstances carries the owner tag filters"
        );
        eprintln!(
            "EC2 calls through the proxy: {:?} (throttled {})",
            log.calls, log.throttled
        );
    }
}
