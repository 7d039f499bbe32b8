//! Pre-tokenization: splitting text into the pieces that BPE merges never cross.
//!
//! The two built-in patterns are exactly tiktoken's `pat_str` strings. Matching them with a backtracking
//! regex engine (`fancy-regex`, as tiktoken does) costs ~20-40 MB/s and dominates both training and
//! encoding, so each gets a hand-written scanner here whose pieces are identical to the regex's on any
//! text (proved against `fancy-regex` by the proptest suite in `pretok/tests.rs` and by the fuzz target
//! in `rust/fuzz`). Any other pattern is compiled with `fancy-regex` and used as is.
//!
//! Character classes (`\p{L}`, `\p{N}`, `\s` and the `(?i)` case folds of the contractions) are read
//! from `regex-syntax`, the very tables `fancy-regex` matches with, so the scanners cannot drift from
//! the regex when the Unicode version changes.

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

/// `cl100k_base`'s `pat_str` (tiktoken), the GPT-4 pattern.
pub const GPT4_PATTERN: &str = r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s";

/// `r50k_base`'s `pat_str` (tiktoken), the GPT-2 pattern.
pub const GPT2_PATTERN: &str =
    r"'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s";

/// How text is cut into pieces before BPE.
#[derive(Clone, Debug)]
pub enum Pretokenizer {
    /// [`GPT4_PATTERN`] through its scanner.
    Gpt4,
    /// [`GPT2_PATTERN`] through its scanner.
    Gpt2,
    /// Any other regex, matched with `fancy-regex`. As in tiktoken, text that no match covers is dropped,
    /// and empty matches yield no piece.
    Custom {
        regex: fancy_regex::Regex,
        pattern: String,
    },
}

impl Pretokenizer {
    /// `"gpt4"`/`"gpt2"` (or their exact pattern strings) select the fast scanners; anything else
    /// compiles as a custom regex.
    pub fn new(pattern: &str) -> Result<Self, String> {
        match pattern {
            "gpt4" | GPT4_PATTERN => Ok(Pretokenizer::Gpt4),
            "gpt2" | GPT2_PATTERN => Ok(Pretokenizer::Gpt2),
            "" => Err("the pre-tokenization pattern is empty".to_string()),
            _ => match fancy_regex::Regex::new(pattern) {
                Ok(regex) => Ok(Pretokenizer::Custom {
                    regex,
                    pattern: pattern.to_string(),
                }),
                Err(e) => Err(format!("invalid pre-tokenization pattern {pattern:?}: {e}")),
            },
        }
    }

    /// The exact pattern string (tiktoken's `pat_str` for the built-in ones).
    pub fn pattern(&self) -> &str {
        match self {
            Pretokenizer::Gpt4 => GPT4_PATTERN,
            Pretokenizer::Gpt2 => GPT2_PATTERN,
            Pretokenizer::Custom { pattern, .. } => pattern,
        }
    }

    /// `Some("gpt4")`/`Some("gpt2")` for the built-in patterns, `None` for a custom one.
    pub fn name(&self) -> Option<&'static str> {
        match self {
            Pretokenizer::Gpt4 => Some("gpt4"),
            Pretokenizer::Gpt2 => Some("gpt2"),
            Pretokenizer::Custom { .. } => None,
        }
    }

    /// Calls `f` for each piece, in order. With a built-in pattern the pieces concatenate back to `text`.
    /// Errs only when a custom regex fails at run time (e.g. its backtracking limit).
    pub fn for_each_piece<'a, F: FnMut(&'a str)>(
        &self,
        text: &'a str,
        mut f: F,
    ) -> Result<(), String> {
        match self {
            Pretokenizer::Gpt4 => {
                scan(text, Tables::get(), gpt4_piece_end, f);
                Ok(())
            }
            Pretokenizer::Gpt2 => {
                scan(text, Tables::get(), gpt2_piece_end, f);
                Ok(())
            }
            Pretokenizer::Custom { regex, pattern } => {
                for m in regex.find_iter(text) {
                    let m =
                        m.map_err(|e| format!("pattern {pattern:?} failed on the input: {e}"))?;
                    if !m.as_str().is_empty() {
                        f(m.as_str());
                    }
                }
                Ok(())
            }
        }
    }

    /// The pieces of `text`, in order.
    pub fn pieces<'a>(&self, text: &'a str) -> Result<Vec<&'a str>, String> {
        let mut out = Vec::new();
        self.for_each_piece(text, |p| out.push(p))?;
        Ok(out)
    }
}

