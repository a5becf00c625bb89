//! The dashboard in a real browser: headless Chromium driven over WebDriver (chromedriver,
//! Debian packages `chromium` and `chromium-driver`) loads `/ops`, sees a live call appear, its
//! transcript grow, and the call disappear after the page's hang-up button ends it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::voice::{call_query, tone, TestApp, VoiceClient, TOKEN};
use common::Backend;
use serde_json::{json, Value};
use uuid::Uuid;

struct Driver {
    child: Child,
    base: String,
    session: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.child.kill();
    }
}

fn post(url: &str, body: &Value) -> Value {
    let mut response = ureq::post(url)
        .header("content-type", "application/json")
        .send(body.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap()
}

impl Driver {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (apt-get install chromium chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let created = post(
            &format!("{base}/session"),
            &json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"]
            }}}}),
        );
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        Self {
            child,
            base,
            session,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    fn go(&self, url: &str) {
        post(&self.url("/url"), &json!({ "url": url }));
    }

    /// Runs JavaScript in the page and returns its value.
    fn js(&self, script: &str) -> Value {
        post(
            &self.url("/execute/sync"),
            &json!({ "script": script, "args": [] }),
        )["value"]
            .clone()
    }

    /// Waits (blocking, up to 20 s) until `script` returns something truthy.
    fn wait_for(&self, what: &str, script: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let value = self.js(script);
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[actix_web::test]
async fn the_dashboard_follows_a_live_call_in_a_real_browser() {
    let app = TestApp::start(Backend::Sqlite, &[]).await;
    let mut client = VoiceClient::connect(app.port, Uuid::new_v4(), &call_query()).await;
    let call_id = client.wait_started().await;
    client.send_audio(400, &tone()).await;
    client.wait_finals(2).await;

    let port = app.port;
    let short = call_id.to_string()[..8].to_string();
    let first = short.clone();
    let (driver, before) = tokio::task::spawn_blocking(move || {
        let short = first;
        let driver = Driver::start();
        driver.go(&format!("http://127.0.0.1:{port}/ops#token={TOKEN}"));
        // The live call appears in the table.
        let row = driver.wait_for(
            "the live call",
            &format!("const r=[...document.querySelectorAll('#calls tr')].find(r=>r.cells[0].textContent==='{short}'); return r ? r.textContent : null;"),
        );
        assert!(row.as_str().unwrap().contains("live"), "{row}");
        // Following it shows its transcript.
        driver.js(&format!("[...document.querySelectorAll('#calls tr')].find(r=>r.cells[0].textContent==='{short}').click(); return true;"));
        let shown = driver.wait_for(
            "the transcript",
            "const t=document.getElementById('turns').textContent; return t.split('\\n').filter(l=>l.startsWith('#')).length;",
        );
        (driver, shown.as_i64().unwrap_or(0))
    })
    .await
    .unwrap();
    assert!(before >= 2, "{before} turns shown");

    // More speech: the transcript grows on the page.
    client.send_audio(400, &tone()).await;
    client.wait_finals(4).await;
    let grown = tokio::task::spawn_blocking(move || {
        driver.wait_for(
            "the transcript to grow",
            &format!("const n=document.getElementById('turns').textContent.split('\\n').filter(l=>l.startsWith('#')).length; return n > {before} ? n : 0;"),
        );
        // The page's hang-up button ends the call; the row disappears.
        driver.js("document.getElementById('hangup').click(); return true;");
        driver.wait_for(
            "the call to leave the table",
            &format!("return ![...document.querySelectorAll('#calls tr')].some(r=>r.cells[0].textContent==='{short}');"),
        );
        driver
    })
    .await
    .unwrap();
    drop(grown);
    let log = client.finished().await;
    assert_eq!(
        log.closes[0].0, 1000,
        "hang-up closes with 1000 after the flush"
    );
    let call = app.store().get_call(call_id).await.unwrap().unwrap();
    assert_eq!(call.end_reason.as_deref(), Some("operator_hangup"));
    app.stop().await;
}
