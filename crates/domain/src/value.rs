//! Value types shared by every service: exact amounts, ISO codes, identifiers and time.

use std::{fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::{Error, Result};

/// A point in time, UTC, serialised as RFC 3339.
pub type Timestamp = time::OffsetDateTime;

/// An exact, non-negative quantity in minor units (cents, or a token's smallest unit).
///
/// In JSON it is a string of decimal digits, so no client ever parses it as a float.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(pub u128);

impl Amount {
    pub const ZERO: Amount = Amount(0);

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }

    pub fn saturating_sub(self, other: Amount) -> Amount {
        Amount(self.0.saturating_sub(other.0))
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a string is not an [`Amount`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "an amount is a string of decimal digits without sign, point or leading zeros, at most 2^128-1"
)]
pub struct AmountParseError;

impl FromStr for Amount {
    type Err = AmountParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits_only = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let canonical = s == "0" || !s.starts_with('0');
        if !digits_only || !canonical || s.len() > 39 {
            return Err(AmountParseError);
        }
        s.parse::<u128>().map(Amount).map_err(|_| AmountParseError)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(de::Error::custom)
    }
}

macro_rules! code_type {
    ($(#[$doc:meta])* $name:ident, $len:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; $len]);

        impl $name {
            pub fn as_str(&self) -> &str {
                // Only ASCII upper-case letters are ever stored.
                std::str::from_utf8(&self.0).unwrap_or_default()
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let bytes: [u8; $len] = s
                    .as_bytes()
                    .try_into()
                    .map_err(|_| format!("{} must be {} upper-case letters", $what, $len))?;
                if !bytes.iter().all(u8::is_ascii_uppercase) {
                    return Err(format!("{} must be {} upper-case letters", $what, $len));
                }
                Ok(Self(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(de::Error::custom)
            }
        }
    };
}

code_type!(
    /// An ISO 4217 currency code such as `EUR`.
    Currency, 3, "a currency (ISO 4217)"
);
code_type!(
    /// An ISO 3166-1 alpha-2 country code such as `DE`.
    Country, 2, "a country (ISO 3166-1 alpha-2)"
);

/// The 249 officially assigned ISO 3166-1 alpha-2 codes, sorted. User-assigned codes (`XX`,
/// `AA`, `QM`-`QZ`, `XA`-`XZ`, `ZZ`) and reserved ones name no country.
const ASSIGNED_COUNTRIES: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

impl Country {
    /// Whether ISO 3166-1 assigns this code to a country or territory.
    pub fn is_assigned(&self) -> bool {
        ASSIGNED_COUNTRIES.binary_search(&self.as_str()).is_ok()
    }
}

/// An identifier: cheap to clone, compared by value, printed as is.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Id(Arc<str>);

impl Id {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Id {
    fn from(value: &str) -> Self {
        Id(value.into())
    }
}

impl From<String> for Id {
    fn from(value: String) -> Self {
        Id(value.into())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for Id {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Id {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Checks that `value`, trimmed, has between 1 and `max` characters and no control characters.
pub fn bounded_text(field: &'static str, value: &str, max: usize) -> Result<String> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(Error::invalid(field, format!("{field} must not be empty")));
    }
    if trimmed.chars().count() > max {
        return Err(Error::invalid(
            field,
            format!("{field} must have at most {max} characters"),
        ));
    }
    if trimmed.chars().any(|c| c.is_control() && c != '\n') {
        return Err(Error::invalid(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    if trimmed.chars().any(is_bidi_control) {
        return Err(Error::invalid(
            field,
            format!("{field} must not contain bidirectional control characters (such as U+202E)"),
        ));
    }
    if trimmed
        .chars()
        .all(|c| c.is_whitespace() || is_invisible(c))
    {
        return Err(Error::invalid(
            field,
            format!("{field} must contain a visible character"),
        ));
    }
    Ok(trimmed.to_owned())
}

/// The characters that reorder text on display (Unicode's bidirectional embeddings, overrides,
/// isolates and marks): a name holding them can read as something else than it is.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Characters that show nothing: zero-width ones, joiners, the word joiner and invisible
/// operators, soft hyphen, byte-order mark, fillers and the blank Braille pattern.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200D}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
    ) || is_bidi_control(c)
}

/// Like [`bounded_text`], for an optional field: `None` and blank both mean absent.
pub fn optional_text(
    field: &'static str,
    value: Option<&str>,
    max: usize,
) -> Result<Option<String>> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => bounded_text(field, v, max).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_only_canonical_digit_strings() {
        assert_eq!("0".parse::<Amount>(), Ok(Amount(0)));
        assert_eq!("1050".parse::<Amount>(), Ok(Amount(1050)));
        assert_eq!(
            u128::MAX.to_string().parse::<Amount>(),
            Ok(Amount(u128::MAX))
        );
        for bad in [
            "",
            "-1",
            "+1",
            "01",
            "1.5",
            "1e3",
            " 1",
            "340282366920938463463374607431768211456",
        ] {
            assert!(bad.parse::<Amount>().is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn amounts_travel_as_json_strings() {
        let json = serde_json::to_string(&Amount(12345678901234567890123)).expect("serialise");
        assert_eq!(json, "\"12345678901234567890123\"");
        assert!(
            serde_json::from_str::<Amount>("12").is_err(),
            "a JSON number is refused"
        );
    }

    #[test]
    fn only_assigned_countries_are_countries() {
        for code in ["DE", "US", "FR", "AX", "ZW", "SS"] {
            assert!(
                code.parse::<Country>().expect("parses").is_assigned(),
                "{code}"
            );
        }
        for code in ["XX", "AA", "QZ", "XK", "ZZ", "UK", "EU"] {
            assert!(
                !code.parse::<Country>().expect("parses").is_assigned(),
                "{code}"
            );
        }
        assert_eq!(ASSIGNED_COUNTRIES.len(), 249);
        assert!(ASSIGNED_COUNTRIES.windows(2).all(|w| w[0] < w[1]), "sorted");
    }

    #[test]
    fn names_that_hide_or_reorder_their_text_are_refused() {
        assert_eq!(
            bounded_text("name", "  Alice Müller ", 50).as_deref(),
            Ok("Alice Müller")
        );
        assert_eq!(
            bounded_text("name", "مبنى ١٢٣", 50).as_deref(),
            Ok("مبنى ١٢٣")
        );
        for bad in [
            "evil\u{202E}fdp.exe",
            "a\u{2066}b",
            "\u{200B}\u{200B}",
            "\u{3164}",
            "\u{FEFF} \u{2800}",
        ] {
            let e = bounded_text("name", bad, 50).expect_err(bad);
            assert_eq!(e.field.as_deref(), Some("name"), "{bad:?}");
        }
    }

    #[test]
    fn codes_are_upper_case_letters_of_the_right_length() {
        assert_eq!(
            "EUR".parse::<Currency>().map(|c| c.to_string()),
            Ok("EUR".into())
        );
        assert!("eur".parse::<Currency>().is_err());
        assert!("EURO".parse::<Currency>().is_err());
        assert!("D1".parse::<Country>().is_err());
        assert_eq!(
            "DE".parse::<Country>().map(|c| c.to_string()),
            Ok("DE".into())
        );
    }

    #[test]
    fn bounded_text_trims_and_limits() {
        assert_eq!(bounded_text("name", "  a  ", 3), Ok("a".into()));
        assert!(bounded_text("name", "   ", 3).is_err());
        assert_eq!(
            bounded_text("name", "abcd", 3).map_err(|e| e.field),
            Err(Some("name".into()))
        );
    }
}