// Class bits of one character. L, N and S are the Unicode classes `\p{L}`, `\p{N}` and `\s` (pairwise
// disjoint); the others single out the ASCII characters the patterns name literally.
const L: u8 = 1;
const N: u8 = 2;
const S: u8 = 4;
/// `\r` or `\n`.
const NL: u8 = 8;
/// U+0020, the optional space of ` ?...`.
const SP: u8 = 16;
/// `'`, which starts a contraction.
const APOS: u8 = 32;
/// Everything `[^\s\p{L}\p{N}]` is: a character with none of these bits.
const LNS: u8 = L | N | S;

/// Per-character class bits for all of Unicode, as a two-level table (256-character blocks, identical
/// blocks shared), plus a flat copy for ASCII: the common case costs one load.
struct Tables {
    ascii: [u8; 128],
    index: Vec<u16>,
    blocks: Vec<u8>,
    /// Each character that `(?i)` folds onto one of the contraction letters, with that lowercase letter.
    folds: Vec<(char, u8)>,
}

/// The characters of a regex-syntax class such as `\p{L}`, as inclusive ranges.
fn class_ranges(re: &str) -> Vec<(u32, u32)> {
    let hir = regex_syntax::Parser::new()
        .parse(re)
        .expect("built-in class parses");
    match hir.kind() {
        HirKind::Class(Class::Unicode(c)) => c
            .ranges()
            .iter()
            .map(|r| (r.start() as u32, r.end() as u32))
            .collect(),
        HirKind::Literal(lit) => {
            let c = std::str::from_utf8(&lit.0)
                .expect("literal is UTF-8")
                .chars()
                .next()
                .expect("literal is one char") as u32;
            vec![(c, c)]
        }
        other => panic!("unexpected class for {re}: {other:?}"),
    }
}

