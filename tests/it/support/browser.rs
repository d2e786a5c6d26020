//! A headless Chromium for tests that drive web pages: a `chromedriver`
//! child process on a free port of 127.0.0.1, spoken to in W3C WebDriver
//! over HTTP, with one WebDriver session (one browser, one cookie jar) per
//! [`Page`].
//!
//! Debian's `chromium` and `chromium-driver` provide the two binaries
//! (`scripts/setup` installs them). When either is not on PATH, a test that
//! needs the browser fails if `CI` is set and is skipped with a loud message
//! otherwise, as for the testbed.
//!
//! A WebDriver error fails the test with WebDriver's message, except where a
//! method returns a `Result` ([`Page::find`]).
//!
//! ```ignore
//! let Some(browser) = Browser::start().await else { return };
//! let page = browser.new_session().await;
//! page.goto(&url).await;
//! page.find("button#apply").await.unwrap().click().await;
//! page.accept_alert().await;
//! page.wait_until(TIMEOUT, "the apply is shown", "document.querySelector('#state').textContent === 'applied'").await;
//! ```

#![allow(dead_code)] // each test uses a part

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};

use super::{free_port, repo_root};

/// The key under which WebDriver sends an element's id.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Chromium's arguments: headless, runnable as root and in a container.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

/// How long a WebDriver command may take (a page load included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How long `chromedriver` may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the `wait_*` methods look again.
const POLL: Duration = Duration::from_millis(100);

/// A running `chromedriver`, stopped when dropped (its sessions' browsers
/// with it).
pub struct Browser {
    child: Child,
    /// `127.0.0.1:PORT`.
    addr: String,
    http: reqwest::Client,
    chromium: PathBuf,
    log: PathBuf,
}

