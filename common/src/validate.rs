//! The one validation path.
//!
//! Every spec that enters Roost (from a config file or an API body) is checked
//! by a `validate` function on that spec, returning the first [`FieldError`].
//! A `FieldError` names the field (as a path such as `hosts[2].vcpus`), the
//! value it had and the rule it broke, so a person can fix it without reading
//! code.

use std::fmt::Display;

/// A field that broke a rule. Its message reads
/// `hosts[2].vcpus: must be between 1 and 4096 (got 0)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {rule} (got {value})")]
pub struct FieldError {
    /// Path of the field, e.g. `server.flavorRef` or `hosts[2].vcpus`.
    pub field: String,
    /// The offending value, as text (truncated to 80 characters).
    pub value: String,
    /// The rule, phrased as what the value must be.
    pub rule: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, value: impl Display, rule: impl Into<String>) -> Self {
        let mut value = value.to_string();
        if value.chars().count() > 80 {
            value = value.chars().take(77).collect::<String>() + "...";
        }
        if value.is_empty() {
            value = "\"\"".into();
        }
        FieldError {
            field: field.into(),
            value,
            rule: rule.into(),
        }
    }

    /// A required field that is absent.
    pub fn missing(field: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            value: "nothing".into(),
            rule: "is required".into(),
        }
    }

    /// Puts `prefix` in front of the field path: `vcpus` -> `hosts[2].vcpus`.
    pub fn at(mut self, prefix: &str) -> Self {
        if !prefix.is_empty() {
            self.field = format!("{prefix}.{}", self.field);
        }
        self
    }
}

/// Checks `min <= value <= max` for any ordered number.
pub fn range<T: PartialOrd + Display>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), FieldError> {
    if value < min || value > max {
        return Err(FieldError::new(
            field,
            &value,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(())
}

/// Checks a human-facing name: 1 to 255 characters, no control characters,
/// not only white space.
pub fn name(field: &str, value: &str) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, value, "must not be empty"));
    }
    text(field, value)
}

/// Checks free text that may be empty (a Cinder name or description): at
/// most 255 characters, no control characters.
pub fn text(field: &str, value: &str) -> Result<(), FieldError> {
    if value.chars().count() > 255 {
        return Err(FieldError::new(
            field,
            value,
            "must be at most 255 characters",
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            value.escape_debug(),
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks a finite allocation ratio in `(0, 64]`.
pub fn ratio(field: &str, value: f64) -> Result<(), FieldError> {
    if !value.is_finite() || value <= 0.0 || value > 64.0 {
        return Err(FieldError::new(
            field,
            value,
            "must be a number above 0 and at most 64",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_field_value_and_rule() {
        let e = range("hosts[2].vcpus", 0, 1, 4096).unwrap_err();
        assert_eq!(
            e.to_string(),
            "hosts[2].vcpus: must be between 1 and 4096 (got 0)"
        );
        assert_eq!(e.at("site").field, "site.hosts[2].vcpus");
    }

    #[test]
    fn names() {
        assert!(name("n", "web-1").is_ok());
        assert!(name("n", "  ").is_err());
        assert!(name("n", "a\u{7}b").is_err());
        assert!(name("n", &"x".repeat(256)).is_err());
    }

    #[test]
    fn ratios() {
        assert!(ratio("r", 16.0).is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 65.0] {
            assert!(ratio("r", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn long_values_are_truncated() {
        let e = FieldError::new("f", "x".repeat(500), "r");
        assert!(e.value.len() <= 80);
    }
}
