//! What an imported consent entry keeps of its source: its source system, its source event id
//! and the version of the purpose mapping it was read with, each a token (nothing free-form is
//! kept with an entry). The node enforces it; `domicile import` checks it before sending, so a
//! value the node would refuse never leaves the importer.

/// The longest import token.
pub const IMPORT_TOKEN_MAX: usize = 128;

/// Whether `text` is an import token: 1 to [`IMPORT_TOKEN_MAX`] letters, digits and `._:/#-`.
pub fn is_import_token(text: &str) -> bool {
    (1..=IMPORT_TOKEN_MAX).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:/#-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_short_and_plain() {
        assert!(is_import_token("onetrust"));
        assert!(is_import_token("crm/2026.1#a:b_c-d"));
        for bad in ["", "jane@x.com", "a b", "v1+fix", &"v".repeat(129)] {
            assert!(!is_import_token(bad), "{bad}");
        }
    }
}
