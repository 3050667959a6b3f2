//! The vocabulary of data-subject rights requests: which right, where a request stands, and its
//! id. Shared by the node (which records requests) and the audit log (which keeps them after an
//! erasure).

use std::fmt;

/// A data subject right (GDPR art. 15-18, 20 and their equivalents).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RightsKind {
    Access,
    Rectification,
    Erasure,
    Restriction,
    Portability,
}

impl RightsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RightsKind::Access => "access",
            RightsKind::Rectification => "rectification",
            RightsKind::Erasure => "erasure",
            RightsKind::Restriction => "restriction",
            RightsKind::Portability => "portability",
        }
    }

    pub const ALL: [RightsKind; 5] = [
        RightsKind::Access,
        RightsKind::Rectification,
        RightsKind::Erasure,
        RightsKind::Restriction,
        RightsKind::Portability,
    ];

    /// The right named by [`RightsKind::as_str`]'s text, as stored with a request.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }
}

/// Where a rights request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RightsStatus {
    Received,
    /// The deadline was extended as the pack allows.
    Extended,
    Completed,
    Refused,
}

impl RightsStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RightsStatus::Received => "received",
            RightsStatus::Extended => "extended",
            RightsStatus::Completed => "completed",
            RightsStatus::Refused => "refused",
        }
    }

    pub const ALL: [RightsStatus; 4] =
        [RightsStatus::Received, RightsStatus::Extended, RightsStatus::Completed, RightsStatus::Refused];

    /// The status named by [`RightsStatus::as_str`]'s text, as stored with a request.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

pub const REQUEST_ID_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rights request id must be 32 lower-case hex digits")]
pub struct RequestIdError;

/// A rights request's random id; text form is 32 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId([u8; REQUEST_ID_LEN]);

impl RequestId {
    pub fn from_bytes(bytes: [u8; REQUEST_ID_LEN]) -> Self {
        Self(bytes)
    }

    pub fn parse(text: &str) -> Result<Self, RequestIdError> {
        if text.len() != REQUEST_ID_LEN * 2 || text.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(RequestIdError);
        }
        let mut bytes = [0u8; REQUEST_ID_LEN];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| RequestIdError)?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_parse_only_their_own_form() {
        let id = RequestId::from_bytes([0xab; 16]);
        assert_eq!(RequestId::parse(&id.to_string()), Ok(id));
        for bad in ["", "AB", &"ab".repeat(15), &"AB".repeat(16), &"zz".repeat(16)] {
            assert!(RequestId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kinds_and_statuses_read_back_as_stored_and_nothing_else() {
        for kind in RightsKind::ALL {
            assert_eq!(RightsKind::parse(kind.as_str()), Some(kind));
        }
        for status in RightsStatus::ALL {
            assert_eq!(RightsStatus::parse(status.as_str()), Some(status));
        }
        for bad in ["", "Access", "completed ", "deleted"] {
            assert_eq!(RightsKind::parse(bad), None, "{bad}");
            assert_eq!(RightsStatus::parse(bad), None, "{bad}");
        }
    }
}
