//! Durations as kinfer writes them in manifests and flags: Go/Kubernetes style strings such as
//! `500ms`, `2s`, `1m30s`, `1.5h`. The InferenceService CRD's duration type and every binary's
//! duration flags parse with [`parse`].

use std::time::Duration;

/// The pattern the CRD schema enforces: one or more `<number><unit>` groups.
pub const PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string was empty.
    #[error("empty duration: write a number and a unit, e.g. \"500ms\" or \"30s\"")]
    Empty,
    /// A number was expected at this byte offset.
    #[error("invalid duration {input:?}: expected a number at position {at} (e.g. \"1m30s\")")]
    ExpectedNumber {
        /// The whole input.
        input: String,
        /// Byte offset of the problem.
        at: usize,
    },
    /// The unit after a number is not one of ns, us, µs, ms, s, m, h.
    #[error("invalid duration {input:?}: unknown unit {unit:?} (use ns, us, ms, s, m or h)")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit that was found.
        unit: String,
    },
    /// The value does not fit in a `std::time::Duration`.
    #[error("invalid duration {input:?}: too large")]
    Overflow {
        /// The whole input.
        input: String,
    },
}

/// Parses a Go-style duration string into a [`std::time::Duration`].
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    if input.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total = 0f64;
    let mut rest = input;
    while !rest.is_empty() {
        let at = input.len() - rest.len();
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len]
            .parse()
            .map_err(|_| DurationError::ExpectedNumber {
                input: input.to_owned(),
                at,
            })?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => {
                return Err(DurationError::UnknownUnit {
                    input: input.to_owned(),
                    unit: other.to_owned(),
                });
            }
        };
        rest = &rest[unit_len..];
        total += number * seconds_per_unit;
    }
    Duration::try_from_secs_f64(total).map_err(|_| DurationError::Overflow {
        input: input.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration as D;

    #[test]
    fn parses_go_style_durations() {
        assert_eq!(parse("500ms").unwrap(), D::from_millis(500));
        assert_eq!(parse("2s").unwrap(), D::from_secs(2));
        assert_eq!(parse("1m30s").unwrap(), D::from_secs(90));
        assert_eq!(parse("1.5h").unwrap(), D::from_secs(5400));
        assert_eq!(parse("250us").unwrap(), D::from_micros(250));
        assert_eq!(parse("250µs").unwrap(), D::from_micros(250));
    }

    #[test]
    fn rejects_bad_durations_with_the_reason() {
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert!(matches!(
            parse("10"),
            Err(DurationError::UnknownUnit { unit, .. }) if unit.is_empty()
        ));
        assert!(matches!(
            parse("10d"),
            Err(DurationError::UnknownUnit { unit, .. }) if unit == "d"
        ));
        assert!(matches!(
            parse("ms"),
            Err(DurationError::ExpectedNumber { at: 0, .. })
        ));
        assert!(parse("1..5s").is_err());
        let msg = parse("3 days").unwrap_err().to_string();
        assert!(msg.contains("3 days"), "{msg}");
    }
}
