//! The dashboard in headless Chromium, driven over WebDriver (fantoccini
//! talking to chromedriver), against `exo serve`, a worker process and a
//! Redis of its own: every page, a task's events arriving while it runs,
//! and the Cancel button.
//!
//! Needs Chromium and chromedriver (Debian packages `chromium` and
//! `chromium-driver`; `.ci/run` installs them). A screenshot of each page
//! is written to `target/tmp/dashboard/`; with `EXO_UPDATE_SCREENSHOTS=1`
//! they are copied into `docs/img/` as well.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use exo_e2e::{Target, WorkerProcess, agent_file};
use exo_testkit::{TestProcess, TestRedis, find_binary};
use fantoccini::{Client, ClientBuilder, Locator, elements::Element};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a page may take to show what a test waits for.
const PAGE_WAIT: Duration = Duration::from_secs(20);

const INSTALL_HINT: &str = "The dashboard tests drive headless Chromium through chromedriver: \
     install the Debian packages `chromium` and `chromium-driver` \
     (`apt-get install chromium chromium-driver`; .ci/run does).";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_shows_the_fleet_the_tasks_a_task_and_the_dead_letters() {
    let stack = Stack::start(&["--concurrency", "4", "--heartbeat-ttl", "3"]);
    let researcher = stack.agent(
        "researcher",
        json!({"model": "scripted:weather", "tools": ["fixtools.tools.get_weather"]}),
    );
    let summarizer = stack.agent("summarizer", json!({"model": "scripted:echo"}));
    let flaky = stack.agent(
        "flaky",
        json!({"model": "scripted:fail:the model provider answered 503 Service Unavailable"}),
    );
    let reporter = stack.agent("reporter", json!({"model": "scripted:slow:120000"}));

    let weather = stack.submit(&researcher, "What is the weather in Paris?", &[]);
    let mut completed = vec![weather.clone()];
    for input in [
        "Summarize the release notes of version 2.4.",
        "List the open incidents of last week.",
    ] {
        completed.push(stack.submit(&summarizer, input, &[]));
    }
    for task_id in &completed {
        stack.wait_for_status(task_id, "completed");
    }
    let failed = stack.submit(
        &flaky,
        "Translate the onboarding guide.",
        &["--max-retries", "0"],
    );
    stack.wait_for_status(&failed, "failed");
    let running = stack.submit(&reporter, "Write the weekly report.", &[]);
    stack.wait_for_status(&running, "running");

    let browser = Browser::open(&stack.base_url).await;

    // Overview: the live worker in the fleet table, running the long task.
    browser.visit("/").await;
    let worker_row = format!(
        "#workers-table tbody tr[data-worker-id=\"{}\"][data-alive=\"true\"]",
        stack.worker.worker_id
    );
    browser.wait_for(&worker_row).await;
    browser
        .wait_for(&format!("{worker_row} a[href=\"#/tasks/{running}\"]"))
        .await;
    // One of four slots busy: the meter is a quarter full.
    let filled = browser
        .client
        .execute(
            "const fill = document.querySelector(arguments[0]);
             return fill.getBoundingClientRect().width / fill.parentElement.clientWidth;",
            vec![json!(format!("{worker_row} .meter-fill"))],
        )
        .await
        .expect("measure the slots meter");
    let filled = filled.as_f64().expect("a ratio");
    assert!(
        (0.2..0.3).contains(&filled),
        "1 of 4 slots busy fills {filled} of the meter"
    );
    browser
        .wait_until("the queue's dead-letter count", async || {
            (browser.text("#queue-dead-letter").await? == "1").then_some(())
        })
        .await;
    browser.wait_for("#throughput-chart svg").await;
    // One failure in four finished tasks fires the failure-rate alert.
    let alert = browser
        .wait_for("#alerts [data-alert=\"task_failure_rate_high\"]")
        .await;
    let alert = alert.text().await.expect("the alert's text");
    assert!(
        alert.starts_with("task_failure_rate_high (warning) task failure rate is 25.0%"),
        "the alert names its rule once: {alert}"
    );
    browser.assert_no_errors().await;
    browser.screenshot("overview.png").await;

    // Tasks: every submitted task, with its status.
    browser.visit("/tasks").await;
    let expected: Vec<(&str, &str)> = completed
        .iter()
        .map(|task_id| (task_id.as_str(), "completed"))
        .chain([(failed.as_str(), "failed"), (running.as_str(), "running")])
        .collect();
    for (task_id, status) in &expected {
        browser
            .wait_for(&format!(
                "#tasks-table tbody tr[data-task-id=\"{task_id}\"][data-status=\"{status}\"]"
            ))
            .await;
    }
    assert_eq!(
        browser.count("#tasks-table tbody tr[data-task-id]").await,
        5
    );
    browser.assert_no_errors().await;
    browser.screenshot("tasks.png").await;
    // The status filter narrows the list to the completed ones.
    browser
        .wait_for("#status-filter")
        .await
        .select_by_value("completed")
        .await
        .expect("choose a status");
    browser
        .wait_until("only completed tasks listed", async || {
            let statuses = browser
                .attrs("#tasks-table tbody tr[data-task-id]", "data-status")
                .await;
            (statuses.len() == completed.len() && statuses.iter().all(|s| s == "completed"))
                .then_some(())
        })
        .await;

    // A task: its result, and the timeline of its events.
    browser.visit(&format!("/tasks/{weather}")).await;
    browser
        .wait_for("#task-status[data-status=\"completed\"]")
        .await;
    browser.wait_for("#timeline[data-ended=\"true\"]").await;
    browser
        .wait_for("#stream-state[data-state=\"ended\"]")
        .await;
    for event_type in [
        "status",
        "step",
        "text",
        "tool_call",
        "tool_result",
        "usage",
    ] {
        browser
            .wait_for(&format!("#timeline [data-event-type=\"{event_type}\"]"))
            .await;
    }
    assert_eq!(
        browser.text("#task-output").await.as_deref(),
        Some("Let me check. It is sunny in Paris.")
    );
    let tool_result = browser
        .text("#timeline [data-event-type=\"tool_result\"]")
        .await
        .unwrap_or_default();
    assert!(
        tool_result.contains("sunny in Paris"),
        "the tool result is shown: {tool_result}"
    );
    assert!(
        !browser.enabled("#cancel-button").await,
        "a completed task cannot be cancelled"
    );
    browser.assert_no_errors().await;
    browser.screenshot("task.png").await;

    // Dead letters: the failed task, with its reason; redrive puts it back.
    browser.visit("/dead-letters").await;
    let row = browser
        .wait_for(&format!(
            "#dead-letters-table tbody tr[data-task-id=\"{failed}\"]"
        ))
        .await;
    let entry_id = row
        .attr("data-entry-id")
        .await
        .expect("read data-entry-id")
        .expect("a dead-letter row has an entry id");
    let shown = row.text().await.expect("the row's text");
    assert!(
        shown.contains("503 Service Unavailable"),
        "the reason is shown: {shown}"
    );
    browser.assert_no_errors().await;
    browser.screenshot("dead-letters.png").await;
    let redrive = browser
        .wait_for(&format!("button[data-redrive=\"{entry_id}\"]"))
        .await;
    assert!(
        redrive.is_enabled().await.expect("read the button"),
        "redrive is allowed without tokens"
    );
    redrive.click().await.expect("click Redrive");
    browser
        .wait_for("#dead-letters-notice[data-outcome=\"ok\"]")
        .await;
    // The task runs again, fails again, and is dead-lettered anew (the
    // page is reloaded rather than waiting for its next poll).
    browser
        .wait_until("the redriven task to be dead-lettered again", async || {
            browser.client.refresh().await.ok()?;
            browser
                .wait_until("the dead letters to load", async || {
                    browser
                        .text("#dead-letters-count")
                        .await
                        .filter(|count| !count.is_empty())
                })
                .await;
            let entries = browser
                .attrs(
                    &format!("#dead-letters-table tbody tr[data-task-id=\"{failed}\"]"),
                    "data-entry-id",
                )
                .await;
            entries.iter().any(|entry| *entry != entry_id).then_some(())
        })
        .await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_page_shows_the_text_as_it_streams_in() {
    let stack = Stack::start(&[]);
    let chunks: Vec<String> = (1..=24)
        .map(|index| format!("chunk {index:02}; "))
        .collect();
    let script = json!({"turns": [{
        "text": chunks,
        "chunk_delay_ms": 150,
        "usage": {"input_tokens": 12, "output_tokens": 24, "total_tokens": 36},
    }]});
    let streamer = stack.agent("streamer", json!({"model": format!("scripted:{script}")}));
    let browser = Browser::open(&stack.base_url).await;
    let task_id = stack.submit(&streamer, "Stream a long answer.", &[]);
    browser.visit(&format!("/tasks/{task_id}")).await;

    // The text grows while the task runs: several distinct lengths are
    // seen before the stream ends.
    let text = "#timeline [data-event-type=\"text\"]";
    let mut lengths = Vec::new();
    browser
        .wait_until("the streamed text to grow three times", async || {
            let length = browser.text(text).await.map_or(0, |shown| shown.len());
            if length > 0 && lengths.last() != Some(&length) {
                lengths.push(length);
            }
            (lengths.len() >= 3).then_some(())
        })
        .await;
    assert!(
        browser.attr("#timeline", "data-ended").await.as_deref() != Some("true"),
        "the text grew before the stream ended: {lengths:?}"
    );
    assert_eq!(
        browser.attr("#stream-state", "data-state").await.as_deref(),
        Some("live")
    );

    browser
        .wait_for("#task-status[data-status=\"completed\"]")
        .await;
    browser.wait_for("#timeline[data-ended=\"true\"]").await;
    browser
        .wait_for("#stream-state[data-state=\"ended\"]")
        .await;
    assert_eq!(
        browser
            .text(text)
            .await
            .map(|shown| shown.trim().to_owned()),
        Some(chunks.concat().trim().to_owned())
    );
    browser
        .wait_for("#timeline [data-event-type=\"status\"][data-status=\"completed\"]")
        .await;
    let counted = browser.text("#event-count").await.unwrap_or_default();
    assert_eq!(
        Some(counted.clone()),
        browser.attr("#timeline", "data-count").await,
        "the header counts what the timeline drew"
    );
    assert!(
        counted.parse::<usize>().unwrap_or(0) > chunks.len(),
        "every text chunk is an event, plus status and step events: {counted}"
    );
    browser.assert_no_errors().await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_the_cancel_button_needs_the_cancel_scope_and_cancels_a_running_task() {
    const READER: &str = "reader-token-0123456789";
    const OPERATOR: &str = "operator-token-0123456789";
    let stack = Stack::start_with_tokens(
        &[],
        Some(json!({"tokens": [
            {"name": "reader", "token": READER, "scopes": ["read"]},
            {"name": "operator", "token": OPERATOR, "scopes": ["read", "cancel"]},
        ]})),
    );
    let slow = stack.agent("slow", json!({"model": "scripted:slow:60000"}));
    let browser = Browser::open(&stack.base_url).await;
    let task_id = stack.submit(&slow, "Take your time.", &[]);
    stack.wait_for_status(&task_id, "running");

    // Without a token the page says so.
    browser.visit(&format!("/tasks/{task_id}")).await;
    browser.wait_for("#error-banner.auth:not([hidden])").await;
    let refused = browser.console_errors().await;
    assert!(
        refused.iter().all(|error| error.contains("401")),
        "only the refused requests are errors: {refused:#?}"
    );

    // A read-only token shows the task and its live stream, but not Cancel.
    browser.use_token(READER).await;
    browser.wait_for("#me-info[data-scopes=\"read\"]").await;
    browser
        .wait_for("#task-status[data-status=\"running\"]")
        .await;
    browser.wait_for("#stream-state[data-state=\"live\"]").await;
    browser.wait_for("#error-banner[hidden]").await;
    // A request the page sent without a token may be refused after the
    // first look at the console; nothing else is an error.
    let refused = browser.console_errors().await;
    assert!(
        refused.iter().all(|error| error.contains("401")),
        "only the refused requests are errors: {refused:#?}"
    );
    assert!(
        !browser.enabled("#cancel-button").await,
        "Cancel needs the cancel scope"
    );

    // With the cancel scope, Cancel stops the task.
    browser.use_token(OPERATOR).await;
    browser
        .wait_for("#me-info[data-scopes=\"read cancel\"]")
        .await;
    browser
        .wait_for("#task-status[data-status=\"running\"]")
        .await;
    let cancel = browser.wait_for("#cancel-button:enabled").await;
    let started = Instant::now();
    cancel.click().await.expect("click Cancel");
    let outcome = browser.wait_for("#cancel-outcome[data-outcome]").await;
    let outcome = outcome
        .attr("data-outcome")
        .await
        .expect("read the outcome");
    assert!(
        matches!(outcome.as_deref(), Some("cancelling" | "cancelled")),
        "cancel outcome: {outcome:?}"
    );
    browser
        .wait_for("#task-status[data-status=\"cancelled\"]")
        .await;
    browser.wait_for("#timeline[data-ended=\"true\"]").await;
    browser
        .wait_for("#timeline [data-event-type=\"status\"][data-status=\"cancelled\"]")
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the cancel took effect long before the 60 s run would have ended"
    );
    assert!(!browser.enabled("#cancel-button").await);
    assert_eq!(stack.target.status(&task_id)["status"], "cancelled");
    browser.assert_no_errors().await;
    browser.close().await;
}

/// A Redis, a worker and `exo serve`, all for one test.
struct Stack {
    target: Target,
    worker: WorkerProcess,
    _gateway: TestProcess,
    /// Where the gateway listens, `http://127.0.0.1:<port>`.
    base_url: String,
    dir: tempfile::TempDir,
    _redis: TestRedis,
}

impl Stack {
    fn start(worker_args: &[&str]) -> Self {
        Self::start_with_tokens(worker_args, None)
    }

    /// Starts the gateway with these tokens (`{"tokens": [...]}`), if any.
    /// Looks for Chromium first, so that a machine without it fails at
    /// once with what to install.
    fn start_with_tokens(worker_args: &[&str], tokens: Option<Value>) -> Self {
        browser_binaries();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let redis = TestRedis::new();
        let target = Target::of(&redis);
        let worker = target.start_worker(worker_args);
        let mut command = target.command();
        command
            .args(["serve", "--addr", "127.0.0.1:0"])
            .env("RUST_LOG", "info");
        if let Some(tokens) = tokens {
            let path = dir.path().join("tokens.json");
            std::fs::write(&path, tokens.to_string()).expect("write the tokens file");
            command.arg("--tokens-file").arg(path);
        }
        let mut gateway = TestProcess::start("exo serve", command);
        let base_url = gateway.wait_for_output(
            Duration::from_secs(30),
            "the listening address",
            |stdout, _| {
                stdout.lines().find_map(|line| {
                    line.strip_prefix("exo gateway listening on ")
                        .map(|url| url.trim().to_owned())
                })
            },
        );
        Stack {
            target,
            worker,
            _gateway: gateway,
            base_url,
            dir,
            _redis: redis,
        }
    }

    /// Writes an agent file named `name` with `config` (plus the name).
    fn agent(&self, name: &str, mut config: Value) -> PathBuf {
        config["name"] = json!(name);
        agent_file(self.dir.path(), &format!("{name}.json"), &config)
    }

    /// Submits a task with the detailed event set; returns its id.
    fn submit(&self, agent: &Path, input: &str, extra: &[&str]) -> String {
        let agent = agent.to_str().expect("a UTF-8 path");
        let mut args = vec![
            "task",
            "submit",
            "--agent",
            agent,
            "--input",
            input,
            "--detailed",
        ];
        args.extend_from_slice(extra);
        let submitted = self.target.json(&args);
        submitted["task_id"].as_str().expect("a task id").to_owned()
    }

    fn wait_for_status(&self, task_id: &str, status: &str) {
        self.target
            .wait_for_status(task_id, status, Duration::from_secs(20));
    }
}

/// `chromedriver` in a process group of its own, so that dropping it ends
/// the browser it started too.
struct ChromeDriver {
    process: TestProcess,
    port: u16,
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let group = format!("-{}", self.process.pid());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
    }
}

