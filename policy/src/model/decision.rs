//! What a decision takes and gives: the caller's input (purpose, channel, instant, consent on
//! record, asserted facts) and the answer (effect, finer outcome, reasons, obligations). Plain
//! data below the compiler and the evaluator: the compiler prebuilds explanations per outcome,
//! the evaluator fills these in.

use std::fmt;

use domicile_types::{Channel, ConsentState, Purpose};

use super::rule::Obligation;
use super::terms::{ConsentKind, PackRef, Recipient, SoftCondition};
use crate::zone::Zone;

/// Obligation ids the engine attaches itself; packs may not define them.
pub(crate) const BUILTIN_OBLIGATIONS: &[&str] = &[CALLING_WINDOW];
/// Attached to a deny outside a calling window: when contact may happen next.
pub const CALLING_WINDOW: &str = "outside-window";

/// What the caller wants to do, when, and the subject's current consent for that purpose and
/// channel (the caller derives the current state from the consent history).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionInput {
    pub purpose: Purpose,
    pub channel: Channel,
    /// The instant the decision is for, in unix seconds (the library has no clock).
    pub at_unix: i64,
    pub consent: Option<ConsentFact>,
    /// The subject's time zone, for calling windows. `None`: the window must hold in every zone
    /// the pack lists, which fails safe for countries with several zones.
    pub subject_time_zone: Option<Zone>,
    /// Facts the caller asserts about this contact (soft opt-in conditions, register screening).
    pub facts: Facts,
}

impl DecisionInput {
    /// An input with no time zone and no asserted facts.
    pub fn new(purpose: Purpose, channel: Channel, at_unix: i64, consent: Option<ConsentFact>) -> Self {
        Self { purpose, channel, at_unix, consent, subject_time_zone: None, facts: Facts::default() }
    }
}

/// Facts about one contact that rules may depend on. The default asserts nothing, which never
/// turns a deny into an allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    /// Soft opt-in: the contact details were obtained from the subject in a sale.
    pub contact_from_sale: bool,
    /// Soft opt-in: the message is about the sender's own similar products or services.
    pub similar_products: bool,
    /// Soft opt-in: a clear, free opt-out was offered at collection and is in every message.
    pub opt_out_offered: bool,
    /// Result of screening the contact against the register the rule names: `Some(true)` = listed
    /// (deny), `Some(false)` = screened and not listed, `None` = not screened yet (the decision
    /// carries an obligation to screen).
    pub on_register: Option<bool>,
    /// When the subject last bought from (or contracted with) the sender: an existing business
    /// relationship, for register exemptions and recency conditions. `None`: no such relationship
    /// known (the conditions that need one fail).
    pub last_purchase_at: Option<i64>,
    /// When the subject last inquired or applied with the sender.
    pub last_inquiry_at: Option<i64>,
    /// Who the contact goes to, where rules differ for consumers and businesses. `None`: not
    /// known, and the contact must be allowed under the rules for every recipient type.
    pub recipient: Option<Recipient>,
    /// The subject's age in whole years, for rules with minors bands (`None`: not known, treated
    /// as the pack's `[minors]` definition says).
    pub age: Option<u8>,
}

impl Facts {
    /// Whether the caller asserted the soft opt-in condition.
    pub(crate) fn holds(&self, condition: SoftCondition) -> bool {
        match condition {
            SoftCondition::ContactFromSale => self.contact_from_sale,
            SoftCondition::SimilarProducts => self.similar_products,
            SoftCondition::OptOutOffered => self.opt_out_offered,
        }
    }
}

/// The current consent state for one purpose × channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentFact {
    pub state: ConsentState,
    /// When the consent was given; for implied consent, the date of the purchase or inquiry.
    pub captured_at_unix: i64,
    pub expires_at_unix: Option<i64>,
    pub double_opt_in_confirmed: bool,
    /// What the consent rests on; `None` is read as express consent.
    pub kind: Option<ConsentKind>,
    /// Ids of the pack's calling windows the consent is limited to ("call me on weekdays
    /// 09:00-17:00"); empty: every hour, except hours a rule says need a consent naming them.
    pub hours: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "allow" => Some(Effect::Allow),
            "deny" => Some(Effect::Deny),
            _ => None,
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! outcomes {
    ($($variant:ident => $text:literal, $phrase:literal, $effect:ident;)+) => {
        /// Why a decision came out the way it did, finer than the effect.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Outcome { $($variant),+ }

        impl Outcome {
            pub const ALL: &'static [Outcome] = &[$(Outcome::$variant),+];
            pub const COUNT: usize = Self::ALL.len();

            pub fn as_str(self) -> &'static str {
                match self { $(Outcome::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some(Outcome::$variant),)+ _ => None }
            }

            /// The words an explanation starts with.
            pub fn phrase(self) -> &'static str {
                match self { $(Outcome::$variant => $phrase),+ }
            }

            pub fn effect(self) -> Effect {
                match self { $(Outcome::$variant => Effect::$effect),+ }
            }
        }
    };
}

outcomes! {
    DefaultDeny => "default_deny", "no rule", Deny;
    Prohibited => "prohibited", "prohibited", Deny;
    Gap => "gap", "declared gap", Deny;
    ConsentGranted => "consent_granted", "consent granted", Allow;
    SoftOptIn => "soft_opt_in", "soft opt-in conditions hold", Allow;
    NoObjection => "no_objection", "no objection", Allow;
    NoConsent => "no_consent", "no consent", Deny;
    ConsentDenied => "consent_denied", "consent denied", Deny;
    ConsentWithdrawn => "consent_withdrawn", "consent withdrawn", Deny;
    ConsentExpired => "consent_expired", "consent expired", Deny;
    ConsentKindNotAccepted => "consent_kind_not_accepted", "consent kind not accepted", Deny;
    DoubleOptInUnconfirmed => "double_opt_in_unconfirmed", "double opt-in not confirmed", Deny;
    ConsentHoursNotCovered => "consent_hours_not_covered", "the consent does not cover this time of day", Deny;
    MinorConsentRequired => "minor_consent_required", "the subject is a minor and the consent the law requires for minors is not on record", Deny;
    OnRegister => "on_register", "on a do-not-contact register", Deny;
    NoRecentRelationship => "no_recent_relationship", "no business relationship recent enough", Deny;
    OutsideWindow => "outside_window", "outside the calling window", Deny;
    HolidaysNotCovered => "holidays_not_covered", "the holiday data does not cover the date", Deny;
    NotInEffect => "not_in_effect", "pack not in effect", Deny;
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pack's answer, carrying everything needed to explain and audit it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub effect: Effect,
    /// The deciding rule ids (every denying rule of a deny, every allowing rule of an allow), or
    /// `<pack-id>.default-deny` / `<pack-id>.not-in-effect`.
    pub reasons: Vec<String>,
    pub pack: PackRef,
    /// The allowing rules' obligations; on a deny outside a calling window, when contact may happen.
    pub obligations: Vec<Obligation>,
    pub explanation: String,
    /// When the decision stops holding: an allow's consent expiry or window close, or when a deny
    /// outside a calling window turns into a window; `None` when it does not change by itself.
    pub valid_until_unix: Option<i64>,
    /// The jurisdiction of the pack that decided (`US-CA`, `US`).
    pub jurisdiction: String,
    /// The subject's jurisdiction is a subdivision without a pack of its own (`US-NY`) and its
    /// country's pack decided ([`crate::PackSet::lookup`]); the explanation says so too.
    pub country_fallback: bool,
}
