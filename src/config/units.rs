//! Quantities with units: rates ("100mbit") and durations ("300ms").
//!
//! Both parsers are exact: the number is read as a decimal mantissa and scale, never as
//! a float, so "0.1gbit" is exactly 100 000 000 bit/s and "1.1s" exactly 1.1 s.
//!
//! Durations use this small parser rather than humantime: humantime accepts a much
//! wider grammar ("1h 30m", "2months", "1y" of 365.25 days) that we would then have to
//! document and support, its errors do not name what was expected, and the config
//! only needs ms/s/m/h.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use thiserror::Error;

use super::values::deserialize_parsed;

/// What was being parsed, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantity {
    Rate,
    Duration,
    Size,
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Quantity::Rate => "rate",
            Quantity::Duration => "duration",
            Quantity::Size => "size",
        })
    }
}

/// A rate or duration that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {quantity} {input:?}: {problem}")]
pub struct UnitError {
    pub quantity: Quantity,
    pub input: String,
    pub problem: UnitProblem,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnitProblem {
    #[error("expected a number followed by a unit, e.g. {example:?}")]
    NotANumber { example: &'static str },
    #[error("missing unit; use {units}")]
    MissingUnit { units: &'static str },
    #[error("unknown unit {unit:?}; use {units}")]
    UnknownUnit { unit: String, units: &'static str },
    #[error("must be greater than zero")]
    Zero,
    #[error("finer than {resolution}")]
    TooPrecise { resolution: &'static str },
    #[error("too large")]
    TooLarge,
}

const RATE_UNITS: &str = "bit, kbit, mbit, gbit, tbit (bits per second) \
     or bps, kbps, mbps, gbps, tbps (bytes per second)";

/// Rate units as tc spells them, lowercase, with their value in bit/s. As in tc, the
/// `bps` family means *bytes* per second; the IEC forms (kibit, ...) are binary.
const RATE_TABLE: &[(&str, u128)] = &[
    ("bit", 1),
    ("kbit", 1_000),
    ("mbit", 1_000_000),
    ("gbit", 1_000_000_000),
    ("tbit", 1_000_000_000_000),
    ("kibit", 1 << 10),
    ("mibit", 1 << 20),
    ("gibit", 1 << 30),
    ("tibit", 1 << 40),
    ("bps", 8),
    ("kbps", 8_000),
    ("mbps", 8_000_000),
    ("gbps", 8_000_000_000),
    ("tbps", 8_000_000_000_000),
    ("kibps", 8 << 10),
    ("mibps", 8 << 20),
    ("gibps", 8 << 30),
    ("tibps", 8 << 40),
];

const DURATION_UNITS: &str = "ms, s, m or h";

/// Duration units in nanoseconds.
const DURATION_TABLE: &[(&str, u128)] = &[
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// A bandwidth in bits per second; never zero (a zero shaping rate would stop all
/// traffic, which is never what a config means).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rate(u64);

impl Rate {
    /// `None` for zero.
    pub fn from_bits_per_sec(bits: u64) -> Option<Rate> {
        (bits > 0).then_some(Rate(bits))
    }

    pub fn bits_per_sec(self) -> u64 {
        self.0
    }

    /// Bytes per second, rounded up so a rate never becomes zero (netlink's HTB and
    /// TBF parameters are in bytes).
    pub fn bytes_per_sec(self) -> u64 {
        self.0.div_ceil(8)
    }
}

impl FromStr for Rate {
    type Err = UnitError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |problem| UnitError {
            quantity: Quantity::Rate,
            input: input.to_owned(),
            problem,
        };
        let bits =
            parse_quantity(input, RATE_TABLE, RATE_UNITS, "100mbit", "1 bit/s").map_err(error)?;
        let bits = u64::try_from(bits).map_err(|_| error(UnitProblem::TooLarge))?;
        Rate::from_bits_per_sec(bits).ok_or_else(|| error(UnitProblem::Zero))
    }
}

/// The largest decimal bit unit that represents the rate exactly: "100mbit".
impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, scale) = [
            ("tbit", 1_000_000_000_000),
            ("gbit", 1_000_000_000),
            ("mbit", 1_000_000),
            ("kbit", 1_000),
        ]
        .into_iter()
        .find(|(_, scale)| self.0.is_multiple_of(*scale))
        .unwrap_or(("bit", 1));
        write!(f, "{}{unit}", self.0 / scale)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_parsed(
            deserializer,
            "a rate with a unit, like \"100mbit\"",
            Rate::from_str,
        )
    }
}

/// Parses "300ms", "1s", "1.5s", "5m", "1h". Zero is allowed here; each option says
/// what range it accepts during validation.
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let error = |problem| UnitError {
        quantity: Quantity::Duration,
        input: input.to_owned(),
        problem,
    };
    let nanos =
        parse_quantity(input, DURATION_TABLE, DURATION_UNITS, "300ms", "1ns").map_err(error)?;
    let nanos = u64::try_from(nanos).map_err(|_| error(UnitProblem::TooLarge))?;
    Ok(Duration::from_nanos(nanos))
}

/// The largest unit that represents the duration exactly: "300ms", "1h", "90s".
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    match DURATION_TABLE
        .iter()
        .rev()
        .find(|(_, scale)| nanos.is_multiple_of(*scale))
    {
        Some((unit, scale)) => format!("{}{unit}", nanos / scale),
        None => format!("{}ns", nanos),
    }
}