impl Tables {
    fn get() -> &'static Tables {
        static TABLES: OnceLock<Tables> = OnceLock::new();
        TABLES.get_or_init(Tables::build)
    }

    fn build() -> Tables {
        let mut flat = vec![0u8; 0x11_0000];
        for (re, bit) in [(r"\p{L}", L), (r"\p{N}", N), (r"\s", S)] {
            for (lo, hi) in class_ranges(re) {
                for c in lo..=hi {
                    flat[c as usize] |= bit;
                }
            }
        }
        flat[b'\r' as usize] |= NL;
        flat[b'\n' as usize] |= NL;
        flat[b' ' as usize] |= SP;
        flat[b'\'' as usize] |= APOS;

        let mut ascii = [0u8; 128];
        ascii.copy_from_slice(&flat[..128]);
        // `letters_end` classifies ASCII letters arithmetically; that is only right if these agree.
        assert!((0..128u8).all(|b| (ascii[b as usize] & L != 0) == b.is_ascii_alphabetic()));
        let mut index = Vec::with_capacity(flat.len() / 256);
        let mut blocks: Vec<u8> = Vec::new();
        let mut seen: ahash::AHashMap<&[u8], u16> = ahash::AHashMap::new();
        for block in flat.chunks(256) {
            let id = *seen.entry(block).or_insert_with(|| {
                blocks.extend_from_slice(block);
                (blocks.len() / 256 - 1) as u16
            });
            index.push(id);
        }

        let mut folds = Vec::new();
        for letter in "sdmtlver".bytes() {
            for (lo, hi) in class_ranges(&format!("(?i){}", letter as char)) {
                for c in lo..=hi {
                    folds.push((char::from_u32(c).expect("scalar value"), letter));
                }
            }
        }
        Tables {
            ascii,
            index,
            blocks,
            folds,
        }
    }

    #[inline(always)]
    fn class_of(&self, cp: u32) -> u8 {
        let block = self.index[(cp >> 8) as usize] as usize;
        self.blocks[(block << 8) | (cp & 0xFF) as usize]
    }

    /// Class bits and UTF-8 length of the character starting at byte `i`.
    #[inline(always)]
    fn at(&self, b: &[u8], i: usize) -> (u8, usize) {
        let b0 = b[i];
        if b0 < 0x80 {
            (self.ascii[b0 as usize], 1)
        } else {
            let (cp, len) = decode(b, i);
            (self.class_of(cp), len)
        }
    }

    /// End of the longest run from byte `i` of characters whose class bits satisfy `keep`.
    #[inline(always)]
    fn run_end(&self, b: &[u8], mut i: usize, keep: impl Fn(u8) -> bool) -> usize {
        // ASCII bytes take the short loop; anything else is decoded.
        while i < b.len() {
            let b0 = b[i];
            if b0 < 0x80 {
                if !keep(self.ascii[b0 as usize]) {
                    break;
                }
                i += 1;
            } else {
                let (cp, len) = decode(b, i);
                if !keep(self.class_of(cp)) {
                    break;
                }
                i += len;
            }
        }
        i
    }

    /// End of the run of `\p{L}` from byte `i`. Words are most of any text, so ASCII letters are
    /// classified eight at a time (SWAR); the first other byte hands over to the per-character loop.
    #[inline(always)]
    fn letters_end(&self, b: &[u8], mut i: usize) -> usize {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        while let Some(chunk) = b.get(i..i + 8) {
            let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            // Fold case (| 0x20), then a byte is a letter iff 0x61 <= it <= 0x7A; the adds cannot carry
            // across bytes because each byte is first cut to 7 bits. Non-ASCII bytes never count.
            let lower = (w | (0x20 * ONES)) & !HIGH;
            let ge_a = lower + (0x80 - 0x61) * ONES;
            let gt_z = lower + (0x80 - 0x7B) * ONES;
            let not_letter = !(ge_a & !gt_z & !w) & HIGH;
            if not_letter != 0 {
                i += (not_letter.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        self.run_end(b, i, |c| c & L != 0)
    }

    /// The lowercase contraction letter that `(?i)` folds the character at byte `i` onto, if any.
    fn fold_at(&self, b: &[u8], i: usize) -> Option<(u8, usize)> {
        if i >= b.len() {
            return None;
        }
        let (cp, len) = decode(b, i);
        let c = char::from_u32(cp)?;
        self.folds
            .iter()
            .find(|&&(f, _)| f == c)
            .map(|&(_, letter)| (letter, len))
    }
}

/// Decodes the character starting at byte `i` of valid UTF-8: (scalar value, length in bytes).
#[inline(always)]
fn decode(b: &[u8], i: usize) -> (u32, usize) {
    let b0 = b[i] as u32;
    if b0 < 0x80 {
        (b0, 1)
    } else if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | (b[i + 1] as u32 & 0x3F), 2)
    } else if b0 < 0xF0 {
        (
            ((b0 & 0x0F) << 12) | ((b[i + 1] as u32 & 0x3F) << 6) | (b[i + 2] as u32 & 0x3F),
            3,
        )
    } else {
        (
            ((b0 & 0x07) << 18)
                | ((b[i + 1] as u32 & 0x3F) << 12)
                | ((b[i + 2] as u32 & 0x3F) << 6)
                | (b[i + 3] as u32 & 0x3F),
            4,
        )
    }
}

/// Drives a piece scanner over `text`: `piece_end(tables, bytes, i)` returns where the piece starting at
/// byte `i` ends (always on a character boundary, always past `i`).
#[inline(always)]
fn scan<'a, F: FnMut(&'a str)>(
    text: &'a str,
    t: &Tables,
    piece_end: impl Fn(&Tables, &[u8], usize) -> usize,
    mut f: F,
) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let e = piece_end(t, b, i);
        f(&text[i..e]);
        i = e;
    }
}

/// End of the whitespace piece of GPT-2 and GPT-4 that starts at byte `i` (a whitespace character),
/// once the letter/punctuation alternatives have failed there.
#[inline(always)]
fn whitespace_end(t: &Tables, b: &[u8], i: usize, gpt4: bool) -> usize {
    let e = t.run_end(b, i, |c| c & S != 0);
    // `\s++$`: a run reaching the end of the text is one piece.
    if e == b.len() {
        return e;
    }
    // GPT-4's `\s*[\r\n]`: the greedy `\s*` backtracks to the run's last newline. `\r`/`\n` never occur
    // inside a multi-byte UTF-8 sequence, so a byte search is exact.
    if gpt4 {
        if let Some(k) = b[i..e].iter().rposition(|&x| x == b'\r' || x == b'\n') {
            return i + k + 1;
        }
    }
    // `\s+(?!\S)`: the run minus its last character (which then prefixes the word after it), or, for a
    // one-character run, `\s` alone.
    let mut last = e - 1;
    while b[last] & 0xC0 == 0x80 {
        last -= 1;
    }
    if last > i {
        last
    } else {
        e
    }
}

