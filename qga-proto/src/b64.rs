//! `buf-b64` payloads: binary data that travels as base64 text.

use std::fmt;
use std::mem::MaybeUninit;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine};
use base64_simd::AsOut;
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
///   payload builds no full-size intermediate `String`. [`Base64::encode_into`],
///   [`encode_to_slice`](Base64::encode_to_slice) and
///   [`encode_to_uninit`](Base64::encode_to_uninit) write straight into an output
///   buffer for callers that assemble replies by hand, with AVX-512 VBMI where the
///   CPU has it (detected at run time) and base64-simd otherwise: the same text
///   either way.
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
        Base64Text::parse(text).map(Base64Text::into_vec)
    }

    /// Appends the base64 encoding of `data` to `out` (padded, standard alphabet),
    /// encoding with SIMD straight into `out`'s spare capacity (never zeroed first).
    /// `out` grows as [`Vec::reserve`] grows it, so appending piece after piece
    /// stays linear.
    pub fn encode_into(data: &[u8], out: &mut Vec<u8>) {
        let len = encoded_len(data.len());
        out.reserve(len);
        let start = out.len();
        encode_exact(data, &mut out.spare_capacity_mut()[..len]);
        // SAFETY: `encode_exact` wrote all `len` bytes after the first `start` (the
        // reserve above made room for them).
        unsafe { out.set_len(start + len) };
    }

    /// Writes the base64 encoding of `data` (padded, standard alphabet) at the start
    /// of `out` with SIMD and returns its length, or `None` (nothing written) when
    /// `out` is shorter than [`encoded_len`](Self::encoded_len)`(data.len())`.
    pub fn encode_to_slice(data: &[u8], out: &mut [u8]) -> Option<usize> {
        let len = encoded_len(data.len());
        let out = out.get_mut(..len)?;
        // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and `encode_exact` only
        // writes initialised bytes, so `out` stays initialised.
        let out = unsafe { &mut *(out as *mut [u8] as *mut [MaybeUninit<u8>]) };
        Some(encode_exact(data, out).len())
    }

    /// [`encode_to_slice`](Self::encode_to_slice) into memory that need not be
    /// initialised (a buffer's spare capacity: no zeroing pass before the encoding
    /// overwrites it). Returns the text, which starts at `out[0]`, or `None`
    /// (nothing written) when `out` is too short.
    pub fn encode_to_uninit<'o>(
        data: &[u8],
        out: &'o mut [MaybeUninit<u8>],
    ) -> Option<&'o mut [u8]> {
        let len = encoded_len(data.len());
        let out = out.get_mut(..len)?;
        Some(encode_exact(data, out))
    }

    /// Length of the base64 text for `n` bytes of data.
    pub fn encoded_len(n: usize) -> usize {
        encoded_len(n)
    }
}

fn encoded_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Data from which [`encode_exact`] encodes with AVX-512 VBMI: one block. Even one
/// block and no tail takes half base64-simd's time (10 against 19 ns on a Sapphire
/// Rapids Xeon).
#[cfg(target_arch = "x86_64")]
const AVX512_ENCODE_MIN: usize = 48;

/// Writes the base64 text of `data` (padded, standard alphabet) over all of `out`,
/// which must be exactly [`encoded_len`]`(data.len())` long, and returns it. With
/// AVX-512 VBMI, 48 bytes of data a step (the whole blocks); otherwise, and for the
/// last 47 bytes at most and the padding, base64-simd, so the text is the same
/// either way.
fn encode_exact<'o>(data: &[u8], out: &'o mut [MaybeUninit<u8>]) -> &'o mut [u8] {
    assert_eq!(out.len(), encoded_len(data.len()));
    #[allow(unused_mut)] // only changed on x86_64
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if data.len() >= AVX512_ENCODE_MIN && avx512::available() {
        // SAFETY: the CPU has the features `encode` is compiled with (checked just
        // above), and `out` holds `encoded_len(data.len())` bytes, at least the
        // `data.len() / 48 * 64` it writes.
        done = unsafe { avx512::encode(data, out.as_mut_ptr().cast::<u8>()) };
    }
    // `done` is a multiple of 3: the rest of the text follows its whole groups.
    let text_done = done / 3 * 4;
    let rest = base64_simd::STANDARD.encode(
        &data[done..],
        base64_simd::Out::from_uninit_slice(&mut out[text_done..]),
    );
    assert_eq!(text_done + rest.len(), out.len());
    // SAFETY: every byte of `out` is written: the first `text_done` by
    // `avx512::encode`, the rest by base64-simd (the `rest` it returned covers them,
    // asserted above). `MaybeUninit<u8>` has the layout of `u8`.
    unsafe { &mut *(out as *mut [MaybeUninit<u8>] as *mut [u8]) }
}

/// Bytes qemu-ga accepts in base64 text: the standard alphabet, `=` and `\n`.
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

