//! Every call Sluice makes to another service goes through this crate:
//! webhook deliveries, HTTP destinations, enrichment providers.
//!
//! Three concerns are solved once here instead of in each component:
//!
//! - **Where a call may go** ([`guard`]). Pipeline configs come from
//!   tenants, so a URL in one must not be a way into the internal network
//!   (SSRF). The [`Outbound`] handle builds reqwest clients whose DNS
//!   resolver drops non-public addresses *after* resolution (DNS rebinding
//!   cannot sneak `127.0.0.1` in), whose redirect policy checks every hop,
//!   and which never use an environment proxy. Operators open private
//!   networks with `outbound.allow_private` or `outbound.allow_cidrs`.
//! - **How long and how often** ([`retry`]). A call has a timeout; a
//!   transient failure is retried with exponential backoff and jitter
//!   (`backon`), honouring `Retry-After` up to the configured cap; a
//!   permanent failure is never retried.
//! - **When to stop calling** ([`breaker`]). A circuit breaker per target
//!   fails calls fast while the target is down and probes it after a
//!   cooldown.
//!
//! [`ResilientDestination`] applies retries and the breaker to any
//! [`sluice_core::Destination`]; the components registry wraps every
//! destination with it, so destinations only classify their errors.
//! [`block_on`] lets synchronous processors (which run on blocking
//! threads) make async calls on a small runtime owned by this crate.

pub mod breaker;
pub mod guard;
pub mod retry;

use guard::{AddressPolicy, Denied, GuardedResolver};
use sluice_core::destination::{CallFuture, Calls};
use sluice_core::{DeliveryError, Destination, FailureKind, OutputPart};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use breaker::{BreakerOpen, BreakerSnapshot, BreakerState, breaker, snapshots};
pub use retry::{CallError, Resilience};

/// Redirect hops followed by clients that follow redirects.
const MAX_REDIRECTS: usize = 5;

/// The outbound settings of a server (or of `sluice run`): which
/// addresses may be reached and which CAs are trusted. Cheap to clone.
#[derive(Clone)]
pub struct Outbound {
    policy: Arc<AddressPolicy>,
    extra_roots: Arc<Vec<reqwest::Certificate>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("allow_private", &self.policy.allow_private)
            .field("allow_cidrs", &self.policy.allow_cidrs)
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

impl Default for Outbound {
    /// Public addresses only, built-in roots only.
    fn default() -> Self {
        Self {
            policy: Arc::new(AddressPolicy::default()),
            extra_roots: Arc::new(Vec::new()),
        }
    }
}

/// The outbound config could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("reading the extra CA file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the extra CA file {path} holds no usable PEM certificate: {message}")]
    CaPem { path: String, message: String },
    #[error("outbound.allow_cidrs: {0} is not an IP network")]
    Cidr(String),
    #[error("building an HTTP client: {0}")]
    Client(String),
}

/// Options of one client.
#[derive(Debug, Clone, Copy)]
pub struct ClientOptions {
    /// Whole-request timeout (connect, send, receive the body).
    pub timeout: Duration,
    /// Follow up to 5 redirects (each hop checked); off for webhooks,
    /// where a redirect of a POST is a configuration mistake.
    pub follow_redirects: bool,
}

impl Outbound {
    /// Settings from the server config's `[outbound]` section.
    pub fn from_config(config: &sluice_config::server::OutboundConfig) -> Result<Self, SetupError> {
        let mut cidrs = Vec::with_capacity(config.allow_cidrs.len());
        for c in &config.allow_cidrs {
            cidrs.push(
                c.parse::<ipnet::IpNet>()
                    .map_err(|_| SetupError::Cidr(c.clone()))?,
            );
        }
        let mut roots = Vec::new();
        if let Some(path) = &config.extra_ca_file {
            roots = load_roots(path)?;
        }
        Ok(Self {
            policy: Arc::new(AddressPolicy {
                allow_private: config.allow_private,
                allow_cidrs: cidrs,
            }),
            extra_roots: Arc::new(roots),
        })
    }

