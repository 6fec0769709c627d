//! Byte sizes as blackbox_exporter's `body_size_limit:` takes them (`units.Base2Bytes` of
//! alecthomas/units): `512KB`, `1MB`, `1.5GiB`, `1MB512KB`, where `KB` and `KiB` both mean
//! 1024 bytes. As an extension, a plain integer is a byte count. `0` means unlimited.

/// Why a size string was rejected; each variant names the input.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum SizeError {
    /// The string is empty.
    #[error("empty size; write it like 10B, 512KB, 1MB or 1GiB")]
    Empty,
    /// The size is negative.
    #[error("size {input:?} is negative; use 0 for unlimited")]
    Negative {
        /// The rejected text (cut to a readable length).
        input: String,
    },
    /// The text is not a number followed by a unit.
    #[error(
        "invalid size {input:?}: expected a number with a unit, like 10B, 512KB, 1MB or 1.5GiB"
    )]
    Invalid {
        /// The rejected text (cut to a readable length).
        input: String,
    },
    /// The unit is not one of the base-2 byte units.
    #[error(
        "unknown unit {unit:?} in size {input:?}; the units are B, KB, MB, GB, TB, PB, EB and KiB, MiB, GiB, TiB, PiB, EiB (all powers of 1024)"
    )]
    UnknownUnit {
        /// The rejected text (cut to a readable length).
        input: String,
        /// The unit as written.
        unit: String,
    },
    /// The size does not fit a signed 64-bit byte count, as in Go.
    #[error("size {input:?} is too large")]
    TooLarge {
        /// The rejected text (cut to a readable length).
        input: String,
    },
}

/// The byte units with their value, case-sensitive as in Go.
const UNITS: [(&str, u128); 13] = [
    ("B", 1),
    ("KB", 1 << 10),
    ("KiB", 1 << 10),
    ("MB", 1 << 20),
    ("MiB", 1 << 20),
    ("GB", 1 << 30),
    ("GiB", 1 << 30),
    ("TB", 1 << 40),
    ("TiB", 1 << 40),
    ("PB", 1 << 50),
    ("PiB", 1 << 50),
    ("EB", 1 << 60),
    ("EiB", 1 << 60),
];

/// Fraction digits taken into account; further ones change the result by less than a byte.
const MAX_FRACTION_DIGITS: usize = 18;