/// A headless Chromium session on the dashboard.
struct Browser {
    client: Client,
    base_url: String,
    driver: ChromeDriver,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session.
    async fn open(base_url: &str) -> Self {
        let (chromium, chromedriver) = browser_binaries();
        let mut command = Command::new(chromedriver);
        command.arg("--port=0").process_group(0);
        let mut process = TestProcess::start("chromedriver", command);
        let port: u16 = process.wait_for_output(PAGE_WAIT, "its port", |stdout, _| {
            stdout.lines().find_map(|line| {
                line.split_once("started successfully on port ")
                    .and_then(|(_, port)| port.trim().trim_end_matches('.').parse().ok())
            })
        });
        let driver = ChromeDriver { process, port };
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".to_owned(), json!("chrome"));
        // Keeps the console for `console_errors`.
        capabilities.insert("goog:loggingPrefs".to_owned(), json!({"browser": "ALL"}));
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1400,900",
                ],
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "no Chromium session through chromedriver: {error}\n{}",
                    driver.process.output()
                )
            });
        Browser {
            client,
            base_url: base_url.to_owned(),
            driver,
        }
    }

    /// Opens a dashboard route (`/`, `/tasks`, `/tasks/<id>`, ...).
    async fn visit(&self, route: &str) {
        let url = format!("{}/#{route}", self.base_url);
        self.client
            .goto(&url)
            .await
            .unwrap_or_else(|error| panic!("open {url}: {error}"));
    }

    /// Types a token into the header's Token box and saves it.
    async fn use_token(&self, token: &str) {
        let input = self.wait_for("#token-input").await;
        input.clear().await.expect("clear the token box");
        input.send_keys(token).await.expect("type the token");
        self.wait_for("#token-save")
            .await
            .click()
            .await
            .expect("click Save");
    }

    /// Waits for an element matching `css`.
    async fn wait_for(&self, css: &str) -> Element {
        self.wait_until(&format!("`{css}`"), async || {
            self.client.find(Locator::Css(css)).await.ok()
        })
        .await
    }

    /// Polls `check` until it returns `Some`; after [`PAGE_WAIT`] panics
    /// with what the page shows (and saves a screenshot of it).
    async fn wait_until<T>(&self, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            if let Some(value) = check().await {
                return value;
            }
            if Instant::now() > deadline {
                let state = self.describe().await;
                panic!("timed out after {PAGE_WAIT:?} waiting for {what}\n{state}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text of the first element matching `css`, if there is one.
    async fn text(&self, css: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.text().await.ok()
    }

    /// An attribute of the first element matching `css`.
    async fn attr(&self, css: &str, name: &str) -> Option<String> {
        let element = self.client.find(Locator::Css(css)).await.ok()?;
        element.attr(name).await.ok().flatten()
    }

    /// An attribute of every element matching `css` (missing ones left out).
    async fn attrs(&self, css: &str, name: &str) -> Vec<String> {
        let found = self
            .client
            .execute(
                "return [...document.querySelectorAll(arguments[0])]
                    .map((el) => el.getAttribute(arguments[1]))
                    .filter((value) => value !== null);",
                vec![json!(css), json!(name)],
            )
            .await
            .expect("run a script");
        serde_json::from_value(found).expect("a list of strings")
    }

    /// How many elements match `css`.
    async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |found| found.len())
    }

    /// Whether the first element matching `css` is enabled.
    async fn enabled(&self, css: &str) -> bool {
        let element = self.wait_for(css).await;
        element.is_enabled().await.expect("read enabled")
    }

    /// Panics when the error banner is showing.
    /// Panics when the error banner is showing or the console has errors
    /// (script errors, failed requests, Content-Security-Policy
    /// violations) since the last check.
    async fn assert_no_errors(&self) {
        let shown = self
            .client
            .execute(
                "const banner = document.querySelector('#error-banner');
                 return banner.hidden ? null : banner.innerText;",
                vec![],
            )
            .await
            .expect("run a script");
        assert!(shown.is_null(), "the error banner shows: {shown}");
        let errors = self.console_errors().await;
        assert!(errors.is_empty(), "the console has errors: {errors:#?}");
    }

    /// The console's errors since the last call, through chromedriver's log
    /// endpoint (which WebDriver itself lacks).
    async fn console_errors(&self) -> Vec<String> {
        let session = self
            .client
            .session_id()
            .await
            .ok()
            .flatten()
            .expect("a session id");
        let body = json!({"type": "browser"}).to_string();
        let request = format!(
            "POST /session/{session}/se/log HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        let json = tokio::time::timeout(PAGE_WAIT, post(self.driver.port, &request))
            .await
            .expect("chromedriver answers the log request in time");
        let json = json.as_str();
        let log: Value = serde_json::from_str(json)
            .unwrap_or_else(|error| panic!("chromedriver's log is not JSON ({error}): {json}"));
        log["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|entry| entry["level"] == "SEVERE")
            .map(|entry| entry["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Saves a screenshot of the window as `name` under
    /// `target/tmp/dashboard/`, and into `docs/img/` when
    /// `EXO_UPDATE_SCREENSHOTS` is set.
    async fn screenshot(&self, name: &str) {
        // Let the last poll's cells and the chart settle.
        self.client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 requestAnimationFrame(() => requestAnimationFrame(() => done()));",
                vec![],
            )
            .await
            .expect("wait for a frame");
        let png = self.client.screenshot().await.expect("take a screenshot");
        let path = screenshot_dir().join(name);
        std::fs::write(&path, &png).expect("write the screenshot");
        if std::env::var_os("EXO_UPDATE_SCREENSHOTS").is_some_and(|value| value == "1") {
            let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/img");
            std::fs::create_dir_all(&docs).expect("create docs/img");
            std::fs::write(docs.join(name), &png).expect("write the screenshot into docs/img");
        }
    }

    /// The URL, the error banner and the view's text, for a failure
    /// message; saves a screenshot beside the others.
    async fn describe(&self) -> String {
        let url = self
            .client
            .current_url()
            .await
            .map(|url| url.to_string())
            .unwrap_or_default();
        let page = self
            .client
            .execute(
                "const banner = document.querySelector('#error-banner');
                 return {
                   banner: banner && !banner.hidden ? banner.innerText : null,
                   view: document.querySelector('#view').innerText.slice(0, 3000),
                 };",
                vec![],
            )
            .await
            .unwrap_or(Value::Null);
        let shot =
            screenshot_dir().join(format!("failure-{}.png", exo_testkit::unique_name("page")));
        let saved = match self.client.screenshot().await {
            Ok(png) if std::fs::write(&shot, &png).is_ok() => shot.display().to_string(),
            _ => "no screenshot".to_owned(),
        };
        format!(
            "page {url} ({saved})\nerror banner: {}\nview:\n{}\nchromedriver: {}",
            page["banner"],
            page["view"].as_str().unwrap_or_default(),
            self.driver.process.stderr()
        )
    }

    /// Ends the session (and Chromium with it).
    async fn close(self) {
        let Browser { client, driver, .. } = self;
        let _ = client.close().await;
        drop(driver);
    }
}

/// Sends an HTTP/1.1 request to 127.0.0.1:`port` and returns the body of
/// the answer (chromedriver always sends a Content-Length, and keeps the
/// connection open after it).
async fn post(port: u16, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to chromedriver");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut received = Vec::new();
    let mut buffer = [0_u8; 8192];
    loop {
        let read = stream.read(&mut buffer).await.expect("read the answer");
        received.extend_from_slice(&buffer[..read]);
        let text = String::from_utf8_lossy(&received);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())
                    .flatten()
            });
            if read == 0 || length.is_some_and(|length| body.len() >= length) {
                return body.to_owned();
            }
        }
        assert!(read > 0, "the connection closed mid-answer: {text}");
    }
}

/// Chromium and chromedriver, or a panic that says what to install.
fn browser_binaries() -> (PathBuf, PathBuf) {
    (
        find_binary("chromium", &[], INSTALL_HINT),
        find_binary("chromedriver", &[], INSTALL_HINT),
    )
}

/// `target/tmp/dashboard/`, created.
fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).expect("create the screenshot directory");
    dir
}
