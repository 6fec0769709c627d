//! Durations in the Prometheus syntax (`util.ParseDuration`) the Go system used for the probe
//! file's `interval:`: integer amounts with the units y, w, d, h, m, s, ms in that order
//! (`1m30s`), or a bare `0`. No fractions, no `us`/`ns`, no spaces.

use std::time::Duration;

/// Why a duration string was rejected; each variant names the input.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum DurationError {
    /// The string is empty.
    #[error("empty duration; write it like 15ms, 1s or 1m30s")]
    Empty,
    /// The string does not follow the grammar.
    #[error(
        "invalid duration {input:?}: expected whole numbers with the units y, w, d, h, m, s, ms \
         in that order, each at most once (for example 1m30s or 15ms)"
    )]
    Invalid {
        /// The rejected text (cut to a readable length).
        input: String,
    },
    /// The duration is longer than Go's `time.Duration` can hold (about 292 years).
    #[error(
        "duration {input:?} is out of range: the longest is {LONGEST_TEXT} (about 292 years, \
         what Go's time.Duration holds)"
    )]
    OutOfRange {
        /// The rejected text (cut to a readable length).
        input: String,
    },
}

/// The units in the order the grammar requires, with their length in milliseconds
/// (a year is 365 days, a week 7 days, as in Prometheus).
const UNITS_MS: [(&str, u128); 7] = [
    ("y", 365 * 24 * 60 * 60 * 1000),
    ("w", 7 * 24 * 60 * 60 * 1000),
    ("d", 24 * 60 * 60 * 1000),
    ("h", 60 * 60 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
];

/// The longest duration accepted: Go's `time.Duration` maximum, in whole milliseconds.
const MAX_MS: u128 = (i64::MAX as u128) / 1_000_000;
/// [`MAX_MS`] as [`format_duration`] writes it, for messages.
const LONGEST_TEXT: &str = "106751d23h47m16s854ms";

/// Parses a Prometheus-style duration: `^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$`
/// or a bare `0`.
///
/// # Errors
/// [`DurationError`] for an empty string, text outside the grammar (fractions, unknown or
/// repeated units, units out of order) or a duration beyond about 292 years.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let invalid = || DurationError::Invalid {
        input: super::node::shorten(text),
    };
    let out_of_range = || DurationError::OutOfRange {
        input: super::node::shorten(text),
    };
    let mut rest = text;
    // Index into UNITS_MS of the next unit allowed: each unit at most once, in order.
    let mut next_unit = 0;
    let mut total_ms: u128 = 0;
    while !rest.is_empty() {
        let digits_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits_len == 0 {
            return Err(invalid());
        }
        let (digits, after_digits) = rest.split_at(digits_len);
        let unit_len = after_digits
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        let (unit, after_unit) = after_digits.split_at(unit_len);
        let offset = UNITS_MS
            .iter()
            .skip(next_unit)
            .position(|(name, _)| *name == unit)
            .ok_or_else(invalid)?;
        let unit_index = next_unit + offset;
        let unit_ms = UNITS_MS.get(unit_index).map_or(1, |(_, ms)| *ms);
        next_unit = unit_index + 1;
        let amount: u128 = digits.parse().map_err(|_| out_of_range())?;
        total_ms = amount
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(out_of_range)?;
        if total_ms > MAX_MS {
            return Err(out_of_range());
        }
        rest = after_unit;
    }
    let total_ms = u64::try_from(total_ms).map_err(|_| out_of_range())?;
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration the way Prometheus prints one (`1m30s`, `90d`, `0s`); sub-millisecond
/// parts are dropped. Years and weeks are used only when they divide the rest exactly.
/// [`parse_duration`] reads the result back to the same whole-millisecond duration.
#[must_use]
pub fn format_duration(duration: Duration) -> String {
    let mut rest_ms = duration.as_millis();
    if rest_ms == 0 {
        return "0s".to_owned();
    }
    let mut text = String::new();
    for (unit, unit_ms) in UNITS_MS {
        let exact_only = matches!(unit, "y" | "w");
        if exact_only && !rest_ms.is_multiple_of(unit_ms) {
            continue;
        }
        let amount = rest_ms / unit_ms;
        if amount > 0 {
            text.push_str(&amount.to_string());
            text.push_str(unit);
            rest_ms -= amount * unit_ms;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn good_durations() {
        for (text, ms) in [
            ("0", 0),
            ("0s", 0),
            ("15ms", 15),
            ("1s", 1000),
            ("1m", 60_000),
            ("1m30s", 90_000),
            ("1h", 3_600_000),
            ("1d", 86_400_000),
            ("2w", 14 * 86_400_000),
            ("1y", 365 * 86_400_000),
            (
                "1y2w3d4h5m6s7ms",
                ((((365 + 14 + 3) * 24 + 4) * 60 + 5) * 60 + 6) * 1000 + 7,
            ),
            ("1h0m", 3_600_000),
            ("007s", 7000),
            ("90m", 5_400_000),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_durations() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        for text in [
            "1.5s", "30s1m", "1s1s", "1", "00", "s", "1S", "1us", "1ns", "-1s", "+1s", " 1s",
            "1s ", "1 s", "1m 30s", "1msm", "1sms5", "1h1", "ms", "1mss", "１s",
        ] {
            assert_eq!(
                parse_duration(text),
                Err(DurationError::Invalid {
                    input: text.to_owned()
                }),
                "{text}"
            );
        }
        for text in [
            "293y",
            "99999999999999999999999999999999999999999999s",
            "15251w",
            "106751d23h47m16s855ms",
        ] {
            assert_eq!(
                parse_duration(text),
                Err(DurationError::OutOfRange {
                    input: text.to_owned()
                }),
                "{text}"
            );
        }
        // The largest accepted value: i64::MAX nanoseconds, in whole milliseconds.
        assert!(parse_duration("106751d23h47m16s854ms").is_ok());
        assert_eq!(
            format_duration(Duration::from_millis(MAX_MS as u64)),
            LONGEST_TEXT
        );
        assert_eq!(
            parse_duration("2562048h").unwrap_err().to_string(),
            "duration \"2562048h\" is out of range: the longest is 106751d23h47m16s854ms (about \
             292 years, what Go's time.Duration holds)"
        );
    }

    #[test]
    fn error_text_names_the_input() {
        let text = parse_duration("1.5s").unwrap_err().to_string();
        assert!(
            text.contains("\"1.5s\"") && text.contains("1m30s"),
            "{text}"
        );
        let text = parse_duration("999y").unwrap_err().to_string();
        assert!(
            text.contains("\"999y\"") && text.contains("out of range"),
            "{text}"
        );
    }

    #[test]
    fn formats_like_prometheus() {
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(format_duration(Duration::from_millis(90_000)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(90 * 86_400)), "90d");
        assert_eq!(format_duration(Duration::from_secs(14 * 86_400)), "2w");
        assert_eq!(format_duration(Duration::from_secs(365 * 86_400)), "1y");
        assert_eq!(format_duration(Duration::from_millis(15)), "15ms");
        assert_eq!(format_duration(Duration::from_micros(1500)), "1ms");
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(ms in 0..=MAX_MS as u64) {
            let duration = Duration::from_millis(ms);
            prop_assert_eq!(parse_duration(&format_duration(duration)), Ok(duration));
        }

        #[test]
        fn never_panics(text in ".{0,40}") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn grammar_strings_parse(parts in proptest::collection::vec(proptest::option::of(0u32..100), 7)) {
            let mut text = String::new();
            let mut ms: u128 = 0;
            for ((unit, unit_ms), amount) in UNITS_MS.iter().zip(&parts) {
                if let Some(amount) = amount {
                    text.push_str(&format!("{amount}{unit}"));
                    ms += u128::from(*amount) * unit_ms;
                }
            }
            let expected = if text.is_empty() { Err(DurationError::Empty) } else { Ok(Duration::from_millis(ms as u64)) };
            prop_assert_eq!(parse_duration(&text), expected);
        }
    }
}
