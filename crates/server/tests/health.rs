//! Destination health checks (issue 6): run on pipeline create, update and
//! process start, shown in `GET /pipelines/{id}` (`delivery.health`) and in
//! the `/readyz` body, without rejecting the pipeline and without making
//! the process unready. Error texts carry no secrets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Backend, Options, TestApp, spawn_app, spawn_app_with};
use serde_json::{Value, json};
use std::time::Duration;

backend_tests!(
    a_down_target_shows_unhealthy_and_the_process_stays_ready,
    a_denied_address_is_reported_by_the_health_check,
    pipelines_are_checked_when_the_process_starts,
);

const SECRET: &str = "whsec_health_canary_5f2d9a71c3";
const TOKEN: &str = "tok_health_canary_88e1b0";

async fn app(b: Backend) -> TestApp {
    spawn_app_with(
        b,
        Options {
            tweak: Box::new(|c| c.outbound.allow_private = true),
        },
    )
    .await
}

fn webhook(name: &str, url: &str) -> Value {
    json!({
        "name": name,
        "destination": {"type": "webhook", "url": url, "allow_http": true, "secret": SECRET}
    })
}

/// A port with a listener (connections are accepted by the kernel).
async fn listening() -> (tokio::net::TcpListener, String) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    (l, url)
}

/// A port nothing listens on (connections are refused).
fn closed_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/hook?token={TOKEN}")
}

/// Poll `GET /pipelines/{id}` until its `delivery.health` is for
/// `version`.
async fn health(app: &TestApp, pipeline: &str, version: i64) -> Value {
    for _ in 0..400 {
        let r = app
            .get(&format!("/api/v1/pipelines/{pipeline}"))
            .await
            .expect(200);
        let h = &r.data()["delivery"]["health"];
        if h["version"] == version {
            return h.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no health check of version {version} of {pipeline}");
}

async fn a_down_target_shows_unhealthy_and_the_process_stays_ready(b: Backend) {
    let app = app(b).await;
    let (_listener, up_url) = listening().await;
    let up = app.create_pipeline(webhook("up", &up_url)).await;
    // Created although its target is down.
    let down = app.create_pipeline(webhook("down", &closed_url())).await;

    let h = health(&app, &up, 1).await;
    assert_eq!(h["ok"], true, "{h}");
    assert!(h["error"].is_null(), "{h}");
    assert!(h["checked_at"].is_string(), "{h}");

    let h = health(&app, &down, 1).await;
    assert_eq!(h["ok"], false, "{h}");
    let error = h["error"].as_str().unwrap();
    assert!(error.contains("connection failed"), "{error}");
    assert!(!error.contains(SECRET) && !error.contains(TOKEN), "{error}");
    // The pipeline stays active: batches are accepted and wait.
    let r = app
        .get(&format!("/api/v1/pipelines/{down}"))
        .await
        .expect(200);
    assert_eq!(r.data()["status"], "active");

    // /readyz: ready, with the destinations' health in the body.
    let r = app.call(reqwest::Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body["status"], "ready", "{}", r.body);
    assert_eq!(r.body["destinations"]["checked"], 2, "{}", r.body);
    assert_eq!(r.body["destinations"]["unhealthy"], 1, "{}", r.body);
    let text = r.body.to_string();
    assert!(!text.contains("connection failed"), "no error text: {text}");
    // Unauthenticated: no tenant's pipeline is named.
    assert!(!text.contains(&up) && !text.contains(&down), "{text}");
    assert!(!text.contains(SECRET) && !text.contains(TOKEN), "{text}");

    // Fixed by an update: version 2 is checked.
    app.put(
        &format!("/api/v1/pipelines/{down}"),
        webhook("down", &up_url),
    )
    .await
    .expect(200);
    let h = health(&app, &down, 2).await;
    assert_eq!(h["ok"], true, "{h}");
    assert!(h["error"].is_null(), "{h}");
    app.shutdown().await;
}

async fn a_denied_address_is_reported_by_the_health_check(b: Backend) {
    // Private addresses are not allowed here.
    let app = spawn_app(b).await;
    let (_listener, url) = listening().await;
    let p = app.create_pipeline(webhook("private", &url)).await;
    let h = health(&app, &p, 1).await;
    assert_eq!(h["ok"], false, "{h}");
    assert!(
        h["error"]
            .as_str()
            .unwrap()
            .contains("destination address is private"),
        "{h}"
    );
    app.shutdown().await;
}

async fn pipelines_are_checked_when_the_process_starts(b: Backend) {
    let mut app = app(b).await;
    let (_listener, up_url) = listening().await;
    let up = app.create_pipeline(webhook("up", &up_url)).await;
    let down = app.create_pipeline(webhook("down", &closed_url())).await;
    health(&app, &up, 1).await;
    health(&app, &down, 1).await;
    let first = app.server.take().unwrap();
    let config = first.state.config().clone();
    first.shutdown();
    first.wait().await;

    // A new process on the same database: neither the API nor /readyz is
    // called, the start-up round checks both pipelines.
    let second = sluice_server::start(config).await.unwrap();
    let (up_id, down_id) = (up.parse().unwrap(), down.parse().unwrap());
    let mut seen = (None, None);
    for _ in 0..400 {
        let h = second.state.destination_health();
        seen = (h.get(up_id).map(|v| v.ok), h.get(down_id).map(|v| v.ok));
        if seen.0.is_some() && seen.1.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, (Some(true), Some(false)));
    second.shutdown();
    second.wait().await;
}