/// For `#[serde(deserialize_with)]` on `Duration` fields.
pub(crate) fn de_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    deserialize_parsed(
        deserializer,
        "a duration with a unit, like \"300ms\"",
        parse_duration,
    )
}

const SIZE_UNITS: &str = "B, KB, MB, GB, TB (decimal) or KiB, MiB, GiB, TiB (binary)";

/// Size units in bytes (matched lowercase).
const SIZE_TABLE: &[(&str, u128)] = &[
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

/// An amount of data in bytes ("20MB", "1.5GiB"); never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

impl ByteSize {
    pub fn from_bytes(bytes: u64) -> Option<ByteSize> {
        (bytes > 0).then_some(ByteSize(bytes))
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |problem| UnitError { quantity: Quantity::Size, input: input.to_owned(), problem };
        let bytes = parse_quantity(input, SIZE_TABLE, SIZE_UNITS, "20MB", "1 byte").map_err(error)?;
        let bytes = u64::try_from(bytes).map_err(|_| error(UnitProblem::TooLarge))?;
        ByteSize::from_bytes(bytes).ok_or_else(|| error(UnitProblem::Zero))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, scale) = [("TB", 1_000_000_000_000), ("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1_000)]
            .into_iter()
            .find(|(_, scale)| self.0.is_multiple_of(*scale))
            .unwrap_or(("B", 1));
        write!(f, "{}{unit}", self.0 / scale)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_parsed(deserializer, "a size with a unit, like \"20MB\"", ByteSize::from_str)
    }
}

/// Shared grammar: NUMBER [spaces] UNIT, NUMBER = DIGITS [ "." DIGITS ], unit
/// case-insensitive. Returns the value in the table's base unit, exactly.
fn parse_quantity(
    input: &str,
    table: &[(&str, u128)],
    units: &'static str,
    example: &'static str,
    resolution: &'static str,
) -> Result<u128, UnitProblem> {
    let split = input
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(input.len());
    let (number, unit) = input.split_at(split);
    let (mantissa, scale) = parse_decimal(number).ok_or(UnitProblem::NotANumber { example })?;
    let unit = unit.trim_start().to_ascii_lowercase();
    if unit.is_empty() {
        return Err(UnitProblem::MissingUnit { units });
    }
    let (_, multiplier) = table
        .iter()
        .find(|(name, _)| *name == unit)
        .ok_or(UnitProblem::UnknownUnit { unit, units })?;
    let scaled = mantissa
        .checked_mul(*multiplier)
        .ok_or(UnitProblem::TooLarge)?;
    let divisor = 10u128.pow(scale);
    if !scaled.is_multiple_of(divisor) {
        return Err(UnitProblem::TooPrecise { resolution });
    }
    Ok(scaled / divisor)
}

/// "1.50" → Some((15, 1)): mantissa and number of decimals, trailing zeros dropped.
/// `None` unless the text is DIGITS or DIGITS.DIGITS. Numbers too long for u128 are
/// treated as not-a-number; no real rate or duration comes near.
fn parse_decimal(number: &str) -> Option<(u128, u32)> {
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || (number.contains('.') && !digits(frac)) {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    // 10^scale must fit a u128 alongside the mantissa.
    if frac.len() > 30 {
        return None;
    }
    let mut mantissa: u128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        mantissa = mantissa
            .checked_mul(10)?
            .checked_add(u128::from(b - b'0'))?;
    }
    Some((mantissa, frac.len() as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_exactly_in_decimal_and_binary_units() {
        assert_eq!("20MB".parse::<ByteSize>().map(ByteSize::bytes), Ok(20_000_000));
        assert_eq!("1.5KiB".parse::<ByteSize>().map(ByteSize::bytes), Ok(1536));
        assert_eq!("20mb".parse::<ByteSize>().map(|b| b.to_string()), Ok("20MB".into()));
        assert!("0MB".parse::<ByteSize>().is_err());
        assert!("20".parse::<ByteSize>().is_err());
        assert!("20mbit".parse::<ByteSize>().is_err());
    }

    #[track_caller]
    fn rate(input: &str) -> u64 {
        match input.parse::<Rate>() {
            Ok(rate) => rate.bits_per_sec(),
            Err(e) => panic!("expected {input:?} to parse as a rate, got error: {e}"),
        }
    }

    #[track_caller]
    fn rate_error(input: &str) -> String {
        match input.parse::<Rate>() {
            Ok(rate) => panic!("expected {input:?} to be refused, parsed as {rate:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn rates_in_bits_and_bytes_per_second() {
        assert_eq!(rate("100mbit"), 100_000_000);
        assert_eq!(rate("100Mbit"), 100_000_000);
        assert_eq!(rate("100MBIT"), 100_000_000);
        assert_eq!(rate("1.5gbit"), 1_500_000_000);
        assert_eq!(rate("0.1gbit"), 100_000_000);
        assert_eq!(rate("64kbit"), 64_000);
        assert_eq!(rate("1bit"), 1);
        assert_eq!(rate("2tbit"), 2_000_000_000_000);
        assert_eq!(rate("1kibit"), 1024);
        // tc's bps family is bytes per second.
        assert_eq!(rate("1bps"), 8);
        assert_eq!(rate("10kbps"), 80_000);
        assert_eq!(rate("12.5mbps"), 100_000_000);
        assert_eq!(rate("1gbps"), 8_000_000_000);
        assert_eq!(rate("100 mbit"), 100_000_000);
        assert_eq!(rate("1.50kbit"), 1_500);
    }

    #[test]
    fn rates_refused_with_a_reason() {
        assert_eq!(
            rate_error("0mbit"),
            "invalid rate \"0mbit\": must be greater than zero"
        );
        assert_eq!(
            rate_error("0.0kbit"),
            "invalid rate \"0.0kbit\": must be greater than zero"
        );
        assert!(
            rate_error("100").contains("missing unit; use bit, kbit"),
            "{}",
            rate_error("100")
        );
        assert!(rate_error("100mbits").contains("unknown unit \"mbits\""));
        assert!(
            rate_error("fast").contains("expected a number followed by a unit, e.g. \"100mbit\"")
        );
        assert!(rate_error("-5mbit").contains("expected a number"));
        assert!(rate_error("1.mbit").contains("expected a number"));
        assert!(rate_error(".5mbit").contains("expected a number"));
        assert!(rate_error("1.2.3mbit").contains("expected a number"));
        assert_eq!(
            rate_error("0.5bit"),
            "invalid rate \"0.5bit\": finer than 1 bit/s"
        );
        assert_eq!(
            rate_error("20000000tbit"),
            "invalid rate \"20000000tbit\": too large"
        );
        assert!(rate_error("").contains("expected a number"));
    }

    #[test]
    fn rate_display_and_bytes() {
        assert_eq!("100mbit".parse::<Rate>().unwrap().to_string(), "100mbit");
        assert_eq!("1.5gbit".parse::<Rate>().unwrap().to_string(), "1500mbit");
        assert_eq!("1bps".parse::<Rate>().unwrap().to_string(), "8bit");
        assert_eq!("1bit".parse::<Rate>().unwrap().bytes_per_sec(), 1);
        assert_eq!("1kbps".parse::<Rate>().unwrap().bytes_per_sec(), 1000);
        assert_eq!(Rate::from_bits_per_sec(0), None);
    }

    #[track_caller]
    fn duration(input: &str) -> Duration {
        parse_duration(input).unwrap_or_else(|e| panic!("expected {input:?} to parse: {e}"))
    }

    #[test]
    fn durations() {
        assert_eq!(duration("300ms"), Duration::from_millis(300));
        assert_eq!(duration("1s"), Duration::from_secs(1));
        assert_eq!(duration("1.5s"), Duration::from_millis(1500));
        assert_eq!(duration("1.1s"), Duration::from_millis(1100));
        assert_eq!(duration("5m"), Duration::from_secs(300));
        assert_eq!(duration("1h"), Duration::from_secs(3600));
        assert_eq!(duration("0.5ms"), Duration::from_micros(500));
        assert_eq!(duration("10MS"), Duration::from_millis(10));
        assert_eq!(duration("0s"), Duration::ZERO);
    }

    #[test]
    fn durations_refused_with_a_reason() {
        let error = |input: &str| match parse_duration(input) {
            Ok(d) => panic!("expected {input:?} to be refused, parsed as {d:?}"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            error("300"),
            "invalid duration \"300\": missing unit; use ms, s, m or h"
        );
        assert_eq!(
            error("3d"),
            "invalid duration \"3d\": unknown unit \"d\"; use ms, s, m or h"
        );
        assert_eq!(
            error("soon"),
            "invalid duration \"soon\": expected a number followed by a unit, e.g. \"300ms\""
        );
        assert_eq!(
            error("0.0000000001s"),
            "invalid duration \"0.0000000001s\": finer than 1ns"
        );
        assert_eq!(
            error("99999999999h"),
            "invalid duration \"99999999999h\": too large"
        );
    }

    #[test]
    fn duration_display() {
        assert_eq!(format_duration(Duration::from_millis(300)), "300ms");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_nanos(1500)), "1500ns");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
