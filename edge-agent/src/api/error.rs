//! Errors in OpenStack's JSON shapes: Nova's `{"itemNotFound": {"code": 404,
//! "message": ...}}` and Keystone's `{"error": {"code", "title", "message"}}`
//! (used for every 401, as keystonemiddleware does).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::store::WriteError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Answer in Keystone's shape whatever the status (identity routes).
    pub keystone: bool,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            keystone: false,
        }
    }
    /// An error with any status (Nova's 406 for a microversion).
    pub fn new_status(status: StatusCode, message: impl Into<String>) -> Self {
        Self::new(status, message)
    }
    /// The same error in Keystone's `{"error": ...}` shape.
    pub fn keystone(mut self) -> Self {
        self.keystone = true;
        self
    }
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, m)
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn unsupported_media(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, m)
    }
    /// 413, as Glance answers an upload its store has no room for.
    pub fn storage_full(m: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, m)
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Invalid(f) => Self::bad_request(f.to_string()),
            WriteError::NotFound(m) => Self::not_found(m),
            WriteError::Conflict(m) => Self::conflict(m),
            WriteError::NoValidHost(n) => Self::conflict(n.to_string()),
            WriteError::Quota(m) | WriteError::Forbidden(m) => Self::forbidden(m),
            WriteError::Store(s) => {
                tracing::error!(error = %s, "store failure answered with 500");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the site's store failed: {s}"),
                )
            }
        }
    }
}

impl From<roost_common::FieldError> for ApiError {
    fn from(e: roost_common::FieldError) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = roost_common::api::openstack_error_body(
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or("Error"),
            &self.message,
            self.keystone,
        );
        (self.status, Json(body)).into_response()
    }
}
