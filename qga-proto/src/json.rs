//! Low-level JSON helpers: an object's members kept raw (borrowed) with duplicate
//! detection, qemu-ga's member iteration order, and serde_json error texts mapped to
//! the reference's `JSON parse error, ...` words.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// A string that borrows from the input when it holds no escapes.
pub(crate) struct BorrowedStr<'a>(pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for BorrowedStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BorrowedStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(BorrowedStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Marker text used to smuggle "duplicate key" through serde_json's error type.
const DUPLICATE_KEY: &str = "qga-proto: duplicate key";

/// A top-level JSON value seen as qemu-ga sees it: either an object whose members are
/// kept raw (in input order), or something else.
pub(crate) enum TopLevel<'a> {
    Object(Members<'a>),
    NotObject,
}

/// An object's members in input order, each value still raw JSON text.
pub(crate) struct Members<'a>(pub(crate) Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    /// Parses `text`, which must be one JSON object, into its raw members.
    pub(crate) fn parse_object(text: &'a str) -> Result<Self, String> {
        match parse_top_level(text)? {
            TopLevel::Object(m) => Ok(m),
            TopLevel::NotObject => Err("expecting value".to_owned()),
        }
    }

    /// The raw value of member `name`, if present.
    pub(crate) fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
    }

    /// Member names in the order qemu-ga iterates its dictionaries (see [`qdict_order`]).
    pub(crate) fn names_in_qdict_order(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.0.iter().map(|(k, _)| k.as_ref()).collect();
        qdict_order(&mut names);
        names
    }

    /// Member names in the order qemu-ga's argument visitor reports leftovers in.
    pub(crate) fn names_in_visitor_order(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.0.iter().map(|(k, _)| k.as_ref()).collect();
        ghash_order(&mut names);
        names
    }
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = TopLevel<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members: Vec<(Cow<'de, str>, &'de RawValue)> = Vec::new();
        while let Some(BorrowedStr(key)) = map.next_key::<BorrowedStr<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            if members.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(DUPLICATE_KEY));
            }
            members.push((key, value));
        }
        Ok(TopLevel::Object(Members(members)))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(TopLevel::NotObject)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(TopLevel::NotObject)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(TopLevel::NotObject)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(TopLevel::NotObject)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(TopLevel::NotObject)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(TopLevel::NotObject)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(TopLevel::NotObject)
    }
}

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MembersVisitor)
    }
}

/// Parses one complete JSON value. Errors come back as the reference's words (the part
/// after `JSON parse error, `).
pub(crate) fn parse_top_level(text: &str) -> Result<TopLevel<'_>, String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let top = TopLevel::deserialize(&mut de).map_err(|e| parse_error_text(&e))?;
    de.end().map_err(|e| parse_error_text(&e))?;
    Ok(top)
}

/// Maps a serde_json error to the reference's `JSON parse error, <what>` suffix.
pub(crate) fn parse_error_text(e: &serde_json::Error) -> String {
    let full = e.to_string();
    // serde_json appends " at line L column C"; the reference has no positions.
    let msg = match full.rfind(" at line ") {
        Some(i) => &full[..i],
        None => &full,
    };
    if msg == DUPLICATE_KEY {
        return "duplicate key".to_owned();
    }
    let mapped = match msg {
        "expected value" | "EOF while parsing a value" => "expecting value",
        "expected `:`" => "missing : in object pair",
        "key must be a string" => "key is not a string in object",
        "expected `,` or `}`" | "EOF while parsing an object" => "expected separator in dict",
        "expected `,` or `]`" | "EOF while parsing a list" => "expected separator in list",
        "invalid escape" => "invalid escape sequence in string",
        "expected ident" => "invalid keyword",
        "invalid unicode code point" | "lone leading surrogate in hex escape" => {
            "invalid \\uXXXX escape in string"
        }
        "trailing characters" | "trailing comma" => "expecting value",
        "EOF while parsing a string" => "premature EOI",
        _ if msg.starts_with("control character") => "control character in string",
        _ => msg,
    };
    mapped.to_owned()
}

/// Sorts dictionary keys into the order qemu-ga (7.2) iterates a parsed object:
/// its QDict is a 512-bucket hash table walked from bucket 0 to 511, newest entry
/// first within a bucket. `names` must be in input (insertion) order.
///
/// The reference agent checks request members in this order, so when several members
/// are wrong this decides which error it reports; we report the same one.
pub fn qdict_order(names: &mut [&str]) {
    // Stable sort by bucket; reverse first so that, within a bucket, later insertions
    // come first.
    names.reverse();
    names.sort_by_key(|k| qdict_bucket(k));
}

