//! `ApiError`: every refusal the account and operator APIs send, with its status and wire code.
//!
//! Messages are fixed sentences or name a field; none ever echoes a value the caller sent, so a
//! key pasted into the wrong place can never come back in an error body or a log line.

use http::StatusCode;
use tollgate_core::DenyReason;
use tollgate_store::StoreError;

/// One error of the control-plane APIs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The same refusals as the data plane (key missing, unknown, disabled, store unavailable...).
    #[error("{}", .0.message())]
    Deny(DenyReason),
    /// No key in any configured source (`key_missing`); the message names the sources in force.
    #[error("{0}")]
    KeyMissing(std::sync::Arc<str>),
    /// The request is malformed; the message says which part and why.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("The request body is larger than 64 KiB.")]
    PayloadTooLarge,
    #[error("No such endpoint.")]
    NotFound,
    /// `allow` lists the methods the path does support.
    #[error("This endpoint does not support this method; the allow header lists those it does.")]
    MethodNotAllowed { allow: String },
    #[error("Teams are not enabled for this account; ask the operator to switch them on.")]
    TeamNotEnabled,
    #[error("This email belongs to an account already.")]
    EmailTaken,
    /// Whatever the id names (another tenant's account, a parent, nothing at all), the answer is
    /// the same, so no tenant can learn whether another's account exists.
    #[error("No member of your team has this id.")]
    MemberNotFound,
    #[error("The invitation is unknown, used or expired.")]
    InvitationUnknown,
    #[error("No account has this id.")]
    AccountNotFound,
    #[error("A valid operator token is required: Authorization: Bearer <token>.")]
    Unauthorized,
    /// The operation does not apply to the account in its current state.
    #[error("{0}")]
    Conflict(String),
    /// Details go to the log, never to the caller.
    #[error("Internal error; the details are in the server log.")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Deny(reason) => deny_status(*reason),
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound
            | ApiError::MemberNotFound
            | ApiError::InvitationUnknown
            | ApiError::AccountNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TeamNotEnabled => StatusCode::FORBIDDEN,
            ApiError::EmailTaken | ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized | ApiError::KeyMissing(_) => StatusCode::UNAUTHORIZED,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Deny(reason) => reason.code(),
            ApiError::KeyMissing(_) => DenyReason::KeyMissing.code(),
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::TeamNotEnabled => "team_not_enabled",
            ApiError::EmailTaken => "email_taken",
            ApiError::MemberNotFound => "member_not_found",
            ApiError::InvitationUnknown => "invitation_unknown",
            ApiError::AccountNotFound => "account_not_found",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Conflict(_) => "conflict",
            ApiError::Internal => "internal_error",
        }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest(msg.into())
    }

    /// Maps a store failure; `not_found` is what a missing account means to this endpoint
    /// (`member_not_found` to a parent, `account_not_found` to the operator, ...).
    pub(crate) fn from_store(e: StoreError, not_found: ApiError) -> ApiError {
        match e {
            StoreError::EmailTaken => ApiError::EmailTaken,
            StoreError::NotFound(_) => not_found,
            StoreError::InvitationUnknown => ApiError::InvitationUnknown,
            StoreError::Conflict(msg) => ApiError::Conflict(msg),
            StoreError::Unavailable(msg) => {
                tracing::warn!(error = %msg, "store unavailable");
                ApiError::Deny(DenyReason::StoreUnavailable)
            }
            StoreError::FeedTrimmed | StoreError::Internal(_) => {
                tracing::error!(error = %e, "store error");
                ApiError::Internal
            }
        }
    }
}

/// The statuses of SPEC.md's refusal table; exhaustive so a new reason forces a decision here.
fn deny_status(reason: DenyReason) -> StatusCode {
    match reason {
        DenyReason::KeyMissing | DenyReason::KeyUnknown => StatusCode::UNAUTHORIZED,
        DenyReason::KeyDisabled
        | DenyReason::ParentDisabled
        | DenyReason::ProductNotSubscribed
        | DenyReason::PermissionDenied => StatusCode::FORBIDDEN,
        DenyReason::CreditsExhausted => StatusCode::PAYMENT_REQUIRED,
        DenyReason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        DenyReason::RouteNotFound => StatusCode::NOT_FOUND,
        DenyReason::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let cases = [
            (ApiError::Deny(DenyReason::KeyMissing), 401, "key_missing"),
            (ApiError::Deny(DenyReason::KeyDisabled), 403, "key_disabled"),
            (
                ApiError::Deny(DenyReason::StoreUnavailable),
                503,
                "store_unavailable",
            ),
            (ApiError::invalid("x"), 400, "invalid_request"),
            (ApiError::PayloadTooLarge, 413, "payload_too_large"),
            (ApiError::MemberNotFound, 404, "member_not_found"),
            (ApiError::EmailTaken, 409, "email_taken"),
            (ApiError::Unauthorized, 401, "unauthorized"),
            (ApiError::Internal, 500, "internal_error"),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.status().as_u16(), status, "{e:?}");
            assert_eq!(e.code(), code);
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(
            ApiError::from_store(StoreError::NotFound("x".into()), ApiError::MemberNotFound),
            ApiError::MemberNotFound
        );
    }
}
