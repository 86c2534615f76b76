//! Security headers and CORS (R-SEC-4).
//!
//! The API serves JSON to programs, never pages to browsers, so the
//! headers lock a browser down completely: no content may load
//! (`default-src 'none'`), nothing may frame it, no MIME sniffing, no
//! referrer, no powerful features. They are set by the outermost layer so
//! that every answer carries them: successes, errors, the router's own
//! 404 and 405, rate-limit refusals and CORS preflights. Over TLS the
//! answer also carries HSTS. Responses are `no-store` unless a handler
//! chose otherwise: almost every answer is authenticated tenant data, and
//! a shared cache must never keep it.
//!
//! CORS is off unless origins are configured: without the layer a browser
//! on another origin cannot read any answer. With origins, only those
//! exact origins get `Access-Control-Allow-Origin`, and only the headers
//! the API uses are allowed; credentials (cookies) are never involved, the
//! key travels in `X-API-Key`.

use axum::extract::Request;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use sluice_config::ServerConfig;
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

const CSP: &str = "default-src 'none'; frame-ancestors 'none'";
const PERMISSIONS_POLICY: &str = "accelerometer=(), ambient-light-sensor=(), autoplay=(), battery=(), camera=(), display-capture=(), document-domain=(), encrypted-media=(), fullscreen=(), geolocation=(), gyroscope=(), hid=(), idle-detection=(), magnetometer=(), microphone=(), midi=(), payment=(), picture-in-picture=(), publickey-credentials-get=(), screen-wake-lock=(), serial=(), usb=(), web-share=(), xr-spatial-tracking=()";

/// The headers every response carries, computed once from the config.
#[derive(Clone, Debug)]
pub struct SecurityHeaders {
    fixed: Vec<(HeaderName, HeaderValue)>,
}

impl SecurityHeaders {
    pub fn new(config: &ServerConfig) -> Self {
        let mut fixed = vec![
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (
                HeaderName::from_static("permissions-policy"),
                HeaderValue::from_static(PERMISSIONS_POLICY),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                HeaderName::from_static("cross-origin-resource-policy"),
                HeaderValue::from_static("same-origin"),
            ),
        ];
        if config.tls.enabled() {
            let hsts = format!(
                "max-age={}; includeSubDomains",
                config.tls.hsts_max_age_secs
            );
            if let Ok(value) = HeaderValue::from_str(&hsts) {
                fixed.push((header::STRICT_TRANSPORT_SECURITY, value));
            }
        }
        Self { fixed }
    }

    /// Add the headers to `headers` (`Cache-Control` only if absent).
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.fixed {
            headers.insert(name.clone(), value.clone());
        }
        if !headers.contains_key(header::CACHE_CONTROL) {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
    }
}

/// Middleware: put the security headers on the response.
pub async fn security_headers(
    axum::extract::State(headers): axum::extract::State<SecurityHeaders>,
    req: Request,
    next: Next,
) -> Response {
    let mut response = next.run(req).await;
    headers.apply(response.headers_mut());
    response
}

/// The CORS layer for the configured origins, or `None` (no CORS at all)
/// when none are configured.
pub fn cors_layer(config: &ServerConfig) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = config
        .cors
        .allowed_origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
            .allow_headers([
                HeaderName::from_static(crate::auth::API_KEY_HEADER),
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                header::RETRY_AFTER,
                HeaderName::from_static("ratelimit-limit"),
                HeaderName::from_static("ratelimit-remaining"),
                HeaderName::from_static("ratelimit-reset"),
            ])
            .max_age(Duration::from_secs(config.cors.max_age_secs)),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hsts_only_over_tls_and_cache_control_kept() {
        let mut config = ServerConfig::default();
        let mut h = HeaderMap::new();
        SecurityHeaders::new(&config).apply(&mut h);
        assert!(!h.contains_key(header::STRICT_TRANSPORT_SECURITY));
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP);
        config.tls.cert_path = Some("c".into());
        config.tls.key_path = Some("k".into());
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        );
        SecurityHeaders::new(&config).apply(&mut h);
        assert_eq!(
            h[header::STRICT_TRANSPORT_SECURITY],
            "max-age=31536000; includeSubDomains"
        );
        assert_eq!(h[header::CACHE_CONTROL], "max-age=60");
    }

    #[test]
    fn no_cors_without_origins() {
        assert!(cors_layer(&ServerConfig::default()).is_none());
    }
}
