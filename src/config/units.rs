//! Human-readable durations ("500ms", "30s", "5m", "1h") and sizes ("64KB", "100MB", "10GB").

use std::time::Duration;

pub const DURATION_HINT: &str = "a duration like \"500ms\", \"30s\", \"5m\" or \"1h\"";
pub const SIZE_HINT: &str = "a size like \"512B\", \"64KB\", \"100MB\" or \"10GB\"";

/// Splits "30s" into (30, "s"); the number must be a non-negative integer.
fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let value = text[..digits].parse().ok()?;
    Some((value, text[digits..].trim()))
}

pub fn parse_duration(text: &str) -> Option<Duration> {
    let (value, unit) = split_number(text)?;
    let millis = match unit {
        "ms" => Some(value),
        "s" => value.checked_mul(1_000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        "d" => value.checked_mul(86_400_000),
        _ => None,
    }?;
    Some(Duration::from_millis(millis))
}

/// Decimal and binary units are both accepted; "KB"/"MB"/"GB" are powers of 1024, as nginx reads them.
pub fn parse_size(text: &str) -> Option<u64> {
    let (value, unit) = split_number(text)?;
    let factor: u64 = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return None,
    };
    value.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("ten seconds"), None);
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("99999999999999999999s"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KB"), Some(65_536));
        assert_eq!(parse_size("100MB"), Some(100 << 20));
        assert_eq!(parse_size("10GB"), Some(10 << 30));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("1.5MB"), None);
        assert_eq!(parse_size("lots"), None);
    }
}