/// The careful path, for whatever the fast one does not take (newlines, `=` inside
/// the text, bad bytes): check every byte, drop newlines, drop an incomplete final
/// group, decode with the lenient engine.
fn decode_lenient(bytes: &[u8]) -> Result<Vec<u8>, ArgumentError> {
    if !bytes.iter().all(|&b| VALID[b as usize]) {
        return Err(ArgumentError::InvalidBase64);
    }
    let stripped;
    let mut input: &[u8] = bytes;
    if memchr::memchr(b'\n', input).is_some() {
        stripped = input
            .iter()
            .copied()
            .filter(|&b| b != b'\n')
            .collect::<Vec<u8>>();
        input = &stripped;
    }
    // GLib drops an incomplete final group silently.
    let whole = input.len() - input.len() % 4;
    ENGINE
        .decode(&input[..whole])
        .map_err(|_| ArgumentError::InvalidBase64)
}

/// Text of at least one whole group, of the alphabet but for padding in its last
/// whole group and valid bytes after it, with no newline: the whole groups but the
/// last (not checked) and the last one decoded; `None` for any other text.
fn split_plain(bytes: &[u8]) -> Option<(&[u8], [u8; 3], usize)> {
    let whole = bytes.len() - bytes.len() % 4;
    // The incomplete final group is dropped, but its bytes must still be valid;
    // a newline anywhere takes the careful path.
    let tail_ok = bytes[whole..]
        .iter()
        .all(|&b| VALID[b as usize] && b != b'\n');
    if !tail_ok || whole == 0 {
        return None;
    }
    let (body, last) = bytes[..whole].split_at(whole - 4);
    let mut out = [0u8; 3];
    let n = ENGINE.decode_slice(last, &mut out).ok()?;
    Some((body, out, n))
}

/// Decodes whole groups of the alphabet (no padding, `text.len()` a multiple of 4)
/// into the start of `out` (at least `text.len() / 4 * 3` long); the number of
/// bytes, or `None` (`out` then holds garbage) if a byte is not of the alphabet.
/// With AVX-512 VBMI, 64 bytes of text a step (2-3x base64-simd's AVX2 decoding
/// on the CPUs that have it); otherwise, and for the last 63 bytes at most,
/// base64-simd.
fn decode_groups(text: &[u8], out: &mut [u8]) -> Option<usize> {
    let n = text.len() / 4 * 3;
    if !text.len().is_multiple_of(4) || out.len() < n {
        return None;
    }
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if text.len() >= 64 && avx512::available() {
        // SAFETY: the CPU has the features `decode` is compiled with (checked just
        // above), and `out` holds `text.len() / 4 * 3` bytes (checked above).
        done = unsafe { avx512::decode(text, out)? };
    }
    let rest = base64_simd::STANDARD_NO_PAD
        .decode(&text[done / 3 * 4..], out[done..n].as_out())
        .ok()?;
    Some(done + rest.len())
}

