//! `domicile import` (issue 22): consent from another platform into the regions it belongs to.
//! `row`, `mapping` and `formats` are pure (source file → canonical rows through the versioned
//! purpose-mapping file); `driver` is the IO (subjects registered through the gateway, batches of
//! `ImportConsent`, receipts and the checkpoint a killed run resumes from).

pub mod driver;
pub mod formats;
pub mod mapping;
mod register;
pub mod row;
mod window;