/// GPT-4 (`cl100k_base`): end of the piece starting at byte `i`. The alternatives are tried in the
/// pattern's order; the character classes are disjoint, so most are settled by the first character.
#[inline(always)]
fn gpt4_piece_end(t: &Tables, b: &[u8], i: usize) -> usize {
    let n = b.len();
    let (c, len) = t.at(b, i);
    let j = i + len;
    // `[^\r\n\p{L}\p{N}]?+\p{L}++` with the optional character absent.
    if c & L != 0 {
        return t.letters_end(b, j);
    }
    // `\p{N}{1,3}+`.
    if c & N != 0 {
        let mut e = j;
        for _ in 0..2 {
            if e < n {
                let (c2, len2) = t.at(b, e);
                if c2 & N != 0 {
                    e += len2;
                    continue;
                }
            }
            break;
        }
        return e;
    }
    // `'(?i:[sdmt]|ll|ve|re)`, with the Unicode simple case folds `(?i)` implies (e.g. U+017F for s).
    if c & APOS != 0 {
        if let Some((l1, len1)) = t.fold_at(b, j) {
            if matches!(l1, b's' | b'd' | b'm' | b't') {
                return j + len1;
            }
            if let Some((l2, len2)) = t.fold_at(b, j + len1) {
                if matches!((l1, l2), (b'l', b'l') | (b'v', b'e') | (b'r', b'e')) {
                    return j + len1 + len2;
                }
            }
        }
    }
    if j < n {
        let (c2, len2) = t.at(b, j);
        // `[^\r\n\p{L}\p{N}]?+\p{L}++` with the optional character present (any non-newline whitespace
        // or punctuation before a word).
        if c & NL == 0 && c2 & L != 0 {
            return t.letters_end(b, j + len2);
        }
        // ` ?[^\s\p{L}\p{N}]++[\r\n]*+` with the space present.
        if c & SP != 0 && c2 & LNS == 0 {
            let e = t.run_end(b, j + len2, |c| c & LNS == 0);
            return t.run_end(b, e, |c| c & NL != 0);
        }
    }
    // ` ?[^\s\p{L}\p{N}]++[\r\n]*+` without the space.
    if c & S == 0 {
        let e = t.run_end(b, j, |c| c & LNS == 0);
        return t.run_end(b, e, |c| c & NL != 0);
    }
    whitespace_end(t, b, i, true)
}

/// GPT-2 (`r50k_base`): end of the piece starting at byte `i`, alternatives in the pattern's order.
#[inline(always)]
fn gpt2_piece_end(t: &Tables, b: &[u8], i: usize) -> usize {
    let n = b.len();
    let (c, len) = t.at(b, i);
    let j = i + len;
    if c & L != 0 {
        return t.letters_end(b, j);
    }
    if c & N != 0 {
        return t.run_end(b, j, |c| c & N != 0);
    }
    // `'(?:[sdmt]|ll|ve|re)`, case-sensitive.
    if c & APOS != 0 && j < n {
        match b[j] {
            b's' | b'd' | b'm' | b't' => return j + 1,
            b'l' | b'v' | b'r' if j + 1 < n => {
                if matches!((b[j], b[j + 1]), (b'l', b'l') | (b'v', b'e') | (b'r', b'e')) {
                    return j + 2;
                }
            }
            _ => {}
        }
    }
    // ` ?\p{L}++`, ` ?\p{N}++`, ` ?[^\s\p{L}\p{N}]++` with the space present.
    if c & SP != 0 && j < n {
        let (c2, len2) = t.at(b, j);
        if c2 & L != 0 {
            return t.letters_end(b, j + len2);
        }
        if c2 & N != 0 {
            return t.run_end(b, j + len2, |c| c & N != 0);
        }
        if c2 & LNS == 0 {
            return t.run_end(b, j + len2, |c| c & LNS == 0);
        }
    }
    // ` ?[^\s\p{L}\p{N}]++` without the space.
    if c & S == 0 {
        return t.run_end(b, j, |c| c & LNS == 0);
    }
    whitespace_end(t, b, i, false)
}

#[cfg(test)]
mod tests;
