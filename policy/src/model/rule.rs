//! A rule and the named definitions rules refer to (obligations, consent lifetimes, registers).
//! Calling windows, the fourth kind, live in `window.rs` with their local-time arithmetic.

use domicile_types::{Channel, Purpose};

use super::terms::{Basis, Confidence, ConsentKind, Period, Recipient, SoftCondition, UnknownAge};

/// Something the caller must do when it acts on an allow, e.g. "include an unsubscribe link".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Obligation {
    pub id: String,
    pub text: String,
}

/// How long each kind of consent counts for a rule. A kind without an entry is not accepted
/// by rules using this lifetime; `None` inside means accepted without limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifetime {
    pub id: String,
    /// Indexed by [`ConsentKind`]: `None` = kind not accepted, `Some(None)` = no limit.
    pub kinds: [Option<Option<Period>>; 4],
    pub cite: String,
    pub line: usize,
}

impl Lifetime {
    /// Only express consent, without limit: what a rule without `lifetime` accepts.
    pub(crate) fn express_only() -> Lifetime {
        Lifetime { id: String::new(), kinds: [Some(None), None, None, None], cite: String::new(), line: 0 }
    }

    pub fn accepts(&self, kind: ConsentKind) -> Option<Option<Period>> {
        self.kinds.get(kind.index()).copied().flatten()
    }
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
    /// An existing business relationship exempts a listed number for this long after the last
    /// purchase or inquiry (e.g. the US DNC rules: 18 months, 3 months); `None`: no exemption.
    pub relationship_exemption: Option<Relationship>,
    pub line: usize,
}

/// How long after the last purchase, and after the last inquiry, a business relationship counts.
/// `None` for a kind: that kind of contact does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relationship {
    pub purchase: Option<Period>,
    pub inquiry: Option<Period>,
}

impl Relationship {
    /// Until when the relationship counts at `at` (`None`: it does not count now), given the
    /// dates of the last purchase and the last inquiry: the later of the purchase's and the
    /// inquiry's ends, each counted from its date. A date after `at` does not count (a
    /// relationship cannot be asserted in advance).
    pub fn holds_until(&self, last_purchase_at: Option<i64>, last_inquiry_at: Option<i64>, at: i64) -> Option<i64> {
        let end = |limit: Option<Period>, date: Option<i64>| match (limit, date) {
            (Some(limit), Some(date)) if date <= at => Some(limit.after(date)).filter(|end| *end > at),
            _ => None,
        };
        end(self.purchase, last_purchase_at).max(end(self.inquiry, last_inquiry_at))
    }
}

/// What a rule requires below an age: the law's bands for minors (e.g. CCPA: under 13 the
/// parent's opt-in, 13 to 15 the minor's own opt-in, for a sale that is an opt-out for adults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minors {
    pub id: String,
    /// Youngest first, `under` strictly increasing.
    pub bands: Vec<MinorBand>,
    /// How a subject of unknown age is treated; stated by the pack, never assumed.
    pub unknown_age: UnknownAge,
    pub cite: String,
    pub line: usize,
}

/// One band: subjects younger than `under` years.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinorBand {
    pub under: u8,
    /// `opt_in`, `double_opt_in` or `prohibited`: a band only ever tightens.
    pub basis: Basis,
    /// The consent kinds that count for a subject in the band (e.g. `guardian` under 13).
    pub consent: Vec<ConsentKind>,
}

impl Minors {
    /// The bands a subject of `age` years (`None`: unknown) must pass: the one its age falls in;
    /// none for an adult or an unknown age the pack treats as an adult's (the rule as written);
    /// every band for an unknown age the pack treats as a minor's.
    pub fn bands_for(&self, age: Option<u8>) -> &[MinorBand] {
        match (age, self.unknown_age) {
            (Some(age), _) => match self.bands.iter().position(|b| age < b.under) {
                Some(i) => self.bands.get(i..=i).unwrap_or(&[]),
                None => &[],
            },
            (None, UnknownAge::Adult) => &[],
            (None, UnknownAge::Minor) => &self.bands,
        }
    }
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
    /// For `opt_out`, `legitimate_interest` and the no-consent branch of `soft_opt_in`: only a
    /// subject with a business relationship this recent (e.g. customers of the last 12 months)
    /// may be contacted without consent.
    pub customer_within: Option<Relationship>,
    /// The recipient types the rule applies to; empty: every type. Two rules of one file may
    /// share a cell when their recipient types differ.
    pub recipients: Vec<Recipient>,
    /// Id of the `[minors]` definition whose bands apply below an age; resolved from the deciding
    /// pack outwards, so a member state's age applies to its baseline's rules.
    pub minors: Option<String>,
    /// Id of a calling window in which a consent counts only if it names those hours (Korea's
    /// separate consent to night-time advertising).
    pub separate_consent_hours: Option<String>,
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

    /// The recipient types the rule applies to, as a mask of [`Recipient::bit`].
    pub(crate) fn recipient_mask(&self) -> u8 {
        if self.recipients.is_empty() {
            super::terms::ALL_RECIPIENTS
        } else {
            self.recipients.iter().fold(0, |m, r| m | r.bit())
        }
    }

    pub(crate) fn overlaps_in_time(&self, other: &Rule) -> bool {
        let start = self.effective_from.unwrap_or(i64::MIN).max(other.effective_from.unwrap_or(i64::MIN));
        let end = self.effective_until.unwrap_or(i64::MAX).min(other.effective_until.unwrap_or(i64::MAX));
        start < end
    }
}