/// Parses a base-2 byte size: a plain byte count (`1048576`), or numbers with units as
/// Go's `units.ParseBase2Bytes` reads them (`1MB` = 1 MiB, `512KB`, `10B`, `1GiB`, `1.5MB`,
/// `1MB512KB`). Fractional bytes are cut off. `0` (which the probe file uses for
/// "unlimited") is returned as 0.
///
/// # Errors
/// [`SizeError`] for empty or negative sizes, unknown units, malformed numbers and sizes
/// beyond `i64::MAX` bytes.
pub fn parse_base2_bytes(text: &str) -> Result<u64, SizeError> {
    let input = || super::node::shorten(text);
    if text.is_empty() {
        return Err(SizeError::Empty);
    }
    let unsigned = match text.as_bytes().first() {
        Some(b'-') => return Err(SizeError::Negative { input: input() }),
        Some(b'+') => &text[1..],
        _ => text,
    };
    if unsigned.is_empty() {
        return Err(SizeError::Invalid { input: input() });
    }
    let too_large = || SizeError::TooLarge { input: input() };
    let max_bytes = u128::from(i64::MAX.unsigned_abs());
    if unsigned.bytes().all(|b| b.is_ascii_digit()) {
        let bytes: u128 = unsigned.parse().map_err(|_| too_large())?;
        return u64::try_from(bytes)
            .ok()
            .filter(|b| u128::from(*b) <= max_bytes)
            .ok_or_else(too_large);
    }
    let mut total_bytes: u128 = 0;
    let mut rest = unsigned;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int_digits, after_int) = rest.split_at(int_len);
        let (fraction_digits, after_number) = match after_int.strip_prefix('.') {
            Some(after_dot) => {
                after_dot.split_at(after_dot.bytes().take_while(u8::is_ascii_digit).count())
            }
            None => ("", after_int),
        };
        if int_digits.is_empty() && fraction_digits.is_empty() {
            return Err(SizeError::Invalid { input: input() });
        }
        let unit_len = after_number
            .bytes()
            .take_while(|b| *b != b'.' && !b.is_ascii_digit())
            .count();
        let (unit, after_unit) = after_number.split_at(unit_len);
        if unit.is_empty() {
            return Err(SizeError::Invalid { input: input() });
        }
        let Some((_, unit_bytes)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(SizeError::UnknownUnit {
                input: input(),
                unit: super::node::shorten(unit),
            });
        };
        let whole: u128 = if int_digits.is_empty() {
            0
        } else {
            int_digits.parse().map_err(|_| too_large())?
        };
        let fraction_digits = fraction_digits
            .get(..MAX_FRACTION_DIGITS)
            .unwrap_or(fraction_digits);
        let fraction_bytes = if fraction_digits.is_empty() {
            0
        } else {
            let numerator: u128 = fraction_digits.parse().map_err(|_| too_large())?;
            let exponent = u32::try_from(fraction_digits.len()).map_err(|_| too_large())?;
            numerator * unit_bytes / 10u128.pow(exponent)
        };
        total_bytes = whole
            .checked_mul(*unit_bytes)
            .and_then(|b| b.checked_add(fraction_bytes))
            .and_then(|b| b.checked_add(total_bytes))
            .filter(|b| *b <= max_bytes)
            .ok_or_else(too_large)?;
        rest = after_unit;
    }
    u64::try_from(total_bytes).map_err(|_| too_large())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn good_sizes() {
        for (text, bytes) in [
            ("0", 0),
            ("0B", 0),
            ("10B", 10),
            ("1024", 1024),
            ("+1024", 1024),
            ("512KB", 512 * 1024),
            ("512KiB", 512 * 1024),
            ("1MB", 1 << 20),
            ("1MiB", 1 << 20),
            ("1GiB", 1 << 30),
            ("1GB", 1 << 30),
            ("2TB", 2 << 40),
            ("1PiB", 1 << 50),
            ("7EB", 7 << 60),
            ("1.5MB", 3 << 19),
            (".5KB", 512),
            ("1.KB", 1024),
            ("1MB512KB", (1 << 20) + (512 << 10)),
            ("1.0000000000000000000000000001KB", 1024),
            ("9223372036854775807", 9_223_372_036_854_775_807),
        ] {
            assert_eq!(parse_base2_bytes(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn bad_sizes() {
        assert_eq!(parse_base2_bytes(""), Err(SizeError::Empty));
        for text in ["-1MB", "-0"] {
            assert!(
                matches!(parse_base2_bytes(text), Err(SizeError::Negative { .. })),
                "{text}"
            );
        }
        for text in ["+", "MB", ".MB", "1MB1", "1.5", "1..5MB", "KB5"] {
            assert!(
                matches!(parse_base2_bytes(text), Err(SizeError::Invalid { .. })),
                "{text}"
            );
        }
        for (text, unit) in [
            ("1mb", "mb"),
            ("1 MB", " MB"),
            ("1kB", "kB"),
            ("1K", "K"),
            ("5ZB", "ZB"),
        ] {
            assert_eq!(
                parse_base2_bytes(text),
                Err(SizeError::UnknownUnit {
                    input: text.to_owned(),
                    unit: unit.to_owned()
                }),
                "{text}"
            );
        }
        for text in [
            "8EB",
            "9223372036854775808",
            "99999999999999999999999999999999999999999KB",
        ] {
            assert!(
                matches!(parse_base2_bytes(text), Err(SizeError::TooLarge { .. })),
                "{text}"
            );
        }
    }

    #[test]
    fn error_text_names_input_and_unit() {
        let text = parse_base2_bytes("1mb").unwrap_err().to_string();
        assert!(
            text.contains("\"mb\"") && text.contains("\"1mb\"") && text.contains("KiB"),
            "{text}"
        );
    }

    proptest! {
        #[test]
        fn never_panics(text in "[-+.0-9A-Za-z ]{0,30}") {
            let _ = parse_base2_bytes(&text);
        }

        #[test]
        fn units_multiply(amount in 0u64..1_000_000, unit in 0usize..UNITS.len()) {
            let (name, bytes) = UNITS[unit];
            let expected = u128::from(amount) * bytes;
            let result = parse_base2_bytes(&format!("{amount}{name}"));
            if expected <= u128::from(i64::MAX.unsigned_abs()) {
                prop_assert_eq!(result.map(u128::from), Ok(expected));
            } else {
                let too_large = matches!(result, Err(SizeError::TooLarge { .. }));
                prop_assert!(too_large, "{result:?}");
            }
        }
    }
}
