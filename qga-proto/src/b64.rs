//! `buf-b64` payloads: binary data that travels as base64 text.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::ArgumentError;

/// Standard alphabet; decoding accepts missing padding as qemu-ga (GLib) does.
const ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Binary data carried as base64 text (`buf-b64`).
///
/// * Decoding is as strict as qemu-ga about the alphabet (`A-Z a-z 0-9 + / =` and
///   `\n`; anything else is [`ArgumentError::InvalidBase64`]) and as lenient about
///   the end: an incomplete final group is dropped (`aGVsbG8` decodes to `hel`).
/// * Encoding goes through `collect_str` in fixed-size chunks, so serialising a large
///   payload builds no full-size intermediate `String`. [`Base64::encode_into`] writes
///   straight into an output buffer for callers that assemble replies by hand.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Base64(pub Vec<u8>);

impl fmt::Debug for Base64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base64({} bytes)", self.0.len())
    }
}

impl Base64 {
    /// Decodes base64 text with the reference agent's rules.
    pub fn decode(text: &str) -> Result<Vec<u8>, ArgumentError> {
        let bytes = text.as_bytes();
        // Fast path, what every sane client sends: whole groups, no newlines. The
        // decoder rejects any byte outside the alphabet itself, so a success needs
        // no separate check; anything else takes the careful path below.
        if bytes.len().is_multiple_of(4) {
            if let Ok(v) = ENGINE.decode(bytes) {
                return Ok(v);
            }
        }
        const VALID: [bool; 256] = {
            let mut t = [false; 256];
            let mut i = 0;
            while i < 256 {
                let b = i as u8;
                t[i] = b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n');
                i += 1;
            }
            t
        };
        if !bytes.iter().all(|&b| VALID[b as usize]) {
            return Err(ArgumentError::InvalidBase64);
        }
        let stripped;
        let mut input: &[u8] = bytes;
        if input.contains(&b'\n') {
            stripped = input
                .iter()
                .copied()
                .filter(|&b| b != b'\n')
                .collect::<Vec<u8>>();
            input = &stripped;
        }
        // GLib drops an incomplete final group silently.
        let whole = input.len() - input.len() % 4;
        let input = &input[..whole];
        ENGINE
            .decode(input)
            .map_err(|_| ArgumentError::InvalidBase64)
    }

    /// Appends the base64 encoding of `data` to `out` (padded, standard alphabet),
    /// encoding in place into `out`'s spare capacity.
    pub fn encode_into(data: &[u8], out: &mut Vec<u8>) {
        let start = out.len();
        let len = encoded_len(data.len());
        out.resize(start + len, 0);
        let written = ENGINE
            .encode_slice(data, &mut out[start..])
            .unwrap_or_default();
        out.truncate(start + written);
    }

    /// Length of the base64 text for `n` bytes of data.
    pub fn encoded_len(n: usize) -> usize {
        encoded_len(n)
    }
}

fn encoded_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

impl From<Vec<u8>> for Base64 {
    fn from(v: Vec<u8>) -> Self {
        Base64(v)
    }
}

impl AsRef<[u8]> for Base64 {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Displays bytes as base64, a chunk at a time.
struct Chunked<'a>(&'a [u8]);

impl fmt::Display for Chunked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // 3 KiB of input -> 4 KiB of text per write; a multiple of 3 keeps groups whole.
        const IN: usize = 3 * 1024;
        let mut buf = [0u8; IN / 3 * 4];
        for chunk in self.0.chunks(IN) {
            let n = ENGINE
                .encode_slice(chunk, &mut buf)
                .map_err(|_| fmt::Error)?;
            // The base64 alphabet is ASCII.
            let s = std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?;
            f.write_str(s)?;
        }
        Ok(())
    }
}

impl Serialize for Base64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&Chunked(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Base64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Base64, E> {
                Base64::decode(v).map(Base64).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_the_reference() {
        assert_eq!(Base64::decode("aGVsbG8=").unwrap(), b"hello");
        // Incomplete last group dropped, as GLib does.
        assert_eq!(Base64::decode("aGVsbG8").unwrap(), b"hel");
        assert_eq!(Base64::decode("aGVs\nbG8=\n").unwrap(), b"hello");
        assert_eq!(Base64::decode("").unwrap(), b"");
        for bad in ["aGV sbG8=", "aGV-", "aGV_", "aGVs!"] {
            assert_eq!(
                Base64::decode(bad),
                Err(ArgumentError::InvalidBase64),
                "{bad}"
            );
        }
    }

    #[test]
    fn encode_paths_agree() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut out = b"prefix".to_vec();
        Base64::encode_into(&data, &mut out);
        let via_serde = serde_json::to_string(&Base64(data.clone())).unwrap();
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(
            format!("\"{}\"", std::str::from_utf8(&out[6..]).unwrap()),
            via_serde
        );
        assert_eq!(
            Base64::decode(std::str::from_utf8(&out[6..]).unwrap()).unwrap(),
            data
        );
    }
}
