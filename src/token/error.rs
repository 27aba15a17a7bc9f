//! The stable rejection codes of token verification.
//!
//! Scripts, audit records and `_PERMISSIONS.md` key on these strings, so they never change;
//! the message next to a code says what exactly was wrong and, where there is one, the fix.

use std::fmt;

/// Why a token was refused. [`TokenErrorCode::as_str`] gives the stable string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenErrorCode {
    /// Malformed, badly signed, wrongly typed or otherwise unusable.
    InvalidToken,
    /// The header's `kid` names no key in the configured JWKS.
    UnknownKey,
    /// `exp` has passed (beyond the leeway).
    TokenExpired,
    /// `nbf` (or `iat`) is in the future (beyond the leeway).
    TokenNotYetValid,
    /// `aud` does not contain `relayfile`.
    WrongAudience,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `wks` / `workspace_id` is not the mount's workspace.
    WrongWorkspace,
    /// `org` is not the mount's org.
    WrongOrg,
    /// `token_type` is not `access` (a refresh token, for instance).
    WrongTokenType,
}

impl TokenErrorCode {
    /// Every code, in a stable order.
    pub const ALL: [TokenErrorCode; 9] = [
        TokenErrorCode::InvalidToken,
        TokenErrorCode::UnknownKey,
        TokenErrorCode::TokenExpired,
        TokenErrorCode::TokenNotYetValid,
        TokenErrorCode::WrongAudience,
        TokenErrorCode::WrongIssuer,
        TokenErrorCode::WrongWorkspace,
        TokenErrorCode::WrongOrg,
        TokenErrorCode::WrongTokenType,
    ];

    /// The stable string: `invalid_token`, `unknown_key`, `token_expired`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            TokenErrorCode::InvalidToken => "invalid_token",
            TokenErrorCode::UnknownKey => "unknown_key",
            TokenErrorCode::TokenExpired => "token_expired",
            TokenErrorCode::TokenNotYetValid => "token_not_yet_valid",
            TokenErrorCode::WrongAudience => "wrong_audience",
            TokenErrorCode::WrongIssuer => "wrong_issuer",
            TokenErrorCode::WrongWorkspace => "wrong_workspace",
            TokenErrorCode::WrongOrg => "wrong_org",
            TokenErrorCode::WrongTokenType => "wrong_token_type",
        }
    }
}

impl fmt::Display for TokenErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused token: the stable code and a sentence saying what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenError {
    pub code: TokenErrorCode,
    pub message: String,
}

impl TokenError {
    pub fn new(code: TokenErrorCode, message: impl Into<String>) -> TokenError {
        TokenError {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> TokenError {
        TokenError::new(TokenErrorCode::InvalidToken, message)
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for TokenError {}