    /// Every address allowed (tests, `sluice run` with the variable set).
    pub fn allowing_private() -> Self {
        Self {
            policy: Arc::new(AddressPolicy {
                allow_private: true,
                allow_cidrs: Vec::new(),
            }),
            extra_roots: Arc::new(Vec::new()),
        }
    }

    pub fn allows_private(&self) -> bool {
        self.policy.allow_private
    }

    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// A client that can only reach allowed addresses, over rustls with
    /// the web PKI roots plus the configured extra CAs, ignoring proxy
    /// variables. Build one per component and reuse it (it pools
    /// connections).
    pub fn client(&self, options: ClientOptions) -> Result<HttpClient, SetupError> {
        let policy = self.policy.clone();
        let redirect = if options.follow_redirects {
            reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error(Denied::TooManyRedirects);
                }
                match guard::check_url(attempt.url(), &policy) {
                    Ok(()) => attempt.follow(),
                    Err(denied) => attempt.error(denied),
                }
            })
        } else {
            reqwest::redirect::Policy::none()
        };
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                policy: self.policy.clone(),
            }))
            .redirect(redirect)
            .timeout(options.timeout)
            .connect_timeout(options.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")));
        for root in self.extra_roots.iter() {
            builder = builder.add_root_certificate(root.clone());
        }
        let inner = builder
            .build()
            .map_err(|e| SetupError::Client(e.to_string()))?;
        Ok(HttpClient {
            inner,
            policy: self.policy.clone(),
        })
    }

    /// Check a URL before requesting it (scheme, credentials, IP-literal
    /// host); names are checked when they are resolved.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Denied> {
        guard::check_url(url, &self.policy)
    }

    /// Resolve the URL's host to allowed addresses and open (then close) a
    /// TCP connection to one: a cheap health check that sends nothing.
    pub async fn probe_tcp(&self, url: &reqwest::Url, timeout: Duration) -> Result<(), CallError> {
        self.check_url(url)
            .map_err(|d| CallError::permanent(d.to_string()))?;
        let host = url
            .host_str()
            .ok_or_else(|| CallError::permanent("the URL has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let connect = async {
            let addrs = guard::resolve_allowed(&host, port, &self.policy)
                .await
                .map_err(|e| match e.downcast_ref::<Denied>() {
                    Some(d) => CallError::permanent(d.to_string()),
                    None => CallError::transient(format!("resolving the host failed: {e}")),
                })?;
            let mut last = CallError::transient("the host has no address");
            for addr in addrs {
                match tokio::net::TcpStream::connect(addr).await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = CallError::transient(format!("connection failed: {e}")),
                }
            }
            Err(last)
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(r) => r,
            Err(_) => Err(CallError::transient("connection timed out")),
        }
    }
}

/// An HTTP client bound to an address policy. Requests can only be made
/// through [`HttpClient::request`], which checks the URL first (an
/// IP-literal host is not resolved, so the resolver alone would not see
/// it); names are checked by the resolver, redirect hops by the redirect
/// policy.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

impl HttpClient {
    /// Start a request to `url`, or refuse it.
    pub fn request(
        &self,
        method: reqwest::Method,
        url: reqwest::Url,
    ) -> Result<reqwest::RequestBuilder, Denied> {
        guard::check_url(&url, &self.policy)?;
        Ok(self.inner.request(method, url))
    }

    pub fn get(&self, url: reqwest::Url) -> Result<reqwest::RequestBuilder, Denied> {
        self.request(reqwest::Method::GET, url)
    }

    pub fn post(&self, url: reqwest::Url) -> Result<reqwest::RequestBuilder, Denied> {
        self.request(reqwest::Method::POST, url)
    }
}

fn load_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, SetupError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| SetupError::CaFile {
        path: shown.clone(),
        source,
    })?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| SetupError::CaPem {
        path: shown.clone(),
        message: e.to_string(),
    })?;
    if roots.is_empty() {
        return Err(SetupError::CaPem {
            path: shown,
            message: "no certificate found".into(),
        });
    }
    Ok(roots)
}

