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

/// Where a rights request stands: received → verifying → verified → in_progress → completed, or
/// refused (with a reason) from any open status; a second request of the same kind for the same
/// subject while one is open is `linked` to it. Stored as text: variants are only ever added, so
/// records written before the lifecycle (`received`, `extended`, `completed`) still read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RightsStatus {
    Received,
    /// The deadline was extended as the pack allows (records before the tracked lifecycle; a
    /// tracked request keeps its status and records the extension beside it).
    Extended,
    Completed,
    Refused,
    /// A one-time challenge was sent through an identifier the subject holds; not yet answered.
    Verifying,
    /// The requester answered the challenge: the request may be carried out.
    Verified,
    /// Being carried out.
    InProgress,
    /// A duplicate of an open request of the same kind for the same subject, which answers it.
    Linked,
}

impl RightsStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RightsStatus::Received => "received",
            RightsStatus::Extended => "extended",
            RightsStatus::Completed => "completed",
            RightsStatus::Refused => "refused",
            RightsStatus::Verifying => "verifying",
            RightsStatus::Verified => "verified",
            RightsStatus::InProgress => "in_progress",
            RightsStatus::Linked => "linked",
        }
    }

    pub const ALL: [RightsStatus; 8] = [
        RightsStatus::Received,
        RightsStatus::Extended,
        RightsStatus::Completed,
        RightsStatus::Refused,
        RightsStatus::Verifying,
        RightsStatus::Verified,
        RightsStatus::InProgress,
        RightsStatus::Linked,
    ];

    /// Whether a request in this status is still open (neither answered nor refused; a linked
    /// request is answered by the one it is linked to).
    pub fn is_open(self) -> bool {
        matches!(self, Self::Received | Self::Extended | Self::Verifying | Self::Verified | Self::InProgress)
    }

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
