//! The API's errors as the API server sends them: a `Status` object with the HTTP
//! code, a reason kubectl and client-go switch on, the message, and for an invalid
//! object its field errors as `details.causes` (kubectl prints `The Service "web"
//! is invalid: spec.ports[0].port: Required value` from them).

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::resource::Resource;
use crate::{
    model::{FieldError, FieldErrorKind, Invalid, ManifestError, SHOWN_VALUE, shown},
    store::{ApplyError, StoreError},
};

/// A refusal, as a `Status` object.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn not_found(resource: &Resource, name: &str) -> Self {
        ApiError {
            details: Some(json!({"name": name, "kind": resource.name})),
            ..ApiError::new(
                404,
                "NotFound",
                format!(
                    "{} \"{}\" not found",
                    resource.qualified(),
                    shown(name, SHOWN_VALUE)
                ),
            )
        }
    }

    /// A path or resource this server does not serve.
    pub fn no_route() -> Self {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn already_exists(resource: &Resource, name: &str) -> Self {
        ApiError {
            details: Some(json!({"name": name, "kind": resource.name})),
            ..ApiError::new(
                409,
                "AlreadyExists",
                format!(
                    "{} \"{}\" already exists",
                    resource.qualified(),
                    shown(name, SHOWN_VALUE)
                ),
            )
        }
    }

    /// An update from a resourceVersion that is no longer the object's.
    pub fn conflict(resource: &Resource, name: &str) -> Self {
        ApiError {
            details: Some(json!({"name": name, "kind": resource.name})),
            ..ApiError::new(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                    resource.qualified(),
                    shown(name, SHOWN_VALUE)
                ),
            )
        }
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    pub fn unauthorized() -> Self {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// A watch or a list continued from a revision the store no longer keeps.
    pub fn gone(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        )
    }

    /// An object the store's validation refused (422, with one cause per field).
    pub fn invalid(resource: &Resource, invalid: &Invalid) -> Self {
        ApiError::invalid_fields(resource, &invalid.name, &invalid.errors)
    }

    /// The object `name` of `resource` refused for `errors` (422).
    pub fn invalid_fields(resource: &Resource, name: &str, errors: &[FieldError]) -> Self {
        let causes: Vec<Value> = errors.iter().map(cause).collect();
        ApiError {
            details: Some(json!({
                "name": name,
                "kind": resource.qualified_kind(),
                "causes": causes,
            })),
            ..ApiError::new(
                422,
                "Invalid",
                format!(
                    "{} \"{}\" is invalid: {}",
                    resource.qualified_kind(),
                    shown(name, SHOWN_VALUE),
                    crate::model::join(errors)
                ),
            )
        }
    }

    /// What the store's refusal of a write is in the API's words.
    pub fn of_store(resource: &Resource, e: StoreError) -> Self {
        match e {
            StoreError::Apply(ApplyError::Invalid(invalid)) => {
                ApiError::invalid(resource, &invalid)
            }
            StoreError::Apply(ApplyError::NotFound { name, .. }) => {
                ApiError::not_found(resource, &name)
            }
            StoreError::Apply(ApplyError::AlreadyExists { name, .. }) => {
                ApiError::already_exists(resource, &name)
            }
            e => ApiError::internal(e),
        }
    }

    /// A body that is not an object of the resource (syntax, unknown fields under
    /// strict validation, a field of the wrong type) or that validation refused.
    pub fn of_manifest(resource: &Resource, e: ManifestError) -> Self {
        match e {
            ManifestError::Invalid(invalid) => ApiError::invalid(resource, &invalid),
            ManifestError::Document { error, .. } => ApiError::bad_request(error),
            ManifestError::Syntax { error, .. } => ApiError::bad_request(error),
            ManifestError::Read { error, .. } => ApiError::bad_request(error.to_string()),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            status["details"] = d.clone();
        }
        status
    }
}

/// A field error as one of `details.causes`: the reason the API server gives its
/// kind, the field, and the message without the field.
fn cause(e: &FieldError) -> Value {
    let reason = match e.kind {
        FieldErrorKind::Required => "FieldValueRequired",
        FieldErrorKind::Invalid { .. } => "FieldValueInvalid",
        FieldErrorKind::NotSupported { .. } => "FieldValueNotSupported",
        FieldErrorKind::Duplicate { .. } => "FieldValueDuplicate",
        FieldErrorKind::Forbidden { .. } => "FieldValueForbidden",
        FieldErrorKind::TooLong { .. } => "FieldValueTooLong",
        FieldErrorKind::TooMany { .. } => "FieldValueTooMany",
    };
    let text = e.to_string();
    let field = shown(&e.field, SHOWN_VALUE);
    let message = text
        .strip_prefix(&format!("{field}: "))
        .unwrap_or(&text)
        .to_string();
    json!({"reason": reason, "message": message, "field": e.field})
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (code, self.to_json().to_string()).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}