/// Base64 with AVX-512 VBMI, after Muła and Lemire ("Base64 encoding and decoding
/// at almost the speed of a memory copy", 2019).
///
/// * Decoding: a 128-entry table lookup of the 6-bit values (one `vpermi2b`), two
///   multiply-adds to pack four 6-bit values into 24 bits, one byte permutation to
///   gather the 48 bytes of 64 characters.
/// * Encoding: one byte permutation to give each 3-byte group a 32-bit lane, one
///   multishift to cut the lane's four 6-bit fields into bytes, one byte
///   permutation with the alphabet as the table for their characters.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;
    use std::sync::atomic::{AtomicU8, Ordering};

    /// Whether this CPU has AVX-512 F, BW and VBMI (detected once).
    pub(super) fn available() -> bool {
        static HAS: AtomicU8 = AtomicU8::new(0);
        match HAS.load(Ordering::Relaxed) {
            1 => true,
            2 => false,
            _ => {
                let yes = std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vbmi");
                HAS.store(if yes { 1 } else { 2 }, Ordering::Relaxed);
                yes
            }
        }
    }

    /// Decodes the whole 64-byte blocks of `text` into `out`: the number of bytes
    /// written (48 a block), or `None` if a byte of those blocks is not of the
    /// alphabet (`=` included). What follows the last whole block is left to the
    /// caller.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VBMI ([`available`]), and `out` must
    /// hold at least `text.len() / 64 * 48` bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) unsafe fn decode(text: &[u8], out: &mut [u8]) -> Option<usize> {
        // The 6-bit value of each ASCII byte, 0x80 for a byte not of the alphabet:
        // bytes 0-63 of the table in `low`, 64-127 in `high`.
        let low = _mm512_setr_epi32(
            0x8080_8080_u32 as i32,
            0x8080_8080_u32 as i32,
            0x8080_8080_u32 as i32,
            0x8080_8080_u32 as i32,
            0x8080_8080_u32 as i32,
            0x8080_8080_u32 as i32,
            0x8080_8080_u32 as i32,
            0x8080_8080_u32 as i32,
            0x8080_8080_u32 as i32,
            0x8080_8080_u32 as i32,
            0x3e80_8080, // '+' is 62
            0x3f80_8080, // '/' is 63
            0x3736_3534, // '0'..'3'
            0x3b3a_3938,
            0x8080_3d3c_u32 as i32, // '8', '9', then ':' .. '?'
            0x8080_8080_u32 as i32,
        );
        let high = _mm512_setr_epi32(
            0x0201_0080, // '@', then 'A' is 0
            0x0605_0403,
            0x0a09_0807,
            0x0e0d_0c0b,
            0x1211_100f,
            0x1615_1413,
            0x8019_1817_u32 as i32,
            0x8080_8080_u32 as i32,
            0x1c1b_1a80, // '`', then 'a' is 26
            0x201f_1e1d,
            0x2423_2221,
            0x2827_2625,
            0x2c2b_2a29,
            0x302f_2e2d,
            0x8033_3231_u32 as i32,
            0x8080_8080_u32 as i32,
        );
        // Bytes 2, 1, 0 of each 32-bit lane (its 24 bits, most significant first),
        // lane after lane: 48 bytes.
        let gather = _mm512_setr_epi32(
            0x0600_0102,
            0x090a_0405,
            0x0c0d_0e08,
            0x1610_1112,
            0x191a_1415,
            0x1c1d_1e18,
            0x2620_2122,
            0x292a_2425,
            0x2c2d_2e28,
            0x3630_3132,
            0x393a_3435,
            0x3c3d_3e38,
            0,
            0,
            0,
            0,
        );
        let pairs = _mm512_set1_epi32(0x0140_0140);
        let quads = _mm512_set1_epi32(0x0001_1000);
        let mut bad = _mm512_setzero_si512();
        let blocks = text.len() / 64;
        assert!(out.len() >= blocks * 48);
        for b in 0..blocks {
            // SAFETY: block `b` lies within `text` (b < text.len() / 64).
            let v = unsafe { _mm512_loadu_si512(text.as_ptr().add(b * 64).cast()) };
            // The table's index is the byte's low 7 bits; a byte from 0x80 up gets
            // caught with the table's 0x80 below.
            let values = _mm512_permutex2var_epi8(low, v, high);
            // bad |= values | v: the top bit of any byte is set if one was bad.
            bad = _mm512_ternarylogic_epi32::<0xFE>(bad, values, v);
            let merged = _mm512_madd_epi16(_mm512_maddubs_epi16(values, pairs), quads);
            let packed = _mm512_permutexvar_epi8(gather, merged);
            // SAFETY: the 48 bytes stored lie within `out` (asserted above); the
            // mask keeps the store from touching the 16 after them.
            unsafe {
                _mm512_mask_storeu_epi8(
                    out.as_mut_ptr().add(b * 48).cast(),
                    0x0000_ffff_ffff_ffff,
                    packed,
                )
            };
        }
        if _mm512_movepi8_mask(bad) != 0 {
            return None;
        }
        Some(blocks * 48)
    }

    /// Byte `i` of each 32-bit lane `l` of the spread: the data byte it takes, so
    /// that the lane holds bytes 1, 0, 2, 1 of group `l` (bytes 3l .. 3l+2). The
    /// lane's low 16 bits are then bytes 0 and 1 of the group, most significant
    /// first, and its high 16 bits bytes 1 and 2: each 6-bit field lies whole in one
    /// half, where a shift finds it.
    static SPREAD: [u8; 64] = {
        let mut t = [0u8; 64];
        let mut l = 0;
        while l < 16 {
            let g = 3 * l as u8;
            t[4 * l] = g + 1;
            t[4 * l + 1] = g;
            t[4 * l + 2] = g + 2;
            t[4 * l + 3] = g + 1;
            l += 1;
        }
        t
    };

    /// The 64 characters, indexed by their 6-bit value.
    static ALPHABET: [u8; 64] =
        *b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Encodes the whole 48-byte blocks of `data` as 64 bytes of text each, written
    /// from `out` on; returns the number of bytes of data encoded (48 a block). What
    /// follows the last whole block, and the padding, are left to the caller.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VBMI ([`available`]), and `out` must be
    /// valid for writes of `data.len() / 48 * 64` bytes (they need not be
    /// initialised: only written through the pointer, never read).
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) unsafe fn encode(data: &[u8], out: *mut u8) -> usize {
        // SAFETY: each reads the 64 bytes of a 64-byte array.
        let (spread, alphabet) = unsafe {
            (
                _mm512_loadu_si512(SPREAD.as_ptr().cast()),
                _mm512_loadu_si512(ALPHABET.as_ptr().cast()),
            )
        };
        // Bit offsets of the four fields in each lane (two lanes a quadword), first
        // character first: in the low half, data bits 7-2 of byte 0 are lane bits
        // 15-10, then byte 0's bits 1-0 and byte 1's bits 7-4 are lane bits 9-4; in
        // the high half, byte 1's bits 3-0 and byte 2's bits 7-6 are lane bits 27-22,
        // and byte 2's bits 5-0 are lane bits 21-16. The multishift takes 8 bits from
        // each offset; the 2 above the field are ignored by the alphabet lookup, which
        // reads the low 6 bits of an index.
        let shifts = _mm512_set1_epi64(i64::from_le_bytes([10, 4, 22, 16, 42, 36, 54, 48]));
        let blocks = data.len() / 48;
        for b in 0..blocks {
            // SAFETY: the mask loads bytes b*48 .. b*48+48, which lie within `data`
            // (b < data.len() / 48); the 16 bytes after them are neither read nor able
            // to fault.
            let v = unsafe {
                _mm512_maskz_loadu_epi8(0x0000_ffff_ffff_ffff, data.as_ptr().add(b * 48).cast())
            };
            let lanes = _mm512_permutexvar_epi8(spread, v);
            let fields = _mm512_multishift_epi64_epi8(shifts, lanes);
            let text = _mm512_permutexvar_epi8(fields, alphabet);
            // SAFETY: bytes b*64 .. b*64+64 lie within the `data.len() / 48 * 64` the
            // caller made valid for writes.
            unsafe { _mm512_storeu_si512(out.add(b * 64).cast(), text) };
        }
        blocks * 48
    }
}

