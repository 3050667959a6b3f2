//! Closed vocabularies: purposes, channels, consent states.
//!
//! They are closed on purpose: a pack or a request naming a purpose the engine does not know is
//! an error, never a silent default (invariant 3).

use std::fmt;

/// A term that is not part of a closed vocabulary. Carries the vocabulary name, not the term,
/// because callers may have put personal data in the wrong field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {vocabulary}: expected one of {expected}")]
pub struct UnknownTerm {
    pub vocabulary: &'static str,
    pub expected: String,
}

macro_rules! closed_vocab {
    ($(#[$meta:meta])* $name:ident, $label:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every member, in declaration order (also the index order used by compiled tables).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub const COUNT: usize = Self::ALL.len();

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Dense index, stable within one build; used by O(1) decision tables.
            pub fn index(self) -> usize {
                self as usize
            }

            pub fn parse(text: &str) -> Result<Self, UnknownTerm> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownTerm {
                        vocabulary: $label,
                        expected: Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownTerm;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

closed_vocab!(
    /// Why an organisation wants to process or contact: the axis legal rules are written on.
    Purpose, "purpose", {
        Marketing => "marketing",
        Survey => "survey",
        Research => "research",
        Service => "service",
        Analytics => "analytics",
        Profiling => "profiling",
        Recording => "recording",
    }
);

closed_vocab!(
    /// How a subject is contacted or observed.
    Channel, "channel", {
        Email => "email",
        Sms => "sms",
        Voice => "voice",
        VoiceAutomated => "voice_automated",
        Post => "post",
        Push => "push",
        Messaging => "messaging",
        Chat => "chat",
        Web => "web",
    }
);

closed_vocab!(
    /// What a consent record says at the moment it was captured.
    ConsentState, "consent state", {
        Granted => "granted",
        Denied => "denied",
        Withdrawn => "withdrawn",
    }
);

closed_vocab!(
    /// What a caller asks the ledger to record.
    ConsentAction, "consent action", {
        Grant => "grant",
        Deny => "deny",
        Withdraw => "withdraw",
    }
);

impl ConsentAction {
    /// The state a record of this action puts the subject in.
    pub fn resulting_state(self) -> ConsentState {
        match self {
            ConsentAction::Grant => ConsentState::Granted,
            ConsentAction::Deny => ConsentState::Denied,
            ConsentAction::Withdraw => ConsentState::Withdrawn,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_term() {
        for p in Purpose::ALL {
            assert_eq!(Purpose::parse(p.as_str()), Ok(*p));
        }
        for c in Channel::ALL {
            assert_eq!(Channel::parse(c.as_str()), Ok(*c));
        }
        for (i, c) in Channel::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
    }

    #[test]
    fn unknown_terms_do_not_echo_input() {
        let err = Purpose::parse("jane@example.com").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("unknown purpose"));
        assert!(!msg.contains("jane"));
        assert!(Channel::parse("Email").is_err(), "terms are case-sensitive");
    }
}
