//! Go's `time.Duration` syntax, which the Go ProberMesh's duration flags used
//! (`-server.aggregation.interval=15s`, `-agent.sync.interval=1m30s`, `1.5h`, `300ms`), read
//! within the range each flag allows; every refusal names the flag and says the range.

use std::time::Duration;

use anyhow::{Result, anyhow};

/// Parses a Go duration for `-{flag}`: decimal numbers each followed by `ns`, `us`, `µs`, `ms`,
/// `s`, `m` or `h`, concatenated (`1h2m3.5s`), or `0`; it must lie in `min..=max`.
pub(crate) fn parse(flag: &str, text: &str, min: Duration, max: Duration) -> Result<Duration> {
    let allowed = format!("the allowed range is {} to {}", show(min), show(max));
    let bad = || {
        anyhow!(
            "invalid value {text:?} for flag -{flag}: expected a duration such as 15s, 1m30s, \
             1.5h or 300ms; {allowed}"
        )
    };
    let value = if text == "0" {
        Duration::ZERO
    } else {
        parse_go(text).ok_or_else(bad)?
    };
    if value < min {
        return Err(anyhow!(
            "invalid value {text:?} for flag -{flag}: shorter than {}; {allowed}",
            show(min)
        ));
    }
    if value > max {
        return Err(anyhow!(
            "invalid value {text:?} for flag -{flag}: longer than {}; {allowed}",
            show(max)
        ));
    }
    Ok(value)
}

/// The duration `text` spells in Go's syntax (saturating far beyond any range a flag allows),
/// or `None` when it is not one.
fn parse_go(text: &str) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut rest = text;
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if number_len == 0 {
            return None;
        }
        let value: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale_ns = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total_ns += value * scale_ns;
        rest = &rest[unit_len..];
    }
    // Truncation intended: whole nanoseconds, as Go; `as` saturates past u64::MAX.
    Some(Duration::from_nanos(total_ns as u64))
}

/// A range bound the way Go prints it, in its largest whole unit (`1s`, `24h`, `500ms`).
fn show(duration: Duration) -> String {
    let ms = duration.as_millis();
    match ms {
        0 => "0s".to_owned(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn go_spellings_parse() {
        let any = |text| parse("f", text, Duration::ZERO, Duration::MAX).unwrap();
        assert_eq!(any("15s"), Duration::from_secs(15));
        assert_eq!(any("1m30s"), Duration::from_secs(90));
        assert_eq!(any("1.5h"), Duration::from_secs(5400));
        assert_eq!(any("300ms"), Duration::from_millis(300));
        assert_eq!(any("2us"), Duration::from_micros(2));
        assert_eq!(any("0"), Duration::ZERO);
        assert_eq!(parse("f", "24h", SECOND, DAY).unwrap(), DAY);
        assert_eq!(parse("f", "1s", SECOND, DAY).unwrap(), SECOND);
    }

    #[test]
    fn bad_spellings_name_the_flag_and_the_range() {
        for bad in ["", "15", "s", "1x", "-1s", "1m-3s", "1e3s"] {
            let error = parse("agent.probe.interval", bad, SECOND, DAY)
                .unwrap_err()
                .to_string();
            assert!(error.contains("-agent.probe.interval"), "{bad:?}: {error}");
            assert!(
                error.contains("expected a duration such as 15s")
                    && error.contains("the allowed range is 1s to 24h"),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    fn durations_out_of_range_say_the_range_not_the_syntax() {
        for (text, why) in [
            ("0", "shorter than 1s"),
            ("0s", "shorter than 1s"),
            ("500ms", "shorter than 1s"),
            ("24h0m1s", "longer than 24h"),
            ("2562047h", "longer than 24h"),
            ("99999999999999999999h", "longer than 24h"),
        ] {
            let error = parse("server.aggregation.interval", text, SECOND, DAY)
                .unwrap_err()
                .to_string();
            assert_eq!(
                error,
                format!(
                    "invalid value {text:?} for flag -server.aggregation.interval: {why}; the \
                     allowed range is 1s to 24h"
                )
            );
        }
    }
}
