//! Timestamps on the wire.
//!
//! Pure: nothing here reads the clock; "now" is always an argument. The one impure input is
//! the time zone used to read the original dialect's naive local times, which callers pass
//! in (`chrono::Local` in production, a fixed offset in tests).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDateTime, TimeZone};
use serde::{Deserialize, Serialize};

/// A file modification time (or any instant) with nanosecond precision, as seconds and
/// nanoseconds since the Unix epoch. Negative `secs` are instants before 1970.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "RawMTime")]
pub struct MTime {
    /// Whole seconds since 1970-01-01T00:00:00Z.
    pub secs: i64,
    /// Nanoseconds past `secs`, always below 1e9.
    pub nanos: u32,
}

/// An `MTime` as decoded, before its range is checked: a peer could send `nanos >= 1e9`,
/// which would compare unequal to the same instant written properly and make the quick
/// check resend a file on every sync.
#[derive(Deserialize)]
struct RawMTime {
    secs: i64,
    nanos: u32,
}

impl TryFrom<RawMTime> for MTime {
    type Error = String;
    fn try_from(r: RawMTime) -> Result<Self, String> {
        MTime::new(r.secs, r.nanos).ok_or_else(|| format!("nanos {} out of range", r.nanos))
    }
}

impl MTime {
    /// 1970-01-01T00:00:00Z: what a time that cannot be read is taken as.
    pub const EPOCH: MTime = MTime { secs: 0, nanos: 0 };

    /// Builds an `MTime`, refusing `nanos >= 1e9`.
    pub fn new(secs: i64, nanos: u32) -> Option<Self> {
        (nanos < 1_000_000_000).then_some(Self { secs, nanos })
    }

    /// Converts from a `SystemTime`; `None` only past the range of `i64` seconds.
    pub fn from_system(t: SystemTime) -> Option<Self> {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Some(Self {
                secs: i64::try_from(d.as_secs()).ok()?,
                nanos: d.subsec_nanos(),
            }),
            Err(e) => {
                let d = e.duration();
                let mut secs = -i64::try_from(d.as_secs()).ok()?;
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Some(Self { secs, nanos })
            }
        }
    }

    /// Converts to a `SystemTime`.
    pub fn to_system(self) -> SystemTime {
        if self.secs >= 0 {
            UNIX_EPOCH + Duration::new(self.secs.unsigned_abs(), self.nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(self.secs.unsigned_abs())
                + Duration::from_nanos(u64::from(self.nanos))
        }
    }

    /// Whether the two agree to the microsecond, the precision the original dialect keeps.
    pub fn same_micros(self, other: MTime) -> bool {
        self.secs == other.secs && self.nanos / 1000 == other.nanos / 1000
    }

    /// Whether the two differ by less than `window` (rsync's `--modify-window`): the
    /// test for a server filesystem that keeps coarser times than the client's. A window
    /// of 1 ns or less is exact equality.
    pub fn within(self, other: MTime, window: Duration) -> bool {
        let ns = |t: MTime| i128::from(t.secs) * 1_000_000_000 + i128::from(t.nanos);
        (ns(self) - ns(other)).unsigned_abs() < window.as_nanos().max(1)
    }

    /// This instant shifted by `d`, saturating.
    pub fn plus(self, d: Duration) -> MTime {
        let total = i128::from(self.secs) * 1_000_000_000
            + i128::from(self.nanos)
            + i128::try_from(d.as_nanos()).unwrap_or(i128::MAX / 2);
        let secs = total.div_euclid(1_000_000_000);
        MTime {
            secs: i64::try_from(secs).unwrap_or(i64::MAX),
            nanos: u32::try_from(total.rem_euclid(1_000_000_000)).unwrap_or(0),
        }
    }
}

impl fmt::Display for MTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.secs, self.nanos)
    }
}

/// The original dialect's timestamp: ISO 8601 *naive local time*,
/// `YYYY-MM-DDTHH:MM:SS` with `.ffffff` only when the microseconds are not zero, no offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeedTime(pub NaiveDateTime);

/// Why a seed timestamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid naive timestamp {0:?}: expected YYYY-MM-DDTHH:MM:SS[.ffffff] without offset")]
pub struct TimeError(pub String);

