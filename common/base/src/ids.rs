//! The id alphabet shared by every service: user, product and owner ids.
//!
//! Ids travel inside other services' URL paths (`/cart/{user_id}`,
//! `/inventory/holds/{owner}/{product_id}`) and Redis keys, so they are 1-128 characters of
//! letters, digits and `-_.@:` — and not made of dots alone: `.` and `..` are dot segments that
//! URL resolution removes (per the URL standard), so such an id would address another route.

/// Longest id any service accepts.
pub const MAX_ID_LEN: usize = 128;

/// The OpenAPI `pattern` of an id; `minLength`/`maxLength` carry the length bounds. utoipa only
/// takes string literals in its attributes, so the services repeat this literal and their tests
/// check the served documents against it (the test kit's `assert_id_patterns`).
pub const ID_PATTERN: &str = "^[A-Za-z0-9._@:-]*[A-Za-z0-9_@:-][A-Za-z0-9._@:-]*$";

/// The rule in words, for error messages.
const ID_RULE: &str = "1-128 characters of letters, digits, '-', '_', '.', '@' or ':', not only dots";

/// Whether `value` is a valid id (see the module docs).
pub fn is_valid_id(value: &str) -> bool {
    let in_alphabet = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':');
    !value.is_empty()
        && value.len() <= MAX_ID_LEN
        && value.bytes().all(in_alphabet)
        && value.bytes().any(|b| b != b'.')
}

/// [`is_valid_id`], with the message a service answers 400 with when it is not: `what` names
/// the field (`user_id`, `product_id`, …).
pub fn check_id(what: &str, value: &str) -> Result<(), String> {
    if is_valid_id(value) {
        Ok(())
    } else {
        Err(format!("{what} must be {ID_RULE} (got {value:?})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[&str] = &[
        "prod-123",
        "user@example.com",
        "tenant:user_1",
        "a.b",
        ".x",
        "x.",
        "._",
    ];
    const INVALID: &[&str] = &[".", "..", "...", "", "a b", "a/b", "%2e", "é", "a?b", "a#b"];

    #[test]
    fn dot_segments_and_foreign_characters_are_refused() {
        for valid in VALID {
            assert!(is_valid_id(valid), "{valid:?}");
        }
        for invalid in INVALID {
            assert!(!is_valid_id(invalid), "{invalid:?}");
        }
        assert!(
            ID_RULE.starts_with(&format!("1-{MAX_ID_LEN} ")),
            "the message states the bound"
        );
        assert!(is_valid_id(&"a".repeat(MAX_ID_LEN)));
        assert!(!is_valid_id(&"a".repeat(MAX_ID_LEN + 1)));
        assert_eq!(
            check_id("user_id", ".."),
            Err(format!("user_id must be {ID_RULE} (got \"..\")"))
        );
    }

    /// The pattern published in the OpenAPI documents says what `is_valid_id` checks (lengths
    /// aside, which the documents state as `minLength`/`maxLength`).
    #[test]
    fn published_pattern_agrees_with_the_check() {
        let pattern = regex::Regex::new(ID_PATTERN).unwrap();
        for sample in VALID.iter().chain(INVALID) {
            assert_eq!(pattern.is_match(sample), is_valid_id(sample), "{sample:?}");
        }
    }
}
