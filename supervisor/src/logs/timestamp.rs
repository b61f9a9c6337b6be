//! The line prefix: `2026-11-25T08:00:00.123Z ` — RFC 3339, UTC, milliseconds, then a space.
//!
//! Hand-rolled on purpose: the log pipe formats one prefix per read batch and the reader parses
//! one per line, so both sides stay allocation-free and independent of any date library. The
//! layout is fixed-width, which is what makes parsing a handful of byte compares.

use std::time::{SystemTime, UNIX_EPOCH};

/// Length of the prefix the log pipe writes before every line: the 24-byte timestamp and a
/// space.
pub const PREFIX_LEN: usize = 25;

/// Milliseconds since the Unix epoch (negative before 1970).
pub fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The prefix for `unix_ms`: `YYYY-MM-DDTHH:MM:SS.mmmZ ` (years clamped to 0000–9999).
pub fn format_prefix(unix_ms: i64) -> [u8; PREFIX_LEN] {
    // Clamp to the years a 4-digit field can hold.
    const MIN: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00Z
    const MAX: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let ms = unix_ms.clamp(MIN, MAX);
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (hh, rest) = (in_day / 3_600_000, in_day % 3_600_000);
    let (mm, rest) = (rest / 60_000, rest % 60_000);
    let (ss, milli) = (rest / 1000, rest % 1000);

    let mut out = *b"0000-00-00T00:00:00.000Z ";
    put_digits(&mut out[0..4], y);
    put_digits(&mut out[5..7], m);
    put_digits(&mut out[8..10], d);
    put_digits(&mut out[11..13], hh);
    put_digits(&mut out[14..16], mm);
    put_digits(&mut out[17..19], ss);
    put_digits(&mut out[20..23], milli);
    out
}

/// Parses the 24-byte timestamp at the start of `bytes` (the prefix without its space).
pub fn parse_timestamp(bytes: &[u8]) -> Option<i64> {
    let b = bytes.get(..24)?;
    if b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[23] != b'Z'
    {
        return None;
    }
    let y = digits(&b[0..4])?;
    let m = digits(&b[5..7])?;
    let d = digits(&b[8..10])?;
    let hh = digits(&b[11..13])?;
    let mm = digits(&b[14..16])?;
    let ss = digits(&b[17..19])?;
    let milli = digits(&b[20..23])?;
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + milli)
}

fn put_digits(out: &mut [u8], mut v: i64) {
    for slot in out.iter_mut().rev() {
        // v is non-negative and fits: every field was clamped or computed in range.
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0')))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 → (year, month, day). Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month, day) → days since 1970-01-01. Howard Hinnant's `days_from_civil`.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(&format_prefix(0), b"1970-01-01T00:00:00.000Z ");
        assert_eq!(&format_prefix(1_795_593_600_123), b"2026-11-25T08:00:00.123Z ");
        assert_eq!(&format_prefix(951_782_400_000), b"2000-02-29T00:00:00.000Z ");
        assert_eq!(parse_timestamp(b"2026-11-25T08:00:00.123Z"), Some(1_795_593_600_123));
        assert_eq!(parse_timestamp(b"1969-12-31T23:59:59.999Z"), Some(-1));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            &b"2026-11-25T08:00:00.123"[..],
            b"2026-11-25 08:00:00.123Z",
            b"2026-13-25T08:00:00.123Z",
            b"2026-02-30T08:00:00.123Z",
            b"2026-11-25T24:00:00.123Z",
            b"2026-11-25T08:00:00.12xZ",
            b"",
        ] {
            assert_eq!(parse_timestamp(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    proptest::proptest! {
        #[test]
        fn round_trips_and_matches_the_time_crate(ms in -62_167_219_200_000i64..253_402_300_799_999) {
            let prefix = format_prefix(ms);
            proptest::prop_assert_eq!(parse_timestamp(&prefix), Some(ms));
            let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
            let expected = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z ",
                t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second(), t.millisecond()
            );
            proptest::prop_assert_eq!(std::str::from_utf8(&prefix).unwrap(), expected);
        }
    }
}
