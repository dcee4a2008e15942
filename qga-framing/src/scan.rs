//! Finding the bytes that matter inside a JSON string: `"`, `\`, the raw control
//! bytes (below 0x20, never valid there) and the sentinels 0xFE/0xFF; and classifying
//! the bytes that matter outside strings. Base64 payloads are megabytes of string with
//! none of them, so this is the framer's hot loop: 64 bytes per step with SSE2 (part
//! of every x86_64 CPU), a portable word-at-a-time loop elsewhere. Small messages
//! spend their time classifying blocks instead; where the CPU has AVX2 (checked once
//! per process), the decoder's lean path runs compiled for it, with the [`Avx2`]
//! classifier and a carry-less multiply for the in-string mask.

/// One 64-byte block, classified: bit k of each mask describes byte k.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Masks {
    /// `"`.
    pub(crate) quote: u64,
    /// `{`, `[`.
    pub(crate) open: u64,
    /// `}`, `]`.
    pub(crate) close: u64,
    /// `\`, 0xFE, 0xFF: the bytes the mask walk leaves to the byte loop.
    pub(crate) stop: u64,
    /// Bytes below 0x20 but LF, or from 0x80 up: the ones that may be stray (a
    /// control byte inside a string; outside one, a control byte but TAB and CR, or
    /// a high byte), which the caller checks one by one. Rare in ASCII traffic.
    pub(crate) odd: u64,
    /// Line feeds: stray inside a string, whitespace outside one. They follow most
    /// messages, so they get a mask of their own rather than a check each.
    pub(crate) lf: u64,
}

/// Classifies the bytes `buf[at..at + 64]` that matter outside strings (fewer at the
/// end of `buf`: the bits past its end are clear). `at` must be below `buf.len()`.
#[inline]
pub(crate) fn classify(buf: &[u8], at: usize) -> Masks {
    #[cfg(target_arch = "x86_64")]
    {
        sse2::classify(buf, at)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        scalar_classify(buf, at)
    }
}

/// The block classifier and the prefix XOR the lean path uses, chosen once per
/// decoder: [`Baseline`] on any CPU, [`Avx2`] where the CPU has AVX2, BMI1/2 and
/// PCLMULQDQ. Both give the same results. The methods are inlined, so they take on
/// the target features of the function they end up in.
pub(crate) trait Simd: Copy {
    /// [`classify`].
    fn classify(self, buf: &[u8], at: usize) -> Masks;
    /// Bit k of the result is the parity of bits 0..=k of `x`.
    fn prefix_xor(self, x: u64) -> u64;
}

/// What every target has: SSE2 on x86_64, a portable loop elsewhere.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Baseline;

impl Simd for Baseline {
    #[inline(always)]
    fn classify(self, buf: &[u8], at: usize) -> Masks {
        classify(buf, at)
    }

    #[inline(always)]
    fn prefix_xor(self, mut x: u64) -> u64 {
        x ^= x << 1;
        x ^= x << 2;
        x ^= x << 4;
        x ^= x << 8;
        x ^= x << 16;
        x ^= x << 32;
        x
    }
}

/// AVX2 (32 bytes per compare: half the mask extractions of SSE2) and a carry-less
/// multiply for the prefix XOR (one instruction instead of a chain of twelve). A
/// value of this type is proof that the CPU has AVX2, BMI1, BMI2 and PCLMULQDQ:
/// only [`Avx2::detect`] makes one. Its methods are meant to be inlined into
/// functions compiled with those features.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx2(());

#[cfg(target_arch = "x86_64")]
impl Avx2 {
    /// The token, if this CPU has AVX2, BMI1, BMI2 and PCLMULQDQ. Asked of the CPU
    /// once per process: a decoder is made per connection (per message, in a bench).
    #[inline]
    pub(crate) fn detect() -> Option<Avx2> {
        use std::sync::atomic::{AtomicU8, Ordering};
        // 0: not asked yet, 1: no, 2: yes.
        static ANSWER: AtomicU8 = AtomicU8::new(0);
        #[cold]
        fn ask() -> bool {
            let yes = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("bmi1")
                && std::arch::is_x86_feature_detected!("bmi2")
                && std::arch::is_x86_feature_detected!("pclmulqdq");
            ANSWER.store(1 + u8::from(yes), Ordering::Relaxed);
            yes
        }
        let yes = match ANSWER.load(Ordering::Relaxed) {
            0 => ask(),
            answer => answer == 2,
        };
        yes.then_some(Avx2(()))
    }
}

