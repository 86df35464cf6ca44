//! Times as people read them: RFC 3339 in UTC, from milliseconds since the Unix epoch.

/// RFC 3339 UTC time of milliseconds since the epoch.
pub fn format_time(ms: i64) -> String {
    let mut out = String::with_capacity(20);
    push_time(&mut out, ms);
    out
}

/// Appends `format_time(ms)` to `out` without the formatting machinery: plans and
/// statuses print one per stage, on every call.
pub fn push_time(out: &mut String, ms: i64) {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    if !(0..=9999).contains(&y) {
        use std::fmt::Write;
        let _ = write!(
            out,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        );
        return;
    }
    fn digits(out: &mut String, v: i64, width: u32) {
        for p in (0..width).rev() {
            out.push(char::from(b'0' + (v / 10i64.pow(p) % 10) as u8));
        }
    }
    digits(out, y, 4);
    out.push('-');
    digits(out, m, 2);
    out.push('-');
    digits(out, d, 2);
    out.push('T');
    digits(out, rem / 3600, 2);
    out.push(':');
    digits(out, rem % 3600 / 60, 2);
    out.push(':');
    digits(out, rem % 60, 2);
    out.push('Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_time(1_764_111_233_999), "2025-11-25T22:53:53Z");
        // Before the epoch, and years the fast path does not cover.
        assert_eq!(format_time(-1), "1969-12-31T23:59:59Z");
        assert_eq!(format_time(253_402_300_800_000), "10000-01-01T00:00:00Z");
    }
}
