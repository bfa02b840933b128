//! Exact money: integer cents inside, a JSON number with two decimals on the wire (`29.99`,
//! `10.00`). Floats never hold an amount, so totals add up to the cent.

use std::fmt;
use std::ops::{Add, AddAssign, Mul};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money {
    cents: i64,
}

impl Money {
    pub const ZERO: Money = Money { cents: 0 };

    pub const fn from_cents(cents: i64) -> Self {
        Self { cents }
    }

    pub const fn cents(self) -> i64 {
        self.cents
    }

    /// Parse `29.99`, `30`, `30.5` or `-1.25`; more than two decimals is an error, not a rounding.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let valid = !whole.is_empty()
            && whole.bytes().all(|b| b.is_ascii_digit())
            && fraction.len() <= 2
            && fraction.bytes().all(|b| b.is_ascii_digit())
            && !(digits.contains('.') && fraction.is_empty());
        if !valid {
            return Err(format!("{text:?} is not an amount with at most two decimals"));
        }
        let whole: i64 = whole.parse().map_err(|_| format!("{text:?} is too large"))?;
        let fraction: i64 = format!("{fraction:0<2}").parse().unwrap_or(0);
        let cents = whole
            .checked_mul(100)
            .and_then(|cents| cents.checked_add(fraction))
            .ok_or_else(|| format!("{text:?} is too large"))?;
        Ok(Self::from_cents(if negative { -cents } else { cents }))
    }

    pub fn checked_mul(self, quantity: i64) -> Option<Self> {
        self.cents.checked_mul(quantity).map(Self::from_cents)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.cents < 0 { "-" } else { "" };
        let cents = self.cents.unsigned_abs();
        write!(f, "{sign}{}.{:02}", cents / 100, cents % 100)
    }
}

impl Add for Money {
    type Output = Money;

    fn add(self, other: Money) -> Money {
        Money::from_cents(self.cents + other.cents)
    }
}

impl AddAssign for Money {
    fn add_assign(&mut self, other: Money) {
        self.cents += other.cents;
    }
}

impl Mul<i64> for Money {
    type Output = Money;

    fn mul(self, quantity: i64) -> Money {
        Money::from_cents(self.cents * quantity)
    }
}

impl std::iter::Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, Add::add)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match RawValue::from_string(self.to_string()) {
            Ok(raw) => raw.serialize(serializer),
            Err(_) => serializer.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let text = raw.get().trim();
        let text = text
            .strip_prefix('"')
            .and_then(|inner| inner.strip_suffix('"'))
            .unwrap_or(text);
        Money::parse(text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_decimals_on_the_wire() {
        let json = serde_json::to_string(&[
            Money::from_cents(2999),
            Money::from_cents(1000),
            Money::from_cents(5),
        ])
        .unwrap_or_default();
        assert_eq!(json, "[29.99,10.00,0.05]");
    }

    #[test]
    fn parses_exactly_or_refuses() {
        assert_eq!(Money::parse("29.99"), Ok(Money::from_cents(2999)));
        assert_eq!(Money::parse("30"), Ok(Money::from_cents(3000)));
        assert_eq!(Money::parse("30.5"), Ok(Money::from_cents(3050)));
        assert_eq!(Money::parse("-1.25"), Ok(Money::from_cents(-125)));
        assert!(Money::parse("1.999").is_err());
        assert!(Money::parse("1.").is_err());
        assert!(Money::parse("abc").is_err());
        assert!(Money::parse("1e3").is_err());
    }

    #[test]
    fn round_trips_through_json() {
        let parsed: Vec<Money> = serde_json::from_str(r#"[29.99, "10.00", 7]"#).unwrap_or_default();
        assert_eq!(
            parsed,
            vec![
                Money::from_cents(2999),
                Money::from_cents(1000),
                Money::from_cents(700)
            ]
        );
        // 0.1 + 0.2 in cents is exact.
        assert_eq!(
            Money::parse("0.1").map(|a| a + Money::from_cents(20)),
            Ok(Money::from_cents(30))
        );
    }
}