impl Browser {
    /// Starts `chromedriver` on a free port and waits until it is ready; its
    /// log goes to `target/test-logs/chromedriver/PORT.log`. `None` (after
    /// printing why) when `chromium` or `chromedriver` is not on PATH and
    /// `CI` is not set; with `CI` set, that fails the test.
    pub async fn start() -> Option<Browser> {
        let chromium = on_path("chromium");
        let chromedriver = on_path("chromedriver");
        let (Some(chromium), Some(chromedriver)) = (chromium.clone(), chromedriver.clone()) else {
            let missing: Vec<&str> = [("chromium", chromium), ("chromedriver", chromedriver)]
                .into_iter()
                .filter(|(_, found)| found.is_none())
                .map(|(name, _)| name)
                .collect();
            let missing = match missing.len() {
                1 => format!("{} is", missing[0]),
                _ => format!("{} are", missing.join(" and ")),
            };
            if std::env::var_os("CI").is_some() {
                panic!(
                    "the browser is required under CI and {missing} not on PATH; run `scripts/setup`"
                );
            }
            eprintln!("SKIPPED: {missing} not on PATH; run `scripts/setup`");
            return None;
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .expect("an HTTP client");
        let logs = repo_root().join("target/test-logs/chromedriver");
        std::fs::create_dir_all(&logs).unwrap();
        // The port is free when chosen; another process may bind it before
        // chromedriver does, which then exits: try another.
        let mut failures = Vec::new();
        for _ in 0..3 {
            let port = free_port();
            let log = logs.join(format!("{port}.log"));
            let child = Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", chromedriver.display()));
            let mut browser = Browser {
                child,
                addr: format!("127.0.0.1:{port}"),
                http: http.clone(),
                chromium: chromium.clone(),
                log,
            };
            match browser.wait_ready().await {
                Ok(()) => {
                    eprintln!("chromedriver log: {}", browser.log.display());
                    return Some(browser);
                }
                Err(why) => failures.push(format!("{why} (log: {})", browser.log.display())),
            }
        }
        panic!("chromedriver did not start: {}", failures.join("; "));
    }

    /// Waits until `GET /status` says ready, or the process exits.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let url = format!("http://{}/status", self.addr);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("chromedriver exited ({status})"));
            }
            let last = match call(&self.http, Method::GET, &url, None).await {
                Ok(value) if value["ready"] == Value::Bool(true) => return Ok(()),
                Ok(value) => value.to_string(),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "chromedriver not ready after {READY_TIMEOUT:?}; last: {last}"
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Opens a new browser (a WebDriver session of its own, with a fresh
    /// profile: no cookies, no storage shared with any other page).
    pub async fn new_session(&self) -> Page {
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": self.chromium,
                        "args": CHROMIUM_ARGS,
                    },
                },
            },
        });
        let url = format!("http://{}/session", self.addr);
        let value = call(&self.http, Method::POST, &url, Some(&capabilities))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver cannot start {}: {e} (log: {})",
                    self.chromium.display(),
                    self.log.display()
                )
            });
        let id = value["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("a new session without a sessionId: {value}"))
            .to_owned();
        Page {
            session: Arc::new(Session {
                http: self.http.clone(),
                base: format!("http://{}/session/{id}", self.addr),
                addr: self.addr.clone(),
                id,
                closed: AtomicBool::new(false),
            }),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // `/shutdown` quits the sessions still open, so that no Chromium
        // outlives its chromedriver; then the process goes by its PID.
        blocking_request(&self.addr, "GET", "/shutdown");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver session, shared by its page and elements; deleted (its
/// browser quit) when the last of them is dropped, unless closed already.
struct Session {
    http: reqwest::Client,
    /// `http://127.0.0.1:PORT/session/ID`.
    base: String,
    addr: String,
    id: String,
    closed: AtomicBool,
}

impl Session {
    /// `METHOD /session/ID{path}` with `body`, and the reply's `value`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        call(&self.http, method, &format!("{}{path}", self.base), body).await
    }

    /// Like [`Session::call`], failing the test on an error with `doing`
    /// ("click `#apply`") and WebDriver's message.
    async fn must(&self, method: Method, path: &str, body: Option<&Value>, doing: &str) -> Value {
        self.call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("browser: cannot {doing}: {e}"))
    }

    async fn script(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        let body = json!({ "script": script, "args": args });
        self.call(Method::POST, "/execute/sync", Some(&body)).await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.closed.load(Ordering::SeqCst) {
            blocking_request(&self.addr, "DELETE", &format!("/session/{}", self.id));
        }
    }
}

/// A browser window with one tab: a WebDriver session. Its browser quits
/// when the page (and every [`Element`] found in it) is dropped, or at
/// [`Page::close`].
pub struct Page {
    session: Arc<Session>,
}

impl Page {
    /// Loads `url` and waits until the document has loaded.
    pub async fn goto(&self, url: &str) {
        let body = json!({ "url": url });
        self.session
            .must(Method::POST, "/url", Some(&body), &format!("load {url}"))
            .await;
    }

    /// Reloads the page.
    pub async fn refresh(&self) {
        self.session
            .must(
                Method::POST,
                "/refresh",
                Some(&json!({})),
                "reload the page",
            )
            .await;
    }

    /// The address of the page shown.
    pub async fn url(&self) -> String {
        let value = self
            .session
            .must(Method::GET, "/url", None, "read the URL")
            .await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// The document's title.
    pub async fn title(&self) -> String {
        let value = self
            .session
            .must(Method::GET, "/title", None, "read the title")
            .await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// The first element that matches the CSS selector `css`, or an error
    /// saying none does (or that `css` is not a selector).
    pub async fn find(&self, css: &str) -> Result<Element, String> {
        let body = json!({ "using": "css selector", "value": css });
        let value = self
            .session
            .call(Method::POST, "/element", Some(&body))
            .await
            .map_err(|e| format!("`{css}`: {e}"))?;
        Ok(self.element(&value, css))
    }

    /// Every element that matches `css`, in document order.
    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let body = json!({ "using": "css selector", "value": css });
        let value = self
            .session
            .must(
                Method::POST,
                "/elements",
                Some(&body),
                &format!("look for `{css}`"),
            )
            .await;
        value
            .as_array()
            .map(|found| found.iter().map(|v| self.element(v, css)).collect())
            .unwrap_or_default()
    }

    /// Whether any element matches `css`.
    pub async fn exists(&self, css: &str) -> bool {
        !self.find_all(css).await.is_empty()
    }

    /// The rendered text of the first element that matches `css`; fails the
    /// test when none does.
    pub async fn text(&self, css: &str) -> String {
        let element = self
            .find(css)
            .await
            .unwrap_or_else(|e| panic!("browser: no text to read: {e}"));
        element.text().await
    }

    /// Runs `script`, a function body (`return document.title`), with
    /// `args` as `arguments`, and returns what it returns (an element as
    /// `{"element-6066-…": id}`). Fails the test when the script throws.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.session
            .script(script, args)
            .await
            .unwrap_or_else(|e| panic!("browser: the script failed: {e}\nscript: {script}"))
    }

    /// Sets a cookie for the page's current domain (load a page of that
    /// domain first).
    pub async fn add_cookie(&self, name: &str, value: &str) {
        let body = json!({ "cookie": { "name": name, "value": value } });
        self.session
            .must(
                Method::POST,
                "/cookie",
                Some(&body),
                &format!("set the cookie {name}"),
            )
            .await;
    }

    /// The value of the cookie `name` visible to the current page, if any.
    pub async fn cookie(&self, name: &str) -> Option<String> {
        let path = format!("/cookie/{}", path_segment(name));
        match self.session.call(Method::GET, &path, None).await {
            Ok(value) => value["value"].as_str().map(str::to_owned),
            Err(e) if e.starts_with("no such cookie") => None,
            Err(e) => panic!("browser: cannot read the cookie {name}: {e}"),
        }
    }

    /// Writes a PNG of the viewport to `path` (creating its directory).
    pub async fn screenshot(&self, path: &Path) {
        let value = self
            .session
            .must(Method::GET, "/screenshot", None, "take a screenshot")
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("browser: a screenshot that is not base64: {e}"));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// The first element that matches `css` once there is one; fails the
    /// test when none appears within `timeout`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Element {
        let deadline = Instant::now() + timeout;
        loop {
            match self.find(css).await {
                Ok(element) => return element,
                Err(last) if Instant::now() >= deadline => panic!(
                    "browser: `{css}` did not appear on {} within {timeout:?}; last: {last}",
                    self.url().await
                ),
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Evaluates the JavaScript expression `js` until it is truthy and
    /// returns its value; fails the test after `timeout`, naming `what` and
    /// the last value (or the error the expression threw).
    pub async fn wait_until(&self, timeout: Duration, what: &str, js: &str) -> Value {
        let script = format!(
            "const value = ({js});\nreturn {{ truthy: !!value, value: value === undefined ? null : value }};"
        );
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.session.script(&script, Vec::new()).await {
                Ok(result) if result["truthy"] == Value::Bool(true) => {
                    return result["value"].clone();
                }
                Ok(result) => result["value"].to_string(),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "browser: {what}: not true after {timeout:?} on {}; last: {last}\nexpression: {js}",
                    self.url().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Accepts (OK) the open `alert`, `confirm` or `prompt` dialog, waiting
    /// up to 5 s for one to open, and returns its text.
    pub async fn accept_alert(&self) -> String {
        self.answer_alert("/alert/accept").await
    }

    /// Dismisses (Cancel) the open dialog, as [`Page::accept_alert`].
    pub async fn dismiss_alert(&self) -> String {
        self.answer_alert("/alert/dismiss").await
    }

    async fn answer_alert(&self, path: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        let text = loop {
            match self.session.call(Method::GET, "/alert/text", None).await {
                Ok(text) => break text.as_str().unwrap_or_default().to_owned(),
                Err(e) if Instant::now() >= deadline => {
                    panic!("browser: no dialog opened within 5s: {e}")
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        };
        self.session
            .must(
                Method::POST,
                path,
                Some(&json!({})),
                &format!("answer the dialog {text:?}"),
            )
            .await;
        text
    }

    /// Quits this page's browser now (dropping the page does the same, but
    /// blocks the thread meanwhile).
    pub async fn close(self) {
        self.session.closed.store(true, Ordering::SeqCst);
        let _ = self.session.call(Method::DELETE, "", None).await;
    }

    fn element(&self, value: &Value, css: &str) -> Element {
        let id = value[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("browser: `{css}` found, but no element id in {value}"));
        Element {
            session: self.session.clone(),
            id: id.to_owned(),
            css: css.to_owned(),
        }
    }
}

/// An element of a [`Page`], as found by a CSS selector. It stays valid
/// while it is in the document; after a reload or a re-render, find it
/// again.
pub struct Element {
    session: Arc<Session>,
    id: String,
    /// The selector it was found by, for messages.
    css: String,
}

impl Element {
    /// Clicks the element's centre (scrolling it into view); fails the test
    /// when something else would receive the click or it is not shown.
    pub async fn click(&self) {
        self.must(Method::POST, "/click", Some(&json!({})), "click")
            .await;
    }

    /// Its rendered text (what a reader sees: hidden parts excluded).
    pub async fn text(&self) -> String {
        let value = self.must(Method::GET, "/text", None, "read").await;
        value.as_str().unwrap_or_default().to_owned()
    }

    /// The attribute `name` as the document has it, `None` when it is not
    /// set. What was typed into an input is its `value` property
    /// ([`Element::prop`]), not its attribute.
    pub async fn attr(&self, name: &str) -> Option<String> {
        let path = format!("/attribute/{}", path_segment(name));
        let value = self
            .must(
                Method::GET,
                &path,
                None,
                &format!("read the attribute {name} of"),
            )
            .await;
        value.as_str().map(str::to_owned)
    }

    /// The DOM property `name` (e.g. an input's current `value`, a
    /// checkbox's `checked`), `null` when it is not defined.
    pub async fn prop(&self, name: &str) -> Value {
        let path = format!("/property/{}", path_segment(name));
        self.must(
            Method::GET,
            &path,
            None,
            &format!("read the property {name} of"),
        )
        .await
    }

    /// Types `text` into the element (after focusing it).
    pub async fn send_keys(&self, text: &str) {
        let body = json!({ "text": text });
        self.must(Method::POST, "/value", Some(&body), "type into")
            .await;
    }

    /// Empties an input or textarea.
    pub async fn clear(&self) {
        self.must(Method::POST, "/clear", Some(&json!({})), "clear")
            .await;
    }

    async fn must(&self, method: Method, path: &str, body: Option<&Value>, doing: &str) -> Value {
        let path = format!("/element/{}{path}", self.id);
        self.session
            .must(method, &path, body, &format!("{doing} `{}`", self.css))
            .await
    }
}

/// `METHOD url` with `body` as JSON; the reply's `value`, or WebDriver's
/// error as `error: message`.
async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let mut request = http.request(method.clone(), url);
    if let Some(body) = body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(body).unwrap());
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("{method} {url}: {e}"))?;
    let mut reply: Value = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{method} {url}: {status}, not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    let value = reply["value"].take();
    if status.is_success() {
        return Ok(value);
    }
    match (value["error"].as_str(), value["message"].as_str()) {
        // Chromedriver's messages mostly begin with the error's name.
        (Some(error), Some(message)) if message.starts_with(error) => Err(message.to_owned()),
        (Some(error), Some(message)) => Err(format!("{error}: {message}")),
        _ => Err(format!("{method} {url}: {status}: {reply}")),
    }
}

/// `METHOD path` to `addr` without a body, synchronously (for a `Drop`,
/// which cannot await), waiting for the whole response; errors are ignored.
fn blocking_request(addr: &str, method: &str, path: &str) {
    let Ok(socket) = addr.parse::<SocketAddr>() else {
        return;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&socket, Duration::from_secs(2)) else {
        return;
    };
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return;
    }
    // Read until the end of the body, as Content-Length says, or of the
    // stream.
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
        let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|n| n.trim().parse::<usize>().ok());
        if length.is_some_and(|length| received.len() >= end + 4 + length) {
            return;
        }
    }
}

/// `name` as one segment of a URL path.
fn path_segment(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The executable `name` in a directory of PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| {
            file.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