/// Text per piece when decoding in pieces (a multiple of 4): 192 KiB of data, small
/// enough to stay in the CPU's cache between decoding and its use.
const PIECE_TEXT: usize = 256 * 1024;

/// Base64 text already checked with qemu-ga's rules (see [`Base64`]), decoded on
/// demand: whole ([`into_vec`](Base64Text::into_vec)) or piece by piece through a small
/// buffer ([`decode_in_pieces`](Base64Text::decode_in_pieces)), so a large payload
/// need never exist decoded in full.
///
/// What every sane client sends (whole groups of the alphabet, padding only at the
/// end, no newlines) is checked and decoded with SIMD (`base64-simd`); anything else
/// is decoded at once by the careful path, with the same result.
///
/// ```
/// use qga_proto::Base64Text;
/// let t = Base64Text::parse("aGVsbG8gd29ybGQ=").unwrap();
/// assert_eq!(t.decoded_len(), 11);
/// assert_eq!(t.clone().into_vec(), b"hello world");
/// let mut got = Vec::new();
/// t.decode_in_pieces(5, &mut Vec::new(), |piece| {
///     got.extend_from_slice(piece);
///     Ok::<bool, ()>(true)
/// })
/// .unwrap();
/// assert_eq!(got, b"hello");
/// assert!(Base64Text::parse("aGV sbG8=").is_err());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Base64Text<'a>(Repr<'a>);

#[derive(Clone, PartialEq, Eq)]
enum Repr<'a> {
    /// Whole groups without padding (checked), then the decoded last group.
    Plain {
        body: &'a [u8],
        last: [u8; 3],
        last_len: usize,
    },
    /// Decoded by the careful path.
    Decoded(Vec<u8>),
    /// What [`Base64Text::decode_plain_into`] decoded at once into a lent buffer:
    /// `body` bytes from whole groups, then `last_len` from the last group, handed out
    /// in the same pieces as [`Repr::Plain`] (`data` may be longer: its tail is not
    /// ours).
    Whole {
        data: Vec<u8>,
        body: usize,
        last_len: usize,
    },
}

impl fmt::Debug for Base64Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base64Text({} bytes)", self.decoded_len())
    }
}

impl<'a> Base64Text<'a> {
    /// Checks `text` (in one SIMD pass for the usual text); an error is
    /// [`ArgumentError::InvalidBase64`], exactly where [`Base64::decode`] fails.
    pub fn parse(text: &'a str) -> Result<Self, ArgumentError> {
        let bytes = text.as_bytes();
        if let Some(plain) = Self::parse_plain(bytes) {
            return Ok(plain);
        }
        if bytes.len() < 4 && bytes.iter().all(|&b| VALID[b as usize] && b != b'\n') {
            // Only an incomplete group, dropped.
            return Ok(Base64Text(Repr::Decoded(Vec::new())));
        }
        decode_lenient(bytes).map(|v| Base64Text(Repr::Decoded(v)))
    }

    /// The SIMD reading of [`parse`](Self::parse) alone: `Some` for text of at least
    /// one whole group, of the alphabet but for padding in its last whole group and
    /// valid bytes after it, with no newline (what [`parse`](Self::parse) then returns
    /// too); `None` for anything else, valid or not, which only the careful path
    /// judges. Every byte of text this accepts is ASCII, none a quote, a backslash
    /// or a control character: it is its own JSON string content.
    pub(crate) fn parse_plain(bytes: &'a [u8]) -> Option<Self> {
        let (body, last, last_len) = split_plain(bytes)?;
        base64_simd::STANDARD_NO_PAD.check(body).ok()?;
        Some(Base64Text(Repr::Plain {
            body,
            last,
            last_len,
        }))
    }

