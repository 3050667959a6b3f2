//! What consent signals from the web mean in a jurisdiction (`[signals]`): whether Global Privacy
//! Control is a legally binding opt-out there and from when, what an opt-out of sale, sharing or
//! targeted advertising (GPC where binding, a GPP US section's opt-outs) withdraws, and which IAB
//! TCF purposes, special features and publisher purposes map to which Domicile purposes and
//! channels. Each part is inherited from the nearest pack that states it. The node turns a
//! decoded signal into ledger entries with these (`domicile_node`, `RecordSignal`); nothing here
//! is a default: a signal a pack gives no meaning to is recorded as evidence only, and says so.

use domicile_types::{Channel, Purpose};

/// `[signals.gpc]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpcRule {
    /// GPC is a legally binding opt-out (of `[signals.opt_out]`) here; else it is recorded only.
    pub binding: bool,
    /// From when it binds (Unix seconds); `None` only when not binding.
    pub effective_from: Option<i64>,
    pub cite: String,
}

impl GpcRule {
    /// Whether a GPC signal captured at `at` is an opt-out under this rule.
    pub fn binds_at(&self, at: i64) -> bool {
        self.binding && self.effective_from.is_some_and(|from| at >= from)
    }
}

/// `[signals.opt_out]`: what an opt-out of sale, sharing or targeted advertising withdraws.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptOutRule {
    pub purpose: Purpose,
    pub channels: Vec<Channel>,
    pub cite: String,
}

/// Which part of a TC string a mapping reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcfSource {
    /// A TCF purpose's consent (1-11), for `vendor_id` if given (the vendor's consent bit too).
    Purpose(u8),
    /// A special feature's opt-in (1-2).
    SpecialFeature(u8),
    /// The publisher TC segment's consent for a TCF purpose (1-24).
    PublisherPurpose(u8),
    /// The publisher TC segment's consent for a custom purpose (1-64).
    CustomPurpose(u8),
}

/// `[[signals.tcf]]`: one part of a TC string mapped to a Domicile purpose on some channels. Set
/// in the string: a grant; stated but not set: a withdrawal; not stated (no publisher segment,
/// say): nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcfMapping {
    pub source: TcfSource,
    pub vendor_id: Option<u16>,
    pub purpose: Purpose,
    pub channels: Vec<Channel>,
    pub cite: String,
}

/// A pack's `[signals]`, as inherited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signals {
    pub gpc: Option<GpcRule>,
    pub opt_out: Option<OptOutRule>,
    /// `None`: not stated (inherited); `Some(empty)`: no mapping.
    pub tcf: Option<Vec<TcfMapping>>,
}
