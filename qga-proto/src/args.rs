//! Typed extraction of command arguments with the reference agent's error texts
//! (QAPI input visitor semantics: explicit `null` is not "absent", floats are not
//! integers, int64 only).

use serde_json::value::RawValue;

use crate::json::BorrowedStr;
use crate::{ArgumentError, Base64, Base64Text};

/// A type that a command argument member can hold, read from raw JSON with qemu-ga's
/// validation texts. Implemented for the member types of the QGA schema.
pub trait ArgType: Sized {
    /// Reads the member `name` from its raw JSON text.
    fn from_raw(name: &str, raw: &RawValue) -> Result<Self, ArgumentError>;
}

pub(crate) fn invalid_type(name: &str, expected: &'static str) -> ArgumentError {
    ArgumentError::InvalidType {
        name: name.to_owned(),
        expected,
    }
}

/// Is this raw JSON a number token without fraction or exponent?
fn is_integer_token(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

impl ArgType for i64 {
    fn from_raw(name: &str, raw: &RawValue) -> Result<Self, ArgumentError> {
        int_from_text(name, raw.get())
    }
}

/// [`i64::from_raw`] over the raw JSON text of a value.
pub(crate) fn int_from_text(name: &str, text: &str) -> Result<i64, ArgumentError> {
    {
        if !is_integer_token(text) {
            return Err(invalid_type(name, "integer"));
        }
        // Out-of-range integers (the reference turns them into doubles) are type errors.
        text.parse::<i64>()
            .map_err(|_| invalid_type(name, "integer"))
    }
}

impl ArgType for bool {
    fn from_raw(name: &str, raw: &RawValue) -> Result<Self, ArgumentError> {
        match raw.get() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(invalid_type(name, "boolean")),
        }
    }
}

impl ArgType for String {
    fn from_raw(name: &str, raw: &RawValue) -> Result<Self, ArgumentError> {
        if !raw.get().starts_with('"') {
            return Err(invalid_type(name, "string"));
        }
        let s: BorrowedStr<'_> =
            serde_json::from_str(raw.get()).map_err(|_| invalid_type(name, "string"))?;
        Ok(s.0.into_owned())
    }
}

impl<T: ArgType> ArgType for Vec<T> {
    fn from_raw(name: &str, raw: &RawValue) -> Result<Self, ArgumentError> {
        if !raw.get().starts_with('[') {
            return Err(invalid_type(name, "array"));
        }
        let items: Vec<&RawValue> =
            serde_json::from_str(raw.get()).map_err(|_| invalid_type(name, "array"))?;
        items
            .iter()
            .enumerate()
            .map(|(i, item)| T::from_raw(&format!("{name}[{i}]"), item))
            .collect()
    }
}

/// QAPI `uint64`: any integer in the uint64 range, and, as qemu-ga accepts for
/// backward compatibility, a negative int64 taken modulo 2^64 (`-1` is
/// 18446744073709551615). Anything else: `Parameter 'x' expects uint64`.
impl ArgType for u64 {
    fn from_raw(name: &str, raw: &RawValue) -> Result<Self, ArgumentError> {
        let text = raw.get();
        let expects = || ArgumentError::Expects {
            name: name.to_owned(),
            expected: "uint64",
        };
        if !is_integer_token(text) {
            return Err(expects());
        }
        match text.parse::<u64>() {
            Ok(v) => Ok(v),
            Err(_) => text.parse::<i64>().map(|v| v as u64).map_err(|_| expects()),
        }
    }
}

impl ArgType for Base64 {
    fn from_raw(name: &str, raw: &RawValue) -> Result<Self, ArgumentError> {
        base64_text(name, raw.get()).map(|t| Base64(t.into_vec()))
    }
}

/// The base64 payload of member `name`, checked but not decoded: borrowed from the
/// request when the string has no escapes (base64 never needs any), so the payload
/// is not scanned again as JSON (the raw value is valid JSON already).
pub(crate) fn base64_text<'a>(name: &str, text: &'a str) -> Result<Base64Text<'a>, ArgumentError> {
    if !text.starts_with('"') {
        return Err(invalid_type(name, "string"));
    }
    if memchr::memchr(b'\\', text.as_bytes()).is_none() {
        // A valid JSON string without escapes: its contents are between the quotes.
        return Base64Text::parse(&text[1..text.len() - 1]);
    }
    let s: BorrowedStr<'_> =
        serde_json::from_str(text).map_err(|_| invalid_type(name, "string"))?;
    Base64Text::parse(&s.0).map(|t| Base64Text::decoded(t.into_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn integers_are_strict_int64() {
        assert_eq!(i64::from_raw("id", &raw("-42")), Ok(-42));
        assert_eq!(
            i64::from_raw("id", &raw("9223372036854775807")),
            Ok(i64::MAX)
        );
        for bad in [
            "1.0",
            "1e3",
            "9223372036854775808",
            "\"1\"",
            "null",
            "true",
            "[]",
        ] {
            let err = i64::from_raw("id", &raw(bad)).unwrap_err();
            assert_eq!(
                err.to_string(),
                "Invalid parameter type for 'id', expected: integer",
                "{bad}"
            );
        }
    }

    #[test]
    fn list_elements_name_their_index() {
        let err = Vec::<String>::from_raw("mountpoints", &raw(r#"["/a", 1]"#)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid parameter type for 'mountpoints[1]', expected: string"
        );
        assert_eq!(
            Vec::<String>::from_raw("m", &raw(r#"["/a\u00e9"]"#)).unwrap(),
            vec!["/a\u{e9}".to_owned()]
        );
        assert_eq!(
            Vec::<String>::from_raw("m", &raw("null"))
                .unwrap_err()
                .to_string(),
            "Invalid parameter type for 'm', expected: array"
        );
    }
}