/// Classify a reqwest error: a refused address is permanent (with the
/// "destination address is private" message), timeouts and connection
/// problems are transient. Never includes the URL (it may carry a token
/// in its query).
pub fn classify(error: &reqwest::Error) -> CallError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(denied) = e.downcast_ref::<Denied>() {
            return CallError::permanent(denied.to_string());
        }
        source = e.source();
    }
    if error.is_builder() {
        return CallError::permanent(format!("invalid request: {}", chain(error)));
    }
    if error.is_timeout() {
        return CallError::transient("the request timed out");
    }
    if error.is_connect() {
        return CallError::transient(format!("connection failed: {}", chain(error)));
    }
    CallError::transient(format!("request failed: {}", chain(error)))
}

/// The error and its sources, joined, without the URL reqwest puts in
/// its own message.
fn chain(error: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut source = error.source();
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    if parts.is_empty() {
        "unknown error".to_owned()
    } else {
        parts.join(": ")
    }
}

/// A destination with retries and a circuit breaker around each of its
/// requests (R-DEL-2). The inner destination classifies its errors and
/// applies its own timeouts; this wrapper decides whether and when to try
/// again. A destination that sends a part as several requests has each
/// one retried and counted on its own (see [`Destination::write_through`]).
pub struct ResilientDestination {
    inner: Arc<dyn Destination>,
    resilience: Resilience,
}

impl ResilientDestination {
    pub fn new(inner: Arc<dyn Destination>, resilience: Resilience) -> Self {
        Self { inner, resilience }
    }

    pub fn resilience(&self) -> &Resilience {
        &self.resilience
    }
}

#[async_trait::async_trait]
impl Destination for ResilientDestination {
    fn type_name(&self) -> &'static str {
        self.inner.type_name()
    }

    /// Every request the destination makes for the part goes through the
    /// retries and the breaker on its own ([`Destination::write_through`]).
    async fn write(&self, part: &OutputPart) -> Result<(), DeliveryError> {
        self.inner.write_through(part, &self.resilience).await
    }

    /// Health checks bypass the breaker and are not retried: they report
    /// the target's state as it is now.
    async fn healthcheck(&self) -> Result<(), DeliveryError> {
        self.inner.healthcheck().await
    }
}

/// A destination's requests, each retried and guarded by the breaker.
#[async_trait::async_trait]
impl Calls for Resilience {
    async fn call<'r>(
        &self,
        request: &'r (dyn Fn() -> CallFuture<'r> + Send + Sync + 'r),
    ) -> Result<(), DeliveryError> {
        self.run(|| async { request().await.map_err(CallError::from_delivery) })
            .await
            .map_err(CallError::into_delivery)
    }
}

/// Run `future` to completion from synchronous code (a processor on a
/// blocking thread, or any plain thread) on a small runtime owned by this
/// crate. Never call it from an async task: it blocks the thread.
pub fn block_on<F>(future: F) -> Result<F::Output, CallError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    static RUNTIME: OnceLock<Option<tokio::runtime::Runtime>> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sluice-outbound")
            .enable_all()
            .build()
            .map_err(|error| tracing::error!(%error, "starting the outbound runtime failed"))
            .ok()
    });
    let Some(runtime) = runtime else {
        return Err(CallError::transient(
            "the outbound runtime is not available",
        ));
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(future.await);
    });
    rx.recv()
        .map_err(|_| CallError::transient("the outbound call was cancelled"))
}

impl CallError {
    fn from_delivery(e: DeliveryError) -> Self {
        CallError {
            kind: e.kind,
            message: e.message,
            retry_after: e.retry_after,
        }
    }

    /// As a delivery error (the kind, message and retry hint carry over).
    pub fn into_delivery(self) -> DeliveryError {
        let mut e = match self.kind {
            FailureKind::Transient => DeliveryError::transient(self.message),
            FailureKind::Permanent => DeliveryError::permanent(self.message),
        };
        e.retry_after = self.retry_after;
        e
    }
}