/// Sorts an argument object's member names into the order qemu-ga's QAPI input
/// visitor reports leftovers in: a GLib hash table (`g_str_hash`, open addressing)
/// filled in [`qdict_order`]. `names` must be in input order. Only the first
/// unexpected member is reported, so this decides which one.
pub(crate) fn ghash_order(names: &mut Vec<&str>) {
    qdict_order(names);
    const PRIMES: [u32; 12] = [1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039];
    let mut shift = 3u32;
    // GLib grows the table when it is almost full; size it the way it would end up.
    while (1usize << shift) <= names.len() + names.len() / 16 {
        shift += 1;
    }
    let shift = shift as usize;
    if shift >= PRIMES.len() {
        // Thousands of members: keep the dictionary order rather than model GLib's
        // larger tables. Only which leftover is named first could differ.
        return;
    }
    let (size, modulus) = (1usize << shift, PRIMES[shift]);
    // Triangular probing over a power-of-two table visits every slot, and the table
    // always has a free one, so each insertion ends.
    let mut slots: Vec<Option<&str>> = vec![None; size];
    for name in names.iter() {
        let mut h: u32 = 5381;
        for &b in name.as_bytes() {
            // g_str_hash works on (signed) chars.
            h = (h << 5).wrapping_add(h).wrapping_add(b as i8 as i32 as u32);
        }
        let h = h.max(2);
        let mut index = (h % modulus) as usize;
        let mut step = 0;
        while slots[index].is_some() {
            step += 1;
            index = (index + step) & (size - 1);
        }
        slots[index] = Some(name);
    }
    *names = slots.into_iter().flatten().collect();
}

/// The bucket (0..512) QEMU's QDict puts `key` in.
pub fn qdict_bucket(key: &str) -> u32 {
    let bytes = key.as_bytes();
    let mut value: u32 = 0x238F_13AFu32.wrapping_mul(bytes.len() as u32);
    for (i, &b) in bytes.iter().enumerate() {
        value = value.wrapping_add(u32::from(b) << ((i * 5) % 24));
    }
    (1_103_515_243u32.wrapping_mul(value).wrapping_add(12345)) % 512
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(keys: &[&'static str]) -> Vec<&'static str> {
        let mut v = keys.to_vec();
        qdict_order(&mut v);
        v
    }

    #[test]
    fn qdict_order_matches_observed_reference_replies() {
        // Member orders observed in qemu-ga 7.2 replies (reference note 1.7).
        assert_eq!(order(&["return", "id"]), ["return", "id"]);
        assert_eq!(order(&["error", "id"]), ["id", "error"]);
        assert_eq!(order(&["class", "desc"]), ["class", "desc"]);
        assert_eq!(
            order(&["count", "buf-b64", "eof"]),
            ["count", "buf-b64", "eof"]
        );
        assert_eq!(order(&["position", "eof"]), ["eof", "position"]);
        assert_eq!(
            order(&["name", "enabled", "success-response"]),
            ["enabled", "name", "success-response"]
        );
        assert_eq!(
            order(&["supported_commands", "version"]),
            ["version", "supported_commands"]
        );
    }

    #[test]
    fn visitor_order_terminates_for_any_member_count() {
        for n in [0usize, 1, 7, 8, 15, 16, 100, 2047, 2048, 5000] {
            let owned: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
            let mut names: Vec<&str> = owned.iter().map(String::as_str).collect();
            ghash_order(&mut names);
            assert_eq!(names.len(), n);
        }
        // Observed on qemu-ga 7.2: {"id":1,"zzz":2,"aaa":3} reports 'zzz'.
        let mut names = vec!["id", "zzz", "aaa"];
        ghash_order(&mut names);
        names.retain(|n| *n != "id");
        assert_eq!(names, ["zzz", "aaa"]);
    }

    #[test]
    fn duplicate_member_is_reported_as_duplicate_key() {
        let err = match parse_top_level(r#"{"a":1,"a":2}"#) {
            Err(e) => e,
            Ok(_) => panic!("duplicate accepted"),
        };
        assert_eq!(err, "duplicate key");
    }

    #[test]
    fn members_borrow_unescaped_keys() {
        let m = Members::parse_object(r#"{"a":[1, 2],"b\u0041":"x"}"#).unwrap();
        assert!(matches!(m.0[0].0, Cow::Borrowed("a")));
        assert_eq!(m.0[1].0, "bA");
        assert_eq!(m.get("a").unwrap().get(), "[1, 2]");
    }

    #[test]
    fn serde_errors_use_reference_words() {
        let cases = [
            ("[1,]", "expecting value"),
            (r#"{"a" 1}"#, "missing : in object pair"),
            ("{1:2}", "key is not a string in object"),
            (r#"{"a":1 "b":2}"#, "expected separator in dict"),
            ("[1 2]", "expected separator in list"),
            (r#""\x41""#, "invalid escape sequence in string"),
            ("}", "expecting value"),
        ];
        for (input, want) in cases {
            match parse_top_level(input) {
                Err(e) => assert_eq!(e, want, "input {input}"),
                Ok(_) => panic!("{input} parsed"),
            }
        }
    }
}