#[cfg(target_arch = "x86_64")]
impl Simd for Avx2 {
    #[inline(always)]
    fn classify(self, buf: &[u8], at: usize) -> Masks {
        if at + 64 <= buf.len() {
            // SAFETY: `self` proves the CPU has AVX2.
            unsafe { avx2::classify(buf, at) }
        } else {
            // The tail of the buffer: the SSE2 path handles a short block. Out of
            // line, so its constants are not loaded on every call of the caller.
            #[cold]
            #[inline(never)]
            fn tail(buf: &[u8], at: usize) -> Masks {
                classify(buf, at)
            }
            tail(buf, at)
        }
    }

    #[inline(always)]
    fn prefix_xor(self, x: u64) -> u64 {
        // SAFETY: `self` proves the CPU has PCLMULQDQ.
        unsafe { avx2::prefix_xor(x) }
    }
}

/// Byte-at-a-time reference implementation of [`classify`].
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
pub(crate) fn scalar_classify(buf: &[u8], at: usize) -> Masks {
    let mut m = Masks::default();
    for (k, &b) in buf[at..].iter().take(64).enumerate() {
        let bit = 1u64 << k;
        match b {
            b'"' => m.quote |= bit,
            b'{' | b'[' => m.open |= bit,
            b'}' | b']' => m.close |= bit,
            b'\\' | 0xFE | 0xFF => m.stop |= bit,
            _ => {}
        }
        if b == b'\n' {
            m.lf |= bit;
        } else if !(0x20..0x80).contains(&b) {
            m.odd |= bit;
        }
    }
    m
}

/// A byte that cannot start a token outside strings and is never part of one: a
/// control byte other than TAB, LF and CR, or a byte from 0x80 to 0xFD. (0xFE and
/// 0xFF are the sentinels, handled on their own.)
#[inline]
pub(crate) fn is_stray_outside_string(b: u8) -> bool {
    (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || (0x80..0xFE).contains(&b)
}

/// Index of the first `"`, `\`, control byte (below 0x20), 0xFE or 0xFF in `hay`.
#[inline]
pub(crate) fn string_special(hay: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE2 is part of the x86_64 baseline: every x86_64 CPU has it, so
        // the target feature this function is compiled with is always available.
        unsafe { sse2::string_special(hay) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        swar_string_special(hay)
    }
}

#[inline]
fn is_special(b: u8) -> bool {
    b == b'"' || b == b'\\' || !(0x20..0xFE).contains(&b)
}

/// Byte-at-a-time reference implementation (the oracle in tests, and the tail loop).
#[inline]
pub(crate) fn scalar_string_special(hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| is_special(b))
}

