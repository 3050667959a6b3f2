//! The words packs are written in: legal bases, consent kinds, soft opt-in conditions, confidence
//! tags, localisation modes, pack kinds, calendar periods, and the `id@version` a decision names.
//! Keywords parse from and print as the exact text of the pack format.

use std::fmt;

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
        /// Allowed with a granted consent, or without one when the soft opt-in conditions hold
        /// (an existing customer, details obtained in a sale, similar products, opt-out offered)
        /// and the subject has not objected.
        SoftOptIn => "soft_opt_in",
        /// Never allowed.
        Prohibited => "prohibited",
        /// Deliberately denied: no lawful basis is modelled for this cell. Declaring a gap makes
        /// a default deny explicit and reviewable, with a citation for why.
        Gap => "gap",
    }
);

impl Basis {
    /// Whether this basis needs a positive consent on record (as opposed to the absence of an objection).
    pub fn needs_consent(self) -> bool {
        matches!(self, Basis::OptIn | Basis::DoubleOptIn)
    }

    /// Whether the basis can ever allow; rules that cannot are never the reason for an allow.
    pub fn can_allow(self) -> bool {
        !matches!(self, Basis::Prohibited | Basis::Gap)
    }
}

keyword_enum!(
    /// What a consent on record rests on. Lifetimes differ per kind (e.g. CASL implied consent
    /// lasts 2 years after a purchase, 6 months after an inquiry).
    ConsentKind, "consent kind", {
        /// The subject said yes (a positive act); the default when the caller does not say.
        Express => "express",
        /// Implied by an existing business relationship: a purchase, lease or contract; the
        /// consent's capture time is the date of that transaction.
        ImpliedPurchase => "implied_purchase",
        /// Implied by an inquiry or application; the capture time is the date of the inquiry.
        ImpliedInquiry => "implied_inquiry",
        /// Given for a minor by the holder of parental responsibility (a parent or guardian); only
        /// rules whose lifetime or minors band names it accept it.
        Guardian => "guardian",
    }
);

impl ConsentKind {
    pub(crate) fn index(self) -> usize {
        match self {
            ConsentKind::Express => 0,
            ConsentKind::ImpliedPurchase => 1,
            ConsentKind::ImpliedInquiry => 2,
            ConsentKind::Guardian => 3,
        }
    }
}

keyword_enum!(
    /// Who a contact goes to, where a country's rules differ (e.g. business e-mail prospecting in
    /// France, corporate subscribers under PECR). A rule naming none applies to both.
    Recipient, "recipient", {
        /// A consumer: a natural person acting outside their trade or profession.
        Consumer => "consumer",
        /// A business recipient: a professional address or a corporate subscriber, contacted in
        /// their professional capacity.
        Business => "business",
    }
);

impl Recipient {
    /// Bit of this recipient type in a rule's recipient mask.
    pub(crate) fn bit(self) -> u8 {
        match self {
            Recipient::Consumer => 1,
            Recipient::Business => 2,
        }
    }
}

/// Every recipient type: a rule that names none.
pub(crate) const ALL_RECIPIENTS: u8 = 3;

keyword_enum!(
    /// A consent to a transfer of the subject's data out of its home regions, recorded in the
    /// ledger for a purpose without channels. A `[[residency.transfer]]` naming kinds permits only
    /// on a granted consent of one of them, in force at the request.
    TransferConsent, "transfer consent kind", {
        /// Explicit consent to the transfer after being told of its risks (GDPR art. 49(1)(a)).
        Explicit => "explicit_transfer",
        /// A consent to the overseas transfer given separately from any other (PIPA art. 28-8(1)(1),
        /// PIPL art. 39).
        Separate => "separate_transfer",
    }
);

keyword_enum!(
    /// How a rule with minors bands treats a subject whose age the caller does not know. Stated
    /// by the pack (no default): laws with an actual-knowledge standard apply the adult rule,
    /// others require treating the unknown as a minor.
    UnknownAge, "unknown-age treatment", {
        /// The adult rule applies until the caller knows the subject is a minor.
        Adult => "adult",
        /// The youngest band applies until the caller knows the subject's age.
        Minor => "minor",
    }
);

keyword_enum!(
    /// A fact the caller asserts for a soft opt-in; a rule lists the ones it requires.
    SoftCondition, "soft opt-in condition", {
        /// The contact details were obtained from the subject in the context of a sale.
        ContactFromSale => "contact_from_sale",
        /// The message promotes the sender's own similar products or services.
        SimilarProducts => "similar_products",
        /// A clear, free opt-out was offered at collection and is offered in every message.
        OptOutOffered => "opt_out_offered",
    }
);

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

/// What a pack is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PackKind {
    /// Answers for its jurisdiction (a country, or a subdivision overlay extending its country).
    Jurisdiction,
    /// Shared rules (e.g. EU/EEA) that jurisdiction packs extend; never answers by itself.
    Baseline,
}

/// Names the exact pack text a decision came from: `id@version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PackRef {
    pub id: String,
    pub version: String,
}

impl fmt::Display for PackRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.version)
    }
}

/// A calendar period: lifetimes, rights deadlines. Months and years are calendar months (a
/// consent captured on 31 January with a one-month lifetime lapses on 28/29 February).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    Days(u32),
    Months(u32),
}

impl Period {
    /// `"30 days"`, `"6 months"`, `"2 years"` (singular forms too).
    pub fn parse(text: &str) -> Option<Period> {
        let mut parts = text.split_whitespace();
        let n: u32 = parts.next()?.parse().ok()?;
        let unit = parts.next()?;
        if parts.next().is_some() || n == 0 || n > 1200 {
            return None;
        }
        match unit {
            "day" | "days" => Some(Period::Days(n)),
            "month" | "months" => Some(Period::Months(n)),
            "year" | "years" => Some(Period::Months(n.checked_mul(12)?)),
            _ => None,
        }
    }

    /// The instant `self` after `unix`, in UTC calendar terms.
    pub fn after(self, unix: i64) -> i64 {
        match self {
            Period::Days(d) => unix.saturating_add(i64::from(d) * 86_400),
            Period::Months(m) => crate::time::add_months(unix, m),
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Period::Days(1) => f.write_str("1 day"),
            Period::Days(d) => write!(f, "{d} days"),
            Period::Months(m) if m % 12 == 0 && *m == 12 => f.write_str("1 year"),
            Period::Months(m) if m % 12 == 0 => write!(f, "{} years", m / 12),
            Period::Months(1) => f.write_str("1 month"),
            Period::Months(m) => write!(f, "{m} months"),
        }
    }
}
