//! `[rights]`: data-subject request deadlines and the age of digital consent. Informative for
//! callers; each value is inherited from the nearest pack that states it. `deadline = "none"`
//! declares that the law fixes no period (with `cite` saying where it says so).

use super::document::Table;
use super::values::period;
use crate::diag::Sink;
use crate::model::{Deadline, Rights};

const RIGHTS_KEYS: &[&str] = &["deadline", "extension", "age_of_digital_consent", "cite"];

/// Reads `[rights]` (optional; absent means nothing stated).
pub(crate) fn read(sink: &mut Sink<'_>, root: &Table<'_, '_>) -> Rights {
    let mut rights = Rights::default();
    let Some((table, span)) = root.table(sink, "rights", false) else { return rights };
    let r = Table::new(sink, table, span, "[rights]", RIGHTS_KEYS);
    rights.deadline = r.opt_str(sink, "deadline").and_then(|v| match *v.get_ref() {
        "none" => Some(Deadline::NoFixedPeriod),
        _ => period(sink, &v, "deadline").map(Deadline::Within),
    });
    rights.extension = r.opt_str(sink, "extension").and_then(|v| period(sink, &v, "extension"));
    if let Some(age) = r.opt_int(sink, "age_of_digital_consent") {
        match u8::try_from(*age.get_ref()) {
            Ok(a) if (1..=25).contains(&a) => rights.age_of_digital_consent = Some(a),
            _ => sink.error(&age.span(), "`age_of_digital_consent` must be between 1 and 25"),
        }
    }
    rights.cite = r.opt_str(sink, "cite").map(|s| (*s.get_ref()).to_owned());
    rights
}
