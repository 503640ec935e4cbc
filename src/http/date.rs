//! The `Date` field of the gateway's own answers (RFC 9110 §6.6.1, IMF-fixdate), formatted at
//! most once per second per thread: a shard copies 37 cached bytes per answer.

use std::cell::Cell;

thread_local! {
    static CACHED: Cell<(u64, [u8; 37])> = const { Cell::new((u64::MAX, [0; 37])) };
}

/// Appends `date: Tue, 01 Dec 2026 11:30:35 GMT\r\n` for the current second.
pub fn push_date(out: &mut Vec<u8>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let line = CACHED.with(|cached| {
        let (second, line) = cached.get();
        if second == now {
            return line;
        }
        let line = date_line(now);
        cached.set((now, line));
        line
    });
    out.extend_from_slice(&line);
}

/// `date: <IMF-fixdate>\r\n` for `unix` seconds.
fn date_line(unix: u64) -> [u8; 37] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    let mut out = [0u8; 37];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    let two = |n: u64| [b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8];
    put(b"date: ");
    put(DAYS[(days % 7) as usize]);
    put(b", ");
    put(&two(day));
    put(b" ");
    put(MONTHS[(month - 1) as usize]);
    put(b" ");
    put(&two(year / 100));
    put(&two(year));
    put(b" ");
    put(&two(secs / 3600));
    put(b":");
    put(&two(secs / 60 % 60));
    put(b":");
    put(&two(secs % 60));
    put(b" GMT\r\n");
    out
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (u64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year as u64, month as u64, day as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imf_fixdate() {
        let line = |unix| String::from_utf8(date_line(unix).to_vec()).unwrap();
        assert_eq!(line(0), "date: Thu, 01 Jan 1970 00:00:00 GMT\r\n");
        assert_eq!(line(784_111_777), "date: Sun, 06 Nov 1994 08:49:37 GMT\r\n");
        assert_eq!(
            line(1_795_865_435),
            "date: Sat, 28 Nov 2026 11:30:35 GMT\r\n"
        );
        assert_eq!(line(951_782_400), "date: Tue, 29 Feb 2000 00:00:00 GMT\r\n");
        let mut out = Vec::new();
        push_date(&mut out);
        push_date(&mut out);
        assert_eq!(out.len(), 74);
    }
}
