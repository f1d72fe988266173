//! Stable resource ids.
//!
//! Resources get a random UUID (v4) at creation, formatted the way OpenStack
//! clients expect (lowercase, hyphenated). Ids never change and are never
//! reused; names may change and need not be unique.

use crate::validate::FieldError;

/// A fresh random id for a new resource.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Checks that `value` is a UUID as Roost hands them out.
pub fn check_uuid(field: &str, value: &str) -> Result<(), FieldError> {
    uuid::Uuid::parse_str(value).map(|_| ()).map_err(|_| {
        FieldError::new(
            field,
            value,
            "must be a UUID such as 0b5c6f2e-8d3a-4b7e-9a51-3f6d2c1e8a90",
        )
    })
}

/// Checks a site id: 1 to 63 characters of lowercase letters, digits and
/// `-`, starting with a letter (it is used in host names and file names).
pub fn check_site_id(field: &str, value: &str) -> Result<(), FieldError> {
    check_dns_label(field, value)
}

/// Checks a DNS-label-like name: 1 to 63 of `[a-z0-9-]`, starting with a
/// letter, not ending with `-`.
pub fn check_dns_label(field: &str, value: &str) -> Result<(), FieldError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.starts_with(|c: char| c.is_ascii_lowercase())
        && !value.ends_with('-')
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            value,
            "must be 1 to 63 lowercase letters, digits or '-', start with a letter and not end with '-'",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_uuids_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(check_uuid("id", &a).is_ok());
    }

    #[test]
    fn site_ids() {
        assert!(check_site_id("site.id", "edge-factory-01").is_ok());
        for bad in ["", "Edge", "1edge", "edge-", "edge_01", &"a".repeat(64)] {
            let err = check_site_id("site.id", bad).unwrap_err();
            assert_eq!(err.field, "site.id");
        }
    }
}