impl SeedTime {
    /// Parses the original's format. Offsets (`Z`, `+00:00`) are refused: the original
    /// never sends them and its client fails on them, so accepting them would hide a bug.
    pub fn parse(s: &str) -> Result<Self, TimeError> {
        let err = || TimeError(s.to_owned());
        // Python's isoformat() prints 6 digits; fromisoformat() also accepts 3. Anything
        // with a zone suffix falls through to the error.
        for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S"] {
            if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
                // The dialect keeps microseconds; finer digits would make two spellings
                // of one timestamp compare unequal.
                use chrono::Timelike;
                let t = t.with_nanosecond(t.nanosecond() / 1000 * 1000).unwrap_or(t);
                return Ok(Self(t));
            }
        }
        Err(err())
    }

    /// Reads a naive local time in zone `tz`. An ambiguous time (the hour repeated when
    /// clocks go back) takes the earlier instant; a time skipped when clocks go forward
    /// is read as if the clocks had not changed yet, as Python's `timestamp()` does.
    pub fn to_mtime<Tz: TimeZone>(self, tz: &Tz) -> MTime {
        let dt = match tz.from_local_datetime(&self.0) {
            chrono::LocalResult::Single(t) => t.with_timezone(&chrono::Utc),
            chrono::LocalResult::Ambiguous(a, _) => a.with_timezone(&chrono::Utc),
            chrono::LocalResult::None => {
                let shifted = self.0 + chrono::Duration::hours(1);
                tz.from_local_datetime(&shifted)
                    .earliest()
                    .map(|t| t.with_timezone(&chrono::Utc) - chrono::Duration::hours(1))
                    .unwrap_or_else(|| self.0.and_utc())
            }
        };
        MTime {
            secs: dt.timestamp(),
            nanos: dt.timestamp_subsec_nanos(),
        }
    }

    /// The naive local time of `t` in zone `tz`, truncated to microseconds.
    pub fn from_mtime<Tz: TimeZone>(t: MTime, tz: &Tz) -> Self {
        let utc = DateTime::from_timestamp(t.secs, t.nanos / 1000 * 1000).unwrap_or_default();
        Self(utc.with_timezone(tz).naive_local())
    }
}

impl fmt::Display for SeedTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use chrono::Timelike;
        let micros = self.0.nanosecond() / 1000;
        write!(f, "{}", self.0.format("%Y-%m-%dT%H:%M:%S"))?;
        if micros != 0 {
            write!(f, ".{micros:06}")?;
        }
        Ok(())
    }
}

impl Serialize for SeedTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SeedTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        SeedTime::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;

    #[test]
    fn seed_format_prints_micros_only_when_nonzero() {
        let t = SeedTime::parse("2025-05-06T14:23:00.123456").unwrap();
        assert_eq!(t.to_string(), "2025-05-06T14:23:00.123456");
        let t = SeedTime::parse("2025-05-06T14:23:00").unwrap();
        assert_eq!(t.to_string(), "2025-05-06T14:23:00");
        let t = SeedTime::parse("2025-05-06T14:23:00.000000").unwrap();
        assert_eq!(t.to_string(), "2025-05-06T14:23:00");
        let t = SeedTime::parse("2025-05-06T14:23:00.000001").unwrap();
        assert_eq!(t.to_string(), "2025-05-06T14:23:00.000001");
    }

    #[test]
    fn seed_format_refuses_offsets_and_junk() {
        for bad in [
            "2025-05-06T14:23:00Z",
            "2025-05-06T14:23:00+00:00",
            "2025-05-06T14:23:00.123456+02:00",
            "2025-05-06 14:23:00x",
            "yesterday",
            "",
        ] {
            assert!(SeedTime::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn naive_time_is_read_in_the_given_zone() {
        let t = SeedTime::parse("2025-05-06T14:23:00.5").unwrap();
        let utc = t.to_mtime(&chrono::Utc);
        let cet = t.to_mtime(&FixedOffset::east_opt(2 * 3600).unwrap());
        assert_eq!(utc.secs - cet.secs, 2 * 3600);
        assert_eq!(cet.nanos, 500_000_000);
        let back = SeedTime::from_mtime(cet, &FixedOffset::east_opt(2 * 3600).unwrap());
        assert_eq!(back, t);
    }

    #[test]
    fn within_a_window() {
        let t = |s, n| MTime::new(s, n).unwrap();
        let exact = Duration::from_nanos(1);
        assert!(t(5, 7).within(t(5, 7), exact));
        assert!(!t(5, 7).within(t(5, 8), exact));
        assert!(
            !t(5, 7).within(t(5, 8), Duration::ZERO),
            "zero is exact too"
        );
        let sec = Duration::from_secs(1);
        assert!(t(10, 700_000_000).within(t(10, 0), sec), "truncated");
        assert!(!t(10, 0).within(t(11, 0), sec));
        let fat = Duration::from_secs(2);
        assert!(t(11, 500_000_000).within(t(10, 0), fat), "rounded down");
        assert!(t(11, 500_000_000).within(t(12, 0), fat), "rounded up");
        assert!(!t(9, 0).within(t(12, 0), fat));
        assert!(t(-1, 999_999_999).within(t(0, 0), sec), "across the epoch");
    }

    #[test]
    fn mtime_system_round_trip() {
        for (s, n) in [
            (0, 0),
            (1_700_000_000, 123_456_789),
            (-1, 999_999_999),
            (-5, 1),
        ] {
            let m = MTime::new(s, n).unwrap();
            assert_eq!(MTime::from_system(m.to_system()).unwrap(), m);
        }
        assert!(MTime::new(0, 1_000_000_000).is_none());
        let m = MTime::new(10, 900_000_000).unwrap();
        assert_eq!(
            m.plus(Duration::from_millis(200)),
            MTime::new(11, 100_000_000).unwrap()
        );
    }
}
