//! Go's `time.ParseDuration` syntax, which the Go ProberMesh's duration flags used
//! (`-server.aggregation.interval=15s`, `-agent.sync.interval=1m30s`, `1.5h`, `300ms`).

use std::time::Duration;

use anyhow::{Result, bail};

/// Parses a positive Go duration: decimal numbers each followed by `ns`, `us`, `µs`, `ms`,
/// `s`, `m` or `h`, concatenated (`1h2m3.5s`).
pub(crate) fn parse(flag: &str, text: &str) -> Result<Duration> {
    let bad = || {
        anyhow::anyhow!(
            "invalid value {text:?} for flag -{flag}: expected a duration such as 15s, 1m30s, \
             1.5h or 300ms"
        )
    };
    if text.is_empty() || text == "0" {
        bail!("invalid value {text:?} for flag -{flag}: must be longer than zero");
    }
    let mut rest = text;
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if number_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..number_len].parse().map_err(|_| bad())?;
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
            _ => return Err(bad()),
        };
        total_ns += value * scale_ns;
        rest = &rest[unit_len..];
    }
    // Go's limit: about 292 years.
    if !(1.0..9.2e18).contains(&total_ns) {
        return Err(bad());
    }
    // Truncation intended: whole nanoseconds, as Go.
    Ok(Duration::from_nanos(total_ns as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_spellings_parse() {
        assert_eq!(parse("f", "15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse("f", "1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("f", "1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("f", "300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse("f", "2us").unwrap(), Duration::from_micros(2));
    }

    #[test]
    fn bad_spellings_name_the_flag() {
        for bad in ["", "0", "15", "s", "1x", "-1s", "1m-3s", "1e3s"] {
            let error = parse("agent.probe.interval", bad).unwrap_err().to_string();
            assert!(error.contains("-agent.probe.interval"), "{bad:?}: {error}");
        }
    }
}
