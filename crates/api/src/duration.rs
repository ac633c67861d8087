//! Durations in manifests: Go/Kubernetes style strings such as `500ms`, `2s`, `1m30s`, `1.5h`.
//!
//! [`Duration`] keeps the text the user wrote (so a round trip through the API server is exact)
//! and is checked when it is deserialised; the CRD schema carries the same pattern, so the API
//! server refuses a malformed value before kinfer sees it.

use std::{borrow::Cow, fmt, str::FromStr};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
pub fn parse(input: &str) -> Result<std::time::Duration, DurationError> {
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
    std::time::Duration::try_from_secs_f64(total).map_err(|_| DurationError::Overflow {
        input: input.to_owned(),
    })
}

/// A duration as written in a manifest (`"250ms"`), validated on deserialisation.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Duration {
    text: String,
    value: std::time::Duration,
}

impl Duration {
    /// The parsed value.
    pub fn get(&self) -> std::time::Duration {
        self.value
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Duration {
    type Err = DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self {
            value: parse(s)?,
            text: s.to_owned(),
        })
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": PATTERN,
        })
    }
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

    #[test]
    fn keeps_the_text_through_serde() {
        let d: Duration = serde_json::from_str("\"1m30s\"").unwrap();
        assert_eq!(d.get(), D::from_secs(90));
        assert_eq!(serde_json::to_string(&d).unwrap(), "\"1m30s\"");
        assert!(serde_json::from_str::<Duration>("\"soon\"").is_err());
    }
}
