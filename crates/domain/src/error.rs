use std::borrow::Cow;

/// What kind of refusal an [`Error`] is; the HTTP layer maps each kind to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is malformed or out of range.
    Invalid,
    /// The named resource does not exist.
    NotFound,
    /// The resource is in a state that does not allow the request (a lifecycle move, a duplicate).
    Conflict,
    /// A compliance rule refuses the movement; the code says which one.
    Refused,
    /// The caller's version of the resource is stale.
    Stale,
    /// The caller may not do this to this resource (an agent restricted on a token).
    Forbidden,
}

/// A refusal with a stable machine code, a sentence for humans and, where one is at fault, the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub kind: ErrorKind,
    pub code: &'static str,
    pub field: Option<Cow<'static, str>>,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            field: None,
            message: message.into(),
        }
    }

    /// An invalid value of `field`.
    pub fn invalid(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, "invalid_field", message).at(field)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, message)
    }

    pub fn refused(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Refused, code, message)
    }

    /// Names the field at fault.
    pub fn at(mut self, field: impl Into<Cow<'static, str>>) -> Self {
        self.field = Some(field.into());
        self
    }
}