/// Word-at-a-time version for targets without the SSE2 path.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
pub(crate) fn swar_string_special(hay: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    #[inline]
    fn has_zero(v: u64) -> u64 {
        v.wrapping_sub(LO) & !v & HI
    }
    /// Flags the bytes below 0x20 (and, like `has_zero`, possibly bytes after one).
    #[inline]
    fn has_ctrl(v: u64) -> u64 {
        v.wrapping_sub(LO * 0x20) & !v & HI
    }
    let mut chunks = hay.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let hit = has_zero(x ^ (LO * u64::from(b'"')))
            | has_zero(x ^ (LO * u64::from(b'\\')))
            | has_zero((x & (LO * 0xFE)) ^ (LO * 0xFE))
            | has_ctrl(x);
        if hit != 0 {
            // has_zero can flag a byte after a true hit, never before one: take the
            // first true hit by checking bytes in order.
            return scalar_string_special(chunk).map(|i| offset + i);
        }
        offset += 8;
    }
    scalar_string_special(chunks.remainder()).map(|i| offset + i)
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi8, _mm_andnot_si128, _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128,
        _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8, _mm_setzero_si128,
    };

    use super::Masks;

    // SSE2 is part of the x86_64 baseline, so these are safe to call from any
    // x86_64 code (the target feature is always enabled). The classifier carries no
    // `target_feature` attribute of its own, so it can be inlined everywhere,
    // including into the AVX2 path for a buffer's short tail (compiled there with
    // VEX encodings: no call, no switch between SSE and AVX states).

    /// [`super::classify`], 16 bytes per step. A last, partial step loads the last 16
    /// bytes of `buf` instead (overlapping bytes already seen) and shifts the unwanted
    /// ones out, so nothing is copied unless all of `buf` is shorter than 16 bytes.
    #[inline(always)]
    pub(crate) fn classify(buf: &[u8], at: usize) -> Masks {
        // SAFETY: SSE2 is part of the x86_64 baseline: every x86_64 CPU has it and
        // every x86_64 target enables it, so its intrinsics are always available.
        unsafe {
            let quote = _mm_set1_epi8(b'"' as i8);
            let backslash = _mm_set1_epi8(b'\\' as i8);
            let fe = _mm_set1_epi8(0xFEu8 as i8);
            // Folds `{` onto `[` and `}` onto `]` (they differ only in bit 0x20); also
            // the bound of the signed compare for odd bytes.
            let x20 = _mm_set1_epi8(0x20);
            let lf = _mm_set1_epi8(b'\n' as i8);
            let open = _mm_set1_epi8(b'{' as i8);
            let close = _mm_set1_epi8(b'}' as i8);
            let mut m = Masks::default();
            // Backslashes, sentinels and odd bytes are rare in ASCII traffic (line feeds
            // have their own mask): one test over the block finds whether there are
            // any, and only then are their bits worked out and gathered.
            // Blocks past the end of `buf` stay spaces, which are neither.
            let mut blocks = [_mm_set1_epi8(b' ' as i8); 4];
            let mut drops = [0u32; 4];
            let mut any_rare = _mm_setzero_si128();
            let odd = |v: __m128i, is_lf: __m128i| {
                // Signed, 0x80 and up are negative: one compare flags them and the
                // bytes below 0x20.
                _mm_andnot_si128(is_lf, _mm_cmplt_epi8(v, x20))
            };
            // One 16-byte step: block `k` is `v`, whose first `drop` bytes were seen.
            macro_rules! step {
                ($k:expr, $v:expr, $drop:expr) => {{
                    let (k, v, drop): (usize, __m128i, usize) = ($k, $v, $drop);
                    let folded = _mm_or_si128(v, x20);
                    let bits =
                        |x: __m128i| u64::from(_mm_movemask_epi8(x) as u16 >> drop) << (16 * k);
                    m.quote |= bits(_mm_cmpeq_epi8(v, quote));
                    m.open |= bits(_mm_cmpeq_epi8(folded, open));
                    m.close |= bits(_mm_cmpeq_epi8(folded, close));
                    let is_lf = _mm_cmpeq_epi8(v, lf);
                    m.lf |= bits(is_lf);
                    // A sentinel is a high byte, so backslashes and odd bytes cover
                    // every stop.
                    let rare = _mm_or_si128(_mm_cmpeq_epi8(v, backslash), odd(v, is_lf));
                    any_rare = _mm_or_si128(any_rare, rare);
                    blocks[k] = v;
                    drops[k] = drop as u32;
                }};
            }
            let len = buf.len();
            if at + 64 <= len {
                // The common case, straight-line.
                step!(0, load(buf, at), 0);
                step!(1, load(buf, at + 16), 0);
                step!(2, load(buf, at + 32), 0);
                step!(3, load(buf, at + 48), 0);
            } else {
                let mut short = [b' '; 16];
                for k in 0..4 {
                    let p = at + 16 * k;
                    if p >= len {
                        break;
                    }
                    let (v, drop) = if p + 16 <= len {
                        (load(buf, p), 0)
                    } else if len >= 16 {
                        (load(buf, len - 16), p - (len - 16))
                    } else {
                        // All of `buf` is shorter than one step: pad a copy with spaces.
                        short[..len - p].copy_from_slice(&buf[p..]);
                        (load(&short, 0), 0)
                    };
                    step!(k, v, drop);
                }
            }
            if _mm_movemask_epi8(any_rare) != 0 {
                for k in 0..4 {
                    let v = blocks[k];
                    let stop = _mm_or_si128(
                        _mm_cmpeq_epi8(v, backslash),
                        _mm_cmpeq_epi8(_mm_max_epu8(v, fe), v),
                    );
                    let bits =
                        |x: __m128i| u64::from(_mm_movemask_epi8(x) as u16 >> drops[k]) << (16 * k);
                    m.stop |= bits(stop);
                    m.odd |= bits(odd(v, _mm_cmpeq_epi8(v, lf)));
                }
            }
            m
        }
    }

    /// The bytes that matter inside a string: `"`, `\\`, below 0x20, 0xFE, 0xFF.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn special(v: __m128i) -> __m128i {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        // Adding 0x82 (wrapping) maps 0xFE, 0xFF, 0x00..=0x1F onto 0x80..=0xA1, the
        // lowest signed values, and every other byte above them: one signed compare
        // finds the controls and the sentinels.
        let t = _mm_add_epi8(v, _mm_set1_epi8(0x82u8 as i8));
        let ctrl_or_sentinel = _mm_cmplt_epi8(t, _mm_set1_epi8(0xA2u8 as i8));
        _mm_or_si128(
            _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
            ctrl_or_sentinel,
        )
    }

    #[inline(always)]
    fn load(hay: &[u8], at: usize) -> __m128i {
        let block = &hay[at..at + 16];
        // SAFETY: `block` is exactly 16 readable bytes (the slice index above checked
        // the bounds), `_mm_loadu_si128` has no alignment requirement, and SSE2 is
        // part of the x86_64 baseline.
        unsafe { _mm_loadu_si128(block.as_ptr().cast::<__m128i>()) }
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    pub(crate) fn string_special(hay: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i + 64 <= hay.len() {
            let (a, b, c, d) = (
                special(load(hay, i)),
                special(load(hay, i + 16)),
                special(load(hay, i + 32)),
                special(load(hay, i + 48)),
            );
            let any = _mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d));
            if _mm_movemask_epi8(any) != 0 {
                for (k, v) in [a, b, c, d].into_iter().enumerate() {
                    let mask = _mm_movemask_epi8(v);
                    if mask != 0 {
                        return Some(i + 16 * k + mask.trailing_zeros() as usize);
                    }
                }
            }
            i += 64;
        }
        while i + 16 <= hay.len() {
            let mask = _mm_movemask_epi8(special(load(hay, i)));
            if mask != 0 {
                return Some(i + mask.trailing_zeros() as usize);
            }
            i += 16;
        }
        super::scalar_string_special(&hay[i..]).map(|k| i + k)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_andnot_si256, _mm256_cmpeq_epi8, _mm256_cmpgt_epi8,
        _mm256_loadu_si256, _mm256_max_epu8, _mm256_movemask_epi8, _mm256_or_si256,
        _mm256_set1_epi8, _mm_clmulepi64_si128, _mm_cvtsi128_si64, _mm_cvtsi64_si128,
        _mm_set1_epi8,
    };

    use super::Masks;

    /// [`super::classify`] for a full block (`at + 64 <= buf.len()`), 32 bytes per
    /// compare.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn classify(buf: &[u8], at: usize) -> Masks {
        let block = &buf[at..at + 64];
        // SAFETY: `block` is exactly 64 readable bytes (the slice index above checked
        // the bounds), and `_mm256_loadu_si256` has no alignment requirement.
        let (lo, hi): (__m256i, __m256i) = unsafe {
            (
                _mm256_loadu_si256(block.as_ptr().cast()),
                _mm256_loadu_si256(block.as_ptr().add(32).cast()),
            )
        };
        let x20 = _mm256_set1_epi8(0x20);
        let lf = _mm256_set1_epi8(b'\n' as i8);
        let backslash = _mm256_set1_epi8(b'\\' as i8);
        let bits = |x: __m256i, y: __m256i| {
            u64::from(_mm256_movemask_epi8(x) as u32)
                | u64::from(_mm256_movemask_epi8(y) as u32) << 32
        };
        let eq = |c: u8| {
            let c = _mm256_set1_epi8(c as i8);
            bits(_mm256_cmpeq_epi8(lo, c), _mm256_cmpeq_epi8(hi, c))
        };
        // `{` and `[` (and `}` and `]`) differ only in bit 0x20.
        let (flo, fhi) = (_mm256_or_si256(lo, x20), _mm256_or_si256(hi, x20));
        let folded_eq = |c: u8| {
            let c = _mm256_set1_epi8(c as i8);
            bits(_mm256_cmpeq_epi8(flo, c), _mm256_cmpeq_epi8(fhi, c))
        };
        let (lf_lo, lf_hi) = (_mm256_cmpeq_epi8(lo, lf), _mm256_cmpeq_epi8(hi, lf));
        // Signed, 0x80 and up are negative: one compare flags them and the bytes
        // below 0x20; line feeds have their own mask.
        let odd =
            |v: __m256i, is_lf: __m256i| _mm256_andnot_si256(is_lf, _mm256_cmpgt_epi8(x20, v));
        let (odd_lo, odd_hi) = (odd(lo, lf_lo), odd(hi, lf_hi));
        let mut m = Masks {
            quote: eq(b'"'),
            open: folded_eq(b'{'),
            close: folded_eq(b'}'),
            stop: 0,
            odd: 0,
            lf: bits(lf_lo, lf_hi),
        };
        // A sentinel is a high byte, so backslashes and odd bytes cover every stop.
        let rare = _mm256_or_si256(
            _mm256_or_si256(_mm256_cmpeq_epi8(lo, backslash), odd_lo),
            _mm256_or_si256(_mm256_cmpeq_epi8(hi, backslash), odd_hi),
        );
        if _mm256_movemask_epi8(rare) != 0 {
            let fe = _mm256_set1_epi8(0xFEu8 as i8);
            let stop = |v: __m256i| {
                _mm256_or_si256(
                    _mm256_cmpeq_epi8(v, backslash),
                    _mm256_cmpeq_epi8(_mm256_max_epu8(v, fe), v),
                )
            };
            m.stop = bits(stop(lo), stop(hi));
            m.odd = bits(odd_lo, odd_hi);
        }
        m
    }

    /// Bit k of the result is the parity of bits 0..=k of `x`: a carry-less
    /// multiply by all ones.
    #[inline]
    #[target_feature(enable = "pclmulqdq")]
    pub(crate) fn prefix_xor(x: u64) -> u64 {
        let product: __m128i =
            _mm_clmulepi64_si128(_mm_cvtsi64_si128(x as i64), _mm_set1_epi8(-1), 0);
        _mm_cvtsi128_si64(product) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_each_special_byte_at_every_offset() {
        for special in [b'"', b'\\', 0xFE, 0xFF, 0x00, 0x01, b'\t', b'\n', 0x1F] {
            for len in [0usize, 1, 15, 16, 17, 63, 64, 65, 200] {
                for at in 0..len {
                    let mut hay = vec![b'A'; len];
                    hay[at] = special;
                    assert_eq!(string_special(&hay), Some(at), "{special:#x} at {at}/{len}");
                    assert_eq!(swar_string_special(&hay), Some(at));
                }
                assert_eq!(string_special(&vec![b'A'; len]), None);
            }
        }
    }

    #[test]
    fn classifies_each_byte_value_at_every_position() {
        for b in 0..=255u8 {
            for at in 0..64 {
                let mut block = [b'A'; 64];
                block[at] = b;
                let m = classify(&block, 0);
                assert_eq!(m, scalar_classify(&block, 0), "{b:#x} at {at}");

                let bit = 1u64 << at;
                let expect = |set: bool| if set { bit } else { 0 };
                assert_eq!(m.quote, expect(b == b'"'), "{b:#x}");
                assert_eq!(m.open, expect(b"{[".contains(&b)), "{b:#x}");
                assert_eq!(m.close, expect(b"}]".contains(&b)), "{b:#x}");
                assert_eq!(m.stop, expect(b == b'\\' || b >= 0xFE), "{b:#x}");
                // Line feeds have a mask of their own; the other controls and the
                // high bytes are odd.
                assert_eq!(m.lf, expect(b == b'\n'), "{b:#x}");
                assert_eq!(
                    m.odd,
                    expect(!(0x20..0x80).contains(&b) && b != b'\n'),
                    "{b:#x}"
                );
            }
        }
    }

    #[test]
    fn prefix_xor_is_the_running_parity() {
        let parity = |x: u64, k: u32| (x & (u64::MAX >> (63 - k))).count_ones() % 2 == 1;
        for x in [
            0,
            1,
            u64::MAX,
            0x8000_0000_0000_0001,
            0x0123_4567_89AB_CDEF,
            0x2222_0000_2020,
        ] {
            let p = Baseline.prefix_xor(x);
            for k in 0..64 {
                assert_eq!(p >> k & 1 == 1, parity(x, k), "{x:#x} bit {k}");
            }
            #[cfg(target_arch = "x86_64")]
            if let Some(avx2) = Avx2::detect() {
                assert_eq!(avx2.prefix_xor(x), p, "{x:#x}");
            }
        }
    }

    /// The AVX2 classifier, for each byte value at each position of a block, and at
    /// each start in a longer buffer (so both 32-byte halves and the tail fallback
    /// are covered).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_classifies_each_byte_value_at_every_position() {
        let Some(avx2) = Avx2::detect() else {
            eprintln!("this CPU has no AVX2: nothing to test");
            return;
        };
        for b in 0..=255u8 {
            for at in 0..64 {
                let mut block = [b'A'; 64];
                block[at] = b;
                assert_eq!(
                    avx2.classify(&block, 0),
                    scalar_classify(&block, 0),
                    "{b:#x} at {at}"
                );
            }
            let mut hay = [b' '; 100];
            hay[37] = b;
            for at in 0..hay.len() {
                assert_eq!(
                    avx2.classify(&hay, at),
                    scalar_classify(&hay, at),
                    "{b:#x}, from {at}"
                );
            }
        }
    }

    proptest! {
        #[cfg(target_arch = "x86_64")]
        #[test]
        fn avx2_agrees_with_the_scalar_oracle(
            hay in proptest::collection::vec(prop_oneof![
                4 => 0x20u8..0x7F, 1 => Just(b'"'), 1 => Just(b'\\'), 1 => Just(b'{'),
                1 => Just(b']'), 1 => Just(b'\n'), 1 => 0x80u8..=0xFF, 1 => 0x00u8..0x20
            ], 1..200),
            at in 0usize..200,
            x in any::<u64>(),
        ) {
            if let Some(avx2) = Avx2::detect() {
                let at = at % hay.len();
                prop_assert_eq!(avx2.classify(&hay, at), scalar_classify(&hay, at));
                prop_assert_eq!(avx2.prefix_xor(x), Baseline.prefix_xor(x));
            }
        }

        #[test]
        fn fast_paths_agree_with_the_scalar_oracle(
            hay in proptest::collection::vec(prop_oneof![
                8 => 0x20u8..0x7F, 1 => Just(b'"'), 1 => Just(b'\\'), 1 => 0x80u8..=0xFF,
                1 => 0x00u8..0x20
            ], 0..300)
        ) {
            prop_assert_eq!(string_special(&hay), scalar_string_special(&hay));
            prop_assert_eq!(swar_string_special(&hay), scalar_string_special(&hay));
        }

        #[test]
        fn classify_agrees_with_the_scalar_oracle(
            hay in proptest::collection::vec(prop_oneof![
                4 => 0x20u8..0x7F, 1 => Just(b'"'), 1 => Just(b'\\'), 1 => Just(b'{'),
                1 => Just(b']'), 1 => 0x80u8..=0xFF, 1 => 0x00u8..0x20
            ], 1..200),
            at in 0usize..200,
        ) {
            // Every start and length, so the short and overlapping tails are covered.
            let at = at % hay.len();
            prop_assert_eq!(classify(&hay, at), scalar_classify(&hay, at));
        }
    }
}
