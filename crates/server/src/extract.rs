//! Extractors whose rejections are [`ApiError`]s, so malformed JSON, a
//! wrong content type, a bad UUID in a path or a bad query string are
//! answered in the envelope with a specific code, never with the
//! framework's plain-text body.

use crate::error::ApiError;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use sluice_core::{ErrorCode, Problem};

/// A JSON body decoded into `T`; problems come back as 400s listing the
/// JSON pointer of each.
pub struct AppJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let value = json_value(req, state).await?;
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Ok(AppJson(v)),
            Err(e) => {
                let path = e
                    .path()
                    .iter()
                    .filter_map(|seg| match seg {
                        serde_path_to_error::Segment::Seq { index } => Some(format!("/{index}")),
                        serde_path_to_error::Segment::Map { key } => {
                            Some(format!("/{}", sluice_core::pointer_token(key)))
                        }
                        _ => None,
                    })
                    .collect::<String>();
                Err(ApiError::validation(vec![Problem::new(
                    path,
                    e.inner().to_string(),
                )]))
            }
        }
    }
}

/// Any JSON body, checked only for content type, size and syntax.
pub struct JsonValue(pub serde_json::Value);

impl<S: Send + Sync> FromRequest<S> for JsonValue {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(JsonValue(json_value(req, state).await?))
    }
}

async fn json_value<S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<serde_json::Value, ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let mime = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false);
    if !is_json {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "expected Content-Type: application/json",
        ));
    }
    let bytes = Bytes::from_request(req, state)
        .await
        .map_err(bytes_rejection)?;
    if bytes.is_empty() {
        return Err(ApiError::new(
            ErrorCode::MalformedBody,
            "the request body is empty",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedBody,
            format!(
                "malformed JSON at line {} column {}: {}",
                e.line(),
                e.column(),
                syntax_kind(&e)
            ),
        )
    })
}

fn syntax_kind(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Eof => "unexpected end of input",
        Category::Syntax => "syntax error",
        Category::Data => "invalid data",
        Category::Io => "read error",
    }
}

pub fn bytes_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            "the request body is larger than the limit (max_config_bytes)",
        )
    } else {
        ApiError::new(ErrorCode::BadRequest, "could not read the request body")
    }
}

/// Path parameters; a malformed one (not a UUID) is 400 `INVALID_ID`.
pub struct AppPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for AppPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(AppPath(v)),
            Err(_) => Err(ApiError::new(
                ErrorCode::InvalidId,
                "a path parameter is not a valid UUID",
            )),
        }
    }
}

/// Query parameters; problems are 400 `INVALID_QUERY`.
pub struct AppQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for AppQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(AppQuery(v)),
            Err(e) => Err(ApiError::new(
                ErrorCode::InvalidQuery,
                format!("invalid query string: {}", e.body_text()),
            )),
        }
    }
}

/// Opaque pagination cursors: a kind tag and a value, base64url-encoded,
/// so a cursor from one listing is refused by another.
pub fn encode_cursor(kind: &str, value: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{kind}:{value}"))
}

pub fn decode_cursor(kind: &str, cursor: &str) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::new(
            ErrorCode::InvalidCursor,
            "the cursor is not valid for this listing",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    match text.split_once(':') {
        Some((k, v)) if k == kind => Ok(v.to_owned()),
        _ => Err(invalid()),
    }
}

/// A cursor holding a value of type `T` (a UUID or a number).
fn decode_parsed_cursor<T: std::str::FromStr>(
    kind: &str,
    cursor: Option<&str>,
) -> Result<Option<T>, ApiError> {
    match cursor {
        None => Ok(None),
        Some(c) => decode_cursor(kind, c)?.parse().map(Some).map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidCursor,
                "the cursor is not valid for this listing",
            )
        }),
    }
}

pub fn decode_uuid_cursor(
    kind: &str,
    cursor: Option<&str>,
) -> Result<Option<uuid::Uuid>, ApiError> {
    decode_parsed_cursor(kind, cursor)
}

pub fn decode_int_cursor(kind: &str, cursor: Option<&str>) -> Result<Option<i64>, ApiError> {
    decode_parsed_cursor(kind, cursor)
}

/// Page size from `?limit=`, 1..=200, default 50.
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(50),
        Some(n) if (1..=200).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::new(
            ErrorCode::InvalidQuery,
            "limit must be between 1 and 200",
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_other_kinds() {
        let c = encode_cursor("p", "abc");
        assert_eq!(decode_cursor("p", &c).unwrap(), "abc");
        assert!(decode_cursor("b", &c).is_err());
        assert!(decode_cursor("p", "!!!").is_err());
        assert!(decode_uuid_cursor("p", Some(&c)).is_err());
    }

    #[test]
    fn limits_are_bounded() {
        assert_eq!(page_limit(None).unwrap(), 50);
        assert!(page_limit(Some(0)).is_err());
        assert!(page_limit(Some(201)).is_err());
    }
}
