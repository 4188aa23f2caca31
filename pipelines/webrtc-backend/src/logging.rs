//! One line per event on stderr: `2025-01-31T12:00:00.123Z INFO  message`.
//! `RUST_LOG` filters as usual; the default level is `info`.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn init() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, record| {
            let ts = utc_millis(SystemTime::now());
            if record.target().starts_with(env!("CARGO_CRATE_NAME")) {
                writeln!(buf, "{ts} {:<5} {}", record.level(), record.args())
            } else {
                writeln!(
                    buf,
                    "{ts} {:<5} [{}] {}",
                    record.level(),
                    record.target(),
                    record.args()
                )
            }
        })
        .init();
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` in UTC.
pub fn utc_millis(t: SystemTime) -> String {
    let ms = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    };
    let secs = ms.div_euclid(1000);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        ms.rem_euclid(1000)
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        assert_eq!(utc_millis(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2024-02-29T23:59:59.987Z: a leap day.
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_987);
        assert_eq!(utc_millis(t), "2024-02-29T23:59:59.987Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_millis(t), "2000-02-29T00:00:00.000Z");
    }
}
