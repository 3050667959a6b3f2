//! The compiled model: the types a pack compiles into and a decision reads, below both the
//! compiler and the evaluator so that each depends on the model and neither on the other.
//!
//! Bottom up: `terms` (keywords, periods, `id@version`), `rule`, `calendar` (public holidays) and
//! `window` (rules and what they refer to), `residency`, `decision` (what a decision takes and
//! gives), `table` (the purpose × channel layout), `pack` (a compiled pack and its read-only
//! accessors). Reading (`read`) fills the first ones in; nothing here reads files, formats
//! diagnostics or decides.

pub(crate) mod calendar;
pub(crate) mod decision;
pub(crate) mod pack;
pub(crate) mod residency;
pub(crate) mod rule;
pub(crate) mod signals;
pub(crate) mod table;
pub(crate) mod terms;
pub(crate) mod window;

pub use calendar::HolidayCalendar;
pub use decision::{CALLING_WINDOW, ConsentFact, Decision, DecisionInput, Effect, Facts, Outcome};
pub use pack::{Deadline, Pack, Rights};
pub use residency::{ConsentMissing, Residency, ResidencyRefusal, Transfer, TransferCheck, TransferConsentFact};
pub use rule::{Lifetime, MinorBand, Minors, Obligation, Register, Rule};
pub use signals::{GpcRule, OptOutRule, Signals, TcfMapping, TcfSource};
pub use terms::{
    Basis, Confidence, ConsentKind, Localisation, PackKind, PackRef, Period, Recipient, SoftCondition, TransferConsent,
    UnknownAge,
};
pub use window::{CallingWindow, HolidayRule};
