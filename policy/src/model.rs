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
    }
);

impl ConsentKind {
    pub(crate) fn index(self) -> usize {
        match self {
            ConsentKind::Express => 0,
            ConsentKind::ImpliedPurchase => 1,
            ConsentKind::ImpliedInquiry => 2,
        }
    }
}

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

impl SoftCondition {
    pub(crate) fn holds(self, facts: &crate::eval::Facts) -> bool {
        match self {
            SoftCondition::ContactFromSale => facts.contact_from_sale,
            SoftCondition::SimilarProducts => facts.similar_products,
            SoftCondition::OptOutOffered => facts.opt_out_offered,
        }
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

/// How long each kind of consent counts for a rule. A kind without an entry is not accepted
/// by rules using this lifetime; `None` inside means accepted without limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifetime {
    pub id: String,
    /// Indexed by [`ConsentKind`]: `None` = kind not accepted, `Some(None)` = no limit.
    pub kinds: [Option<Option<Period>>; 3],
    pub cite: String,
    pub line: usize,
}

impl Lifetime {
    /// Only express consent, without limit: what a rule without `lifetime` accepts.
    pub(crate) fn express_only() -> Lifetime {
        Lifetime { id: String::new(), kinds: [Some(None), None, None], cite: String::new(), line: 0 }
    }

    pub fn accepts(&self, kind: ConsentKind) -> Option<Option<Period>> {
        self.kinds.get(kind.index()).copied().flatten()
    }
}

/// Times of the week contact is allowed, in the subject's local time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallingWindow {
    pub id: String,
    /// Per weekday, Monday first: `[start, end)` minute-of-day slots, sorted and disjoint.
    pub days: [Vec<(u16, u16)>; 7],
    pub cite: String,
    pub line: usize,
}

/// A do-not-contact register callers must screen against (Bloctel, National DNC, DNCL, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Register {
    pub id: String,
    pub name: String,
    pub cite: String,
    /// Whether a granted consent lets the caller contact a number that is on the register
    /// (most registers exempt prior express consent; `false` is the safe default).
    pub exempt_with_consent: bool,
    pub line: usize,
}

/// A permitted transfer of the pack's subjects' data out of their home regions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub id: String,
    /// Destination regions; empty means any region.
    pub to: Vec<domicile_types::RegionId>,
    /// Purposes the transfer is allowed for; empty means any purpose.
    pub purposes: Vec<Purpose>,
    /// The mechanism that makes it lawful (adequacy, SCCs, PIA, ...).
    pub condition: String,
    pub cite: String,
    /// Only the pack's minimised fields may be sent.
    pub minimised_only: bool,
}

/// Data-subject rights and age thresholds; informative for callers, not used in decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rights {
    /// Time to answer an access (or similar) request.
    pub deadline: Option<Period>,
    /// Extension allowed on notice.
    pub extension: Option<Period>,
    /// Age below which consent must come from (or with) a parent or guardian.
    pub age_of_digital_consent: Option<u8>,
    pub cite: Option<String>,
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
    /// First instant (unix seconds) the rule applies; `None` = always has.
    pub effective_from: Option<i64>,
    /// First instant the rule no longer applies; `None` = open-ended.
    pub effective_until: Option<i64>,
    /// Id of the pack's lifetime that says which consent kinds count and for how long.
    pub lifetime: Option<String>,
    /// Id of the pack's calling window contact must fall in.
    pub window: Option<String>,
    /// Id of the register contact must be screened against.
    pub screen: Option<String>,
    /// For `soft_opt_in`: the facts that must all hold.
    pub conditions: Vec<SoftCondition>,
    /// Ids of rules of extended packs this rule replaces on the cells it covers.
    pub replaces: Vec<String>,
    /// The pack that defined the rule (differs from the deciding pack for inherited rules).
    pub pack_id: String,
    /// The file the rule was read from.
    pub path: String,
}

impl Rule {
    /// Whether the rule applies at `at_unix`.
    pub fn in_effect(&self, at_unix: i64) -> bool {
        self.effective_from.is_none_or(|f| f <= at_unix) && self.effective_until.is_none_or(|u| at_unix < u)
    }

    pub(crate) fn overlaps_in_time(&self, other: &Rule) -> bool {
        let start = self.effective_from.unwrap_or(i64::MIN).max(other.effective_from.unwrap_or(i64::MIN));
        let end = self.effective_until.unwrap_or(i64::MAX).min(other.effective_until.unwrap_or(i64::MAX));
        start < end
    }
}