    /// [`parse_plain`](Self::parse_plain), the check done by decoding the text
    /// whole into `buf` (grown as needed, never zeroed but for its growth): one
    /// pass instead of a check and a decode. The text then holds `buf` (see
    /// [`into_scratch`](Self::into_scratch)); where `parse_plain` gives `None`, this
    /// gives `buf` back.
    pub(crate) fn decode_plain_into(bytes: &[u8], mut buf: Vec<u8>) -> Result<Self, Vec<u8>> {
        let Some((body, last, last_len)) = split_plain(bytes) else {
            return Err(buf);
        };
        let n = body.len() / 4 * 3;
        if buf.len() < n + 3 {
            buf.resize(n + 3, 0);
        }
        if decode_groups(body, &mut buf[..n]).is_none() {
            return Err(buf);
        }
        buf[n..n + 3].copy_from_slice(&last);
        Ok(Base64Text(Repr::Whole {
            data: buf,
            body: n,
            last_len,
        }))
    }

    /// The buffer lent to [`Request::parse_file_write`](crate::Request::parse_file_write)
    /// that the payload was decoded into, to lend again; `None` for text that holds
    /// none.
    pub fn into_scratch(self) -> Option<Vec<u8>> {
        match self.0 {
            Repr::Whole { data, .. } => Some(data),
            _ => None,
        }
    }

    /// Text already decoded (by the careful path or after unescaping).
    pub(crate) fn decoded(v: Vec<u8>) -> Self {
        Base64Text(Repr::Decoded(v))
    }

    /// Number of bytes the text decodes to.
    pub fn decoded_len(&self) -> usize {
        match &self.0 {
            Repr::Plain { body, last_len, .. } => body.len() / 4 * 3 + last_len,
            Repr::Decoded(v) => v.len(),
            Repr::Whole { body, last_len, .. } => body + last_len,
        }
    }

