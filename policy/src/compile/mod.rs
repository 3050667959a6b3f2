//! Compiling: linking a pack with the packs it `extends` and building its decision table.

pub(crate) mod link;
pub(crate) mod table;
