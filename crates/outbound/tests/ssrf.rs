//! The outbound client never reaches a denied address: not by IP literal,
//! not by a name that resolves to one, not through a redirect. Real local
//! servers count every request they get, so "refused" means no request
//! arrived.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use sluice_config::server::OutboundConfig;
use sluice_outbound::{ClientOptions, Outbound, classify};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Clone)]
struct Target {
    hits: Arc<AtomicUsize>,
    redirect_to: Option<String>,
}

async fn handler(State(t): State<Target>) -> axum::response::Response {
    t.hits.fetch_add(1, Ordering::SeqCst);
    match &t.redirect_to {
        Some(to) => (StatusCode::FOUND, [(header::LOCATION, to.clone())]).into_response(),
        None => "ok".into_response(),
    }
}

/// A server on `ip:0` answering every path; returns its address and hit
/// counter.
async fn serve(ip: &str, redirect_to: Option<String>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let app = Router::new().fallback(get(handler)).with_state(Target {
        hits: hits.clone(),
        redirect_to,
    });
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, hits)
}

fn options() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(5),
        follow_redirects: true,
    }
}

/// Request `url` with `outbound`; the error message when it fails.
async fn fetch(outbound: &Outbound, url: &str) -> Result<String, String> {
    let client = outbound.client(options()).unwrap();
    let request = client
        .get(url.parse().unwrap())
        .map_err(|denied| denied.to_string())?;
    let response = request.send().await.map_err(|e| classify(&e).message)?;
    if response.status().is_redirection() {
        // reqwest hands back a redirect it will not follow (a non-http
        // scheme) as the answer itself.
        return Err(format!("redirect not followed: {}", response.status()));
    }
    Ok(response.text().await.unwrap())
}

#[tokio::test]
async fn private_addresses_are_refused_by_default() {
    let (addr, hits) = serve("127.0.0.1", None).await;
    let port = addr.port();
    let outbound = Outbound::default();
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        "http://10.0.0.1/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://192.168.0.1/".to_owned(),
        "http://0.0.0.0/".to_owned(),
    ] {
        let err = fetch(&outbound, &url).await.unwrap_err();
        assert!(
            err.contains("destination address is private"),
            "{url}: {err}"
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "no request reached the server"
    );

    // With the operator's opt-in the same server is reachable.
    let open = Outbound::allowing_private();
    assert_eq!(
        fetch(&open, &format!("http://127.0.0.1:{port}/"))
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(
        fetch(&open, &format!("http://localhost:{port}/"))
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn redirects_to_private_addresses_are_refused() {
    // The inner server listens on 127.0.0.2, which is not allowed; the
    // outer one on 127.0.0.1, which the config allows by CIDR.
    let (inner, inner_hits) = serve("127.0.0.2", None).await;
    let outbound = Outbound::from_config(&OutboundConfig {
        allow_private: false,
        allow_cidrs: vec!["127.0.0.1/32".to_owned()],
        extra_ca_file: None,
    })
    .unwrap();
    for to in [
        format!("http://127.0.0.2:{}/", inner.port()),
        format!("http://[::1]:{}/", inner.port()),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.1.2.3/".to_owned(),
        "file:///etc/passwd".to_owned(),
    ] {
        let (outer, outer_hits) = serve("127.0.0.1", Some(to.clone())).await;
        let err = fetch(&outbound, &format!("http://127.0.0.1:{}/", outer.port()))
            .await
            .unwrap_err();
        if to.starts_with("file:") {
            assert!(
                err.contains("redirect not followed"),
                "redirect to {to}: {err}"
            );
        } else {
            assert!(
                err.contains("destination address is private"),
                "redirect to {to}: {err}"
            );
        }
        assert_eq!(outer_hits.load(Ordering::SeqCst), 1);
    }
    assert_eq!(inner_hits.load(Ordering::SeqCst), 0);

    // An allowed redirect is followed.
    let (target, target_hits) = serve("127.0.0.1", None).await;
    let (outer, _) = serve(
        "127.0.0.1",
        Some(format!("http://127.0.0.1:{}/", target.port())),
    )
    .await;
    assert_eq!(
        fetch(&outbound, &format!("http://127.0.0.1:{}/", outer.port()))
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(target_hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_bad_extra_ca_file_is_a_setup_error() {
    let dir = std::env::temp_dir().join(format!("sluice-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ca.pem");
    std::fs::write(&path, "not a certificate").unwrap();
    let err = Outbound::from_config(&OutboundConfig {
        allow_private: false,
        allow_cidrs: Vec::new(),
        extra_ca_file: Some(path.clone()),
    })
    .unwrap_err();
    assert!(err.to_string().contains("extra CA file"), "{err}");
    let err = Outbound::from_config(&OutboundConfig {
        allow_private: false,
        allow_cidrs: vec!["10.0.0.0/33".to_owned()],
        extra_ca_file: None,
    })
    .unwrap_err();
    assert!(err.to_string().contains("allow_cidrs"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