    /// The decoded bytes.
    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Repr::Plain {
                body,
                last,
                last_len,
            } => {
                let mut v = vec![0u8; body.len() / 4 * 3 + 3];
                // `body` was checked: decoding it cannot fail.
                let n = decode_groups(body, &mut v).unwrap_or(0);
                v.truncate(n);
                v.extend_from_slice(&last[..last_len]);
                v
            }
            Repr::Decoded(v) => v,
            Repr::Whole {
                mut data,
                body,
                last_len,
            } => {
                data.truncate(body + last_len);
                data
            }
        }
    }

    /// Decodes the first `limit` bytes (at most [`decoded_len`](Self::decoded_len))
    /// in order, handing each piece (up to 192 KiB) to `sink`, which answers whether
    /// to go on. `scratch` holds the pieces (reuse it across calls). When the sink
    /// returns `Ok(false)`, decoding stops there.
    pub fn decode_in_pieces<E>(
        &self,
        limit: usize,
        scratch: &mut Vec<u8>,
        mut sink: impl FnMut(&[u8]) -> Result<bool, E>,
    ) -> Result<(), E> {
        let limit = limit.min(self.decoded_len());
        match &self.0 {
            Repr::Decoded(v) => {
                for piece in v[..limit].chunks(PIECE_TEXT / 4 * 3) {
                    if !sink(piece)? {
                        break;
                    }
                }
                Ok(())
            }
            Repr::Whole {
                data,
                body,
                last_len,
            } => {
                // Plain's pieces, cut from what is decoded already.
                let (mut done, mut at) = (0usize, 0usize);
                while done < limit {
                    let want = limit - done;
                    let groups = want.div_ceil(3).clamp(1, PIECE_TEXT / 4);
                    let mut end = at + (groups * 3).min(body.saturating_sub(at));
                    if end == *body {
                        end += last_len;
                    }
                    let piece = &data[at..end.min(at + want)];
                    if piece.is_empty() {
                        break;
                    }
                    done += piece.len();
                    at = end;
                    if !sink(piece)? {
                        break;
                    }
                }
                Ok(())
            }
            Repr::Plain {
                body,
                last,
                last_len,
            } => {
                let mut done = 0usize;
                let mut text = &body[..];
                while done < limit {
                    let want = limit - done;
                    let groups = want.div_ceil(3).clamp(1, PIECE_TEXT / 4);
                    let take = (groups * 4).min(text.len());
                    let (now, rest) = text.split_at(take);
                    // Grown once, then reused as it is: no zeroing per piece.
                    let need = take / 4 * 3 + 3;
                    if scratch.len() < need {
                        scratch.resize(need, 0);
                    }
                    // `body` was checked: decoding it cannot fail.
                    let mut n = decode_groups(now, &mut scratch[..need - 3]).unwrap_or(0);
                    text = rest;
                    if text.is_empty() {
                        scratch[n..n + last_len].copy_from_slice(&last[..*last_len]);
                        n += last_len;
                    }
                    let piece = &scratch[..n.min(want)];
                    if piece.is_empty() {
                        break;
                    }
                    done += piece.len();
                    if !sink(piece)? {
                        break;
                    }
                }
                Ok(())
            }
        }
    }
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

    /// Every way to decode: whole, and in pieces with any limit, collected.
    fn pieces(t: &Base64Text<'_>, limit: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut scratch = Vec::new();
        t.decode_in_pieces(limit, &mut scratch, |p| {
            assert!(!p.is_empty() && p.len() <= PIECE_TEXT / 4 * 3);
            got.extend_from_slice(p);
            Ok::<bool, ()>(true)
        })
        .unwrap();
        got
    }

    fn check_against_careful_path(text: &[u8]) {
        let Ok(text) = std::str::from_utf8(text) else {
            return;
        };
        let careful = decode_lenient(text.as_bytes());
        let fast = Base64Text::parse(text);
        match (&careful, &fast) {
            (Ok(want), Ok(t)) => {
                if let Ok(w) = Base64Text::decode_plain_into(text.as_bytes(), Vec::new()) {
                    assert_eq!(&pieces(&w, usize::MAX), want, "{text:?}");
                }
                assert_eq!(t.decoded_len(), want.len(), "{text:?}");
                assert_eq!(&t.clone().into_vec(), want, "{text:?}");
                assert_eq!(&pieces(t, usize::MAX), want, "{text:?}");
                for limit in [
                    0,
                    1.min(want.len()),
                    want.len() / 2,
                    want.len().saturating_sub(1),
                ] {
                    assert_eq!(pieces(t, limit), want[..limit], "{text:?} limit {limit}");
                }
            }
            (Err(a), Err(b)) => assert_eq!(a, b),
            _ => panic!("{text:?}: careful {careful:?}, fast {fast:?}"),
        }
    }

    #[test]
    fn the_fast_path_agrees_with_the_careful_one_at_the_edges() {
        for text in [
            "",
            "=",
            "==",
            "a",
            "aG",
            "aGV",
            "aGVs",
            "aGVsbA",
            "aGVsbA=",
            "aGVsbA==",
            "aGVsbA===",
            "aGVsbG8=",
            "aGVsbG8",
            "aGVs=bG8",
            "aGVsbG8=\n",
            "\naGVs",
            "aGVsbG8=!",
            "aGVsbG8!",
            "!GVsbG8=",
            "aGVs bG8",
            "aGVsbG9=",
            "aGVsbG9",
            "aGVsbGZ=",
            "a===",
            "aG==",
            "aGk=aGk=",
            "aGVsbG8=aGk",
            "aGVsbG8==",
            "-_-_",
            "aGVs\u{e9}",
            "aGVsbG8=\r",
        ] {
            check_against_careful_path(text.as_bytes());
        }
        // Large: across pieces, with a bad byte or a newline at chosen places.
        let data: Vec<u8> = (0..700_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let good = ENGINE.encode(&data);
        check_against_careful_path(good.as_bytes());
        let unpadded = good.trim_end_matches('=');
        check_against_careful_path(&unpadded.as_bytes()[..unpadded.len() - 1]);
        for at in [0, 3, 4, 262_143, 262_144, 500_001, good.len() - 2] {
            for b in [b'!', b'\n', b'=', b'-'] {
                let mut t = good.clone().into_bytes();
                t[at] = b;
                check_against_careful_path(&t);
            }
        }
    }

    /// base64-simd alone, the reference for [`decode_groups`].
    fn reference_groups(text: &[u8]) -> Option<Vec<u8>> {
        base64_simd::STANDARD_NO_PAD.decode_to_vec(text).ok()
    }

    fn check_groups(text: &[u8]) {
        let mut out = vec![0u8; text.len() / 4 * 3];
        let got = decode_groups(text, &mut out).map(|n| out[..n].to_vec());
        assert_eq!(
            got,
            reference_groups(text),
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }

    #[test]
    fn decoding_groups_agrees_with_base64_simd() {
        #[cfg(target_arch = "x86_64")]
        eprintln!("AVX-512 VBMI: {}", avx512::available());
        let data: Vec<u8> = (0..3000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
            .collect();
        let text = base64_simd::STANDARD_NO_PAD.encode_to_string(&data);
        for len in [0, 4, 60, 64, 68, 124, 128, 132, 192, 3996, 4000] {
            let t = &text.as_bytes()[..len];
            check_groups(t);
            // Every byte value at the edges of blocks and in between.
            for at in [
                0,
                1,
                31,
                62,
                63,
                64,
                65,
                127,
                128,
                len / 2,
                len.saturating_sub(1),
            ] {
                if at >= len {
                    continue;
                }
                for b in 0..=255u8 {
                    let mut bad = t.to_vec();
                    bad[at] = b;
                    check_groups(&bad);
                }
            }
        }
    }

    /// The pieces (their lengths and bytes) `t` hands out up to `limit`.
    fn piece_list(t: &Base64Text<'_>, limit: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        t.decode_in_pieces(limit, &mut Vec::new(), |p| {
            got.push(p.to_vec());
            Ok::<bool, ()>(true)
        })
        .unwrap();
        got
    }

    #[test]
    fn decoding_whole_hands_out_the_pieces_checking_then_decoding_would() {
        const P: usize = PIECE_TEXT / 4 * 3;
        let data: Vec<u8> = (0..2 * P as u32 + 9)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        // Sizes around the piece edges, with 0, 1 and 2 bytes in the padded group.
        let mut sizes = vec![1, 2, 3, 4, 5, 6, 7, 100];
        for edge in [P, 2 * P] {
            sizes.extend(edge - 4..=edge + 4);
        }
        let mut buf = vec![7u8; 5]; // stale contents: never read
        for size in sizes {
            let text = ENGINE.encode(&data[..size]);
            let plain = Base64Text::parse_plain(text.as_bytes()).unwrap();
            let whole = Base64Text::decode_plain_into(text.as_bytes(), buf).unwrap();
            assert_eq!(whole.decoded_len(), size);
            for limit in [0, 1, size / 2, size - 1, size, P, P + 1, size + 5] {
                assert_eq!(
                    piece_list(&whole, limit),
                    piece_list(&plain, limit),
                    "size {size} limit {limit}"
                );
            }
            assert_eq!(whole.clone().into_vec(), data[..size]);
            buf = whole.into_scratch().unwrap();
        }
        // Bad text anywhere: refused, the same buffer given back.
        let text = ENGINE.encode(&data[..P + 10]);
        for at in [0, 5, PIECE_TEXT, text.len() - 6] {
            let mut bad = text.clone().into_bytes();
            bad[at] = b'"';
            let lent = vec![0u8; 2 * P];
            let at_ptr = lent.as_ptr();
            let back = Base64Text::decode_plain_into(&bad, lent).unwrap_err();
            assert_eq!(back.as_ptr(), at_ptr);
            assert!(Base64Text::parse_plain(&bad).is_none());
        }
        assert!(Base64Text::decode_plain_into(b"aGVsbG8=\n", Vec::new()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_text_decodes_as_the_careful_path_says(
            text in proptest::collection::vec(
                proptest::sample::select(b"AZaz09+/=\n!-aQ".to_vec()), 0..64)
        ) {
            check_against_careful_path(&text);
        }

        #[test]
        fn decoding_groups_agrees_on_any_text(
            text in proptest::collection::vec(
                proptest::sample::select(b"AZaz09+/=\n!-aQ\xff\x80".to_vec()), 0..300),
            cut in 0usize..4,
        ) {
            let len = (text.len() / 4 * 4).saturating_sub(cut * 4);
            check_groups(&text[..len]);
            // Mostly good text, one byte changed.
            let good = base64_simd::STANDARD_NO_PAD.encode_to_string(&text);
            let mut t = good.into_bytes();
            t.truncate(t.len() / 4 * 4);
            if let Some(b) = text.first() {
                let at = text.len() * 7 % t.len().max(1);
                if at < t.len() {
                    t[at] = *b;
                }
            }
            check_groups(&t);
        }

        #[test]
        fn encoded_data_round_trips(data in proptest::collection::vec(proptest::num::u8::ANY, 0..3000)) {
            check_encoders(&data);
            let text = ENGINE.encode(&data);
            let t = Base64Text::parse(&text).unwrap();
            proptest::prop_assert_eq!(pieces(&t, usize::MAX), data.clone());
            proptest::prop_assert_eq!(Base64::decode(&text).unwrap(), data);
        }
    }

    /// `n` bytes of noise from `seed` (xorshift), quick to make in a debug build.
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    /// Every public encoder against the `base64` crate's standard padded engine:
    /// appended after a prefix, into a slice at offsets 0 and 1 (odd) with bytes
    /// after the text left alone, into a fresh `Vec`'s spare capacity at offsets 0
    /// and 1, and refused (nothing written) one byte short.
    fn check_encoders(data: &[u8]) {
        let want = base64::engine::general_purpose::STANDARD.encode(data);
        let want = want.as_bytes();
        let n = want.len();
        assert_eq!(Base64::encoded_len(data.len()), n);

        let mut out = b"prefix".to_vec();
        Base64::encode_into(data, &mut out);
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(&out[6..], want, "encode_into, {} bytes", data.len());

        for at in [0, 1] {
            let mut buf = vec![0xEEu8; at + n + 5];
            assert_eq!(Base64::encode_to_slice(data, &mut buf[at..]), Some(n));
            assert_eq!(&buf[at..at + n], want, "encode_to_slice at {at}");
            assert!(buf[..at].iter().chain(&buf[at + n..]).all(|&b| b == 0xEE));
            if n > 0 {
                let mut short = vec![0xEEu8; n - 1];
                assert_eq!(Base64::encode_to_slice(data, &mut short), None);
                assert!(short.iter().all(|&b| b == 0xEE));
            }

            let mut v: Vec<u8> = Vec::with_capacity(at + n);
            let text = Base64::encode_to_uninit(data, &mut v.spare_capacity_mut()[at..]);
            assert_eq!(text.as_deref(), Some(want), "encode_to_uninit at {at}");
            if n > 0 {
                let mut v: Vec<u8> = Vec::with_capacity(n - 1);
                let spare = &mut v.spare_capacity_mut()[..n - 1];
                assert!(Base64::encode_to_uninit(data, spare).is_none());
            }
        }
    }

    #[test]
    fn encoders_agree_with_the_base64_crate_at_every_length_to_512() {
        #[cfg(target_arch = "x86_64")]
        eprintln!("AVX-512 VBMI: {}", avx512::available());
        let data = noise(512 + 1, 0x5eed);
        for len in 0..=512 {
            check_encoders(&data[..len]);
            // From an odd address too.
            check_encoders(&data[1..=len]);
        }
        // Every byte value in every position of a block.
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        check_encoders(&all);
        check_encoders(&all[1..]);
        check_encoders(&all[2..]);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx512_encoder_writes_whole_blocks_only() {
        if !avx512::available() {
            eprintln!("skipped: this CPU lacks AVX-512 F, BW or VBMI");
            return;
        }
        // Data followed by more data the encoder must not look at.
        let data = noise(400, 42);
        for len in [0, 1, 47, 48, 49, 95, 96, 97, 143, 144, 145, 300] {
            let blocks = len / 48;
            let mut out = vec![0xEEu8; blocks * 64 + 64];
            // SAFETY: the test returned above unless the CPU has the features, and
            // `out` holds `len / 48 * 64` bytes and more.
            let done = unsafe { avx512::encode(&data[..len], out.as_mut_ptr()) };
            assert_eq!(done, blocks * 48, "{len} bytes");
            let want = base64::engine::general_purpose::STANDARD.encode(&data[..done]);
            assert_eq!(&out[..blocks * 64], want.as_bytes(), "{len} bytes");
            assert!(
                out[blocks * 64..].iter().all(|&b| b == 0xEE),
                "{len} bytes: wrote past its blocks"
            );
        }
        // Into spare capacity, never initialised, from an odd address.
        let mut v: Vec<u8> = Vec::with_capacity(128);
        // SAFETY: as above; the spare capacity holds 128 bytes.
        let done = unsafe { avx512::encode(&data[1..98], v.as_mut_ptr()) };
        assert_eq!(done, 96);
        // SAFETY: `encode` wrote the first 128 bytes.
        unsafe { v.set_len(128) };
        let want = base64::engine::general_purpose::STANDARD.encode(&data[1..97]);
        assert_eq!(v, want.as_bytes());
    }

    /// Data that ends where an inaccessible page begins: a read past its end faults.
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn encoding_reads_nothing_past_the_data() {
        use std::ffi::c_void;
        unsafe extern "C" {
            fn mmap(
                addr: *mut c_void,
                len: usize,
                prot: i32,
                flags: i32,
                fd: i32,
                off: i64,
            ) -> *mut c_void;
            fn mprotect(addr: *mut c_void, len: usize, prot: i32) -> i32;
            fn munmap(addr: *mut c_void, len: usize) -> i32;
        }
        const PAGE: usize = 4096;
        const PROT_NONE: i32 = 0;
        const PROT_READ_WRITE: i32 = 1 | 2;
        const MAP_PRIVATE_ANONYMOUS: i32 = 0x02 | 0x20;
        // SAFETY: a fresh private anonymous mapping, no address asked for.
        let base = unsafe {
            mmap(
                std::ptr::null_mut(),
                2 * PAGE,
                PROT_READ_WRITE,
                MAP_PRIVATE_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base as isize, -1, "mmap failed");
        // SAFETY: the second page of the mapping just made.
        let guard = unsafe { mprotect(base.cast::<u8>().add(PAGE).cast(), PAGE, PROT_NONE) };
        assert_eq!(guard, 0, "mprotect failed");
        // SAFETY: the first page is ours, readable and writable, and (zeroed by the
        // kernel) initialised.
        let page = unsafe { std::slice::from_raw_parts_mut(base.cast::<u8>(), PAGE) };
        page.copy_from_slice(&noise(PAGE, 7));
        for len in [0, 1, 47, 48, 49, 95, 96, 97, 144, 1000, PAGE - 1, PAGE] {
            let data = &page[PAGE - len..];
            if avx512::available() {
                let mut out = vec![0u8; len / 48 * 64];
                // SAFETY: the CPU has the features; `out` holds `len / 48 * 64` bytes.
                let done = unsafe { avx512::encode(data, out.as_mut_ptr()) };
                assert_eq!(done, len / 48 * 48);
            }
            check_encoders(data);
        }
        // SAFETY: the mapping made above, no longer borrowed.
        assert_eq!(unsafe { munmap(base, 2 * PAGE) }, 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(64))]
        #[test]
        fn encoders_agree_with_the_base64_crate_on_large_data(
            len in 0usize..100_000,
            seed in proptest::num::u64::ANY,
        ) {
            check_encoders(&noise(len, seed));
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
