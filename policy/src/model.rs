//! The pack vocabulary: legal bases, confidence tags, localisation modes, rules, obligations.

use std::fmt;

use domicile_types::{Channel, Purpose};

macro_rules! keyword_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }

            /// For diagnostics: "unknown basis; expected one of `opt_in`, ..."
            pub(crate) fn expected() -> String {
                let terms: &[&str] = &[$($text),+];
                format!("unknown {}; expected one of {}", $what,
                    terms.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>().join(", "))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_enum!(
    /// The legal basis a rule applies to a purpose × channel.
    Basis, "basis", {
        /// Allowed only with a granted, unexpired consent.
        OptIn => "opt_in",
        /// As `opt_in`, and the consent must have been confirmed by double opt-in.
        DoubleOptIn => "double_opt_in",
        /// Allowed unless the subject objected (denied or withdrew).
        OptOut => "opt_out",
        /// Decides like `opt_out` (an objection stops it) but names GDPR-style legitimate interest.
        LegitimateInterest => "legitimate_interest",
        /// Never allowed.
        Prohibited => "prohibited",
    }
);

impl Basis {
    /// Whether this basis needs a positive consent on record (as opposed to the absence of an objection).
    pub fn needs_consent(self) -> bool {
        matches!(self, Basis::OptIn | Basis::DoubleOptIn)
    }
}

keyword_enum!(
    /// How sure the pack author is of the fact behind a rule; the tags of country-rules.md.
    Confidence, "confidence", {
        /// `[P]`: seen in primary text.
        Primary => "P",
        /// `[S]`: seen only in a secondary source.
        Secondary => "S",
        /// `[K]`: stated from the named statute but not re-confirmed.
        Unconfirmed => "K",
        /// `[U]`: uncertain or contested; needs legal sign-off.
        Uncertain => "U",
    }
);

keyword_enum!(
    /// Where personal data of the pack's subjects may be stored.
    Localisation, "localisation", {
        /// No localisation rule: any of the home regions.
        NotRequired => "none",
        /// A primary copy must be kept in-country; other copies may exist elsewhere.
        PrimaryCopy => "primary_copy",
        /// Data must stay in-country.
        Strict => "strict",
    }
);

/// Something the caller must do when it acts on an allow, e.g. "include an unsubscribe link".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Obligation {
    pub id: String,
    pub text: String,
}

/// One rule of a pack: a basis for one purpose on one or more channels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Stable id, `<pack-id>.<...>`; decisions name it as their reason.
    pub id: String,
    pub purpose: Purpose,
    pub channels: Vec<Channel>,
    pub basis: Basis,
    /// Statute, article or decision the rule rests on.
    pub cite: String,
    /// Where the author found it (research notes, memo).
    pub source: Option<String>,
    pub confidence: Confidence,
    /// Ids of the pack's obligations attached to allow decisions.
    pub obligations: Vec<String>,
    pub note: Option<String>,
    /// Line of the rule in its pack file, for tools that point authors at it.
    pub line: usize,
}
