//! Encoding text to ids with tiktoken's exact semantics.
//!
//! tiktoken merges, inside each piece, the adjacent pair of parts whose *concatenated bytes* have the
//! lowest rank (leftmost on ties), and returns a piece that is itself a token directly. We precompute
//! `pair_rank[(left id, right id)]` = rank of the token spelled by the two parts for every way of
//! splitting every token in two, so merging works on ids and never hashes byte strings.
//!
//! Fast paths, and why: most pieces are whole tokens (one hash lookup on a packed integer key, see
//! `packed`); frequent short non-token pieces hit a per-call cache; short pieces use tiktoken's simple
//! O(n^2) scan (fastest for small n); long pieces use a heap, and very long ones (a 10 MB run of
//! letters) a bucket queue, so the worst case stays linear in practice (see `long`).

mod long;

use crate::packed::{pack, pack_at, PACK_MAX};
use crate::pretok::Pretokenizer;
use crate::vocab::Vocab;
use crate::{invalid, Error, Result};
use ahash::AHashMap;
use std::cmp::Reverse;

const NO_RANK: u32 = u32::MAX;
/// Pieces longer than this use the heap merge (`long`).
const SCAN_MAX_LEN: usize = 128;
/// Pieces longer than this use the bucket merge (`long`), whose fixed cost is one bucket per rank.
const BUCKETS_MIN_LEN: usize = 1 << 16;
/// At most this many short non-token pieces are cached per call.
const CACHE_MAX_ENTRIES: usize = 1 << 16;

/// Which special tokens `encode` recognises, with tiktoken's meaning.
pub enum SpecialSet {
    All,
    Set(Vec<String>),
}

pub struct Specials {
    /// Specials encoded as their id when they occur in the text.
    pub allowed: SpecialSet,
    /// Strings whose presence in the text is an error ("all" = every special not allowed).
    pub disallowed: SpecialSet,
}

pub struct Encoder {
    /// Number of ranked tokens (bytes + merges).
    n_ranked: usize,
    pair_rank: AHashMap<u64, u32>,
    /// Ranked tokens of at most `PACK_MAX` bytes, by packed bytes.
    short_id: AHashMap<u128, u32>,
    long_id: AHashMap<Box<[u8]>, u32>,
}

#[inline]
fn key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

/// Scratch buffers and the piece cache (packed piece -> span of `cached`) for one encode call.
#[derive(Default)]
struct State {
    parts: Vec<u32>,
    ranks: Vec<u32>,
    cache: AHashMap<u128, (u32, u32)>,
    cached: Vec<u32>,
}

impl Encoder {
    pub fn new(vocab: &Vocab) -> Self {
        let n = vocab.n_ranked();
        let mut by_bytes: AHashMap<&[u8], u32> = AHashMap::with_capacity(n);
        let (mut short_id, mut long_id) = (AHashMap::with_capacity(n), AHashMap::new());
        for id in 0..n as u32 {
            let t = vocab.token_bytes(id).unwrap_or_default();
            by_bytes.insert(t, id);
            if t.len() <= PACK_MAX {
                short_id.insert(pack(t), id);
            } else {
                long_id.insert(Box::<[u8]>::from(t), id);
            }
        }
        // A token can only split where its prefix has the length of some token: trying just those
        // cuts keeps this cheap even for very long tokens (a run of 2^20 spaces has ~20 such cuts).
        let mut lengths: Vec<usize> = by_bytes.keys().map(|t| t.len()).collect();
        lengths.sort_unstable();
        lengths.dedup();
        let mut pair_rank = AHashMap::with_capacity(2 * n);
        for id in 256..n as u32 {
            let t = vocab.token_bytes(id).unwrap_or_default();
            for &cut in lengths.iter().take_while(|&&l| l < t.len()) {
                if let (Some(&l), Some(&r)) = (by_bytes.get(&t[..cut]), by_bytes.get(&t[cut..])) {
                    pair_rank.insert(key(l, r), id);
                }
            }
        }
        Encoder {
            n_ranked: n,
            pair_rank,
            short_id,
            long_id,
        }
    }

    #[inline]
    fn rank(&self, a: u32, b: u32) -> u32 {
        *self.pair_rank.get(&key(a, b)).unwrap_or(&NO_RANK)
    }

    /// Encode `text` as ordinary text (specials are not recognised), appending to `out`.
    pub fn encode_ordinary_into(
        &self,
        pretok: &Pretokenizer,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        let mut st = State::default();
        let base = text.as_ptr() as usize;
        pretok
            .for_each_piece(text, |p| {
                self.encode_piece(
                    text.as_bytes(),
                    p.as_ptr() as usize - base,
                    p.as_bytes(),
                    out,
                    &mut st,
                )
            })
            .map_err(Error::Invalid)
    }

    /// Encode `piece`, found at byte `off` of `text`.
    #[inline]
    fn encode_piece(
        &self,
        text: &[u8],
        off: usize,
        piece: &[u8],
        out: &mut Vec<u32>,
        st: &mut State,
    ) {
        if piece.len() > PACK_MAX {
            if let Some(&id) = self.long_id.get(piece) {
                out.push(id);
            } else if piece.len() <= SCAN_MAX_LEN {
                self.merge_scan(piece, out, st);
            } else if piece.len() < BUCKETS_MIN_LEN {
                self.merge_heap(piece, out);
            } else {
                self.merge_buckets(piece, out);
            }
            return;
        }
        let k = pack_at(text, off, piece.len());
        if let Some(&id) = self.short_id.get(&k) {
            out.push(id);
        } else if let Some(&(s, n)) = st.cache.get(&k) {
            out.extend_from_slice(&st.cached[s as usize..(s + n) as usize]);
        } else {
            let before = out.len();
            self.merge_scan(piece, out, st);
            if st.cache.len() < CACHE_MAX_ENTRIES {
                st.cache
                    .insert(k, (st.cached.len() as u32, (out.len() - before) as u32));
                st.cached.extend_from_slice(&out[before..]);
            }
        }
    }

    /// tiktoken's algorithm: rescan for the lowest-ranked adjacent pair, merge it, repeat.
    fn merge_scan(&self, piece: &[u8], out: &mut Vec<u32>, st: &mut State) {
        let parts = &mut st.parts;
        let ranks = &mut st.ranks;
        parts.clear();
        parts.extend(piece.iter().map(|&b| b as u32));
        ranks.clear();
        ranks.extend(parts.windows(2).map(|w| self.rank(w[0], w[1])));
        loop {
            let (mut best, mut at) = (NO_RANK, 0);
            for (i, &r) in ranks.iter().enumerate() {
                if r < best {
                    best = r;
                    at = i;
                }
            }
            if best == NO_RANK {
                break;
            }
            parts[at] = best;
            parts.remove(at + 1);
            ranks.remove(at);
            if at > 0 {
                ranks[at - 1] = self.rank(parts[at - 1], parts[at]);
            }
            if at < ranks.len() {
                ranks[at] = self.rank(parts[at], parts[at + 1]);
            }
        }
        out.extend_from_slice(parts);
    }

    /// tiktoken's `encode`: error on a disallowed special in the text; allowed specials become their id;
    /// the text between them is encoded as its own slice (so `$` in the pattern matches at its end).
    pub fn encode(
        &self,
        pretok: &Pretokenizer,
        vocab: &Vocab,
        text: &str,
        specials: &Specials,
    ) -> Result<Vec<u32>> {
        let allowed: Vec<(&str, u32)> = match &specials.allowed {
            SpecialSet::All => vocab.specials().collect(),
            SpecialSet::Set(set) => vocab
                .specials()
                .filter(|(s, _)| set.iter().any(|a| a == s))
                .collect(),
        };
        let disallowed: Vec<&str> = match &specials.disallowed {
            SpecialSet::All => vocab
                .specials()
                .map(|(s, _)| s)
                .filter(|s| !allowed.iter().any(|(a, _)| a == s))
                .collect(),
            SpecialSet::Set(set) => set
                .iter()
                .map(String::as_str)
                .filter(|s| !s.is_empty())
                .collect(),
        };
        if let Some((at, s)) = disallowed
            .iter()
            .filter_map(|s| text.find(s).map(|at| (at, *s)))
            .min()
        {
            return invalid(format!(
                "the text contains the disallowed special token {s:?} (at byte {at}); pass it in allowed_special \
                 to encode it as a special token, or disallowed_special=() to encode it as ordinary text"
            ));
        }
        let mut out = Vec::with_capacity(text.len() / 3);
        // Next occurrence (byte offset) of each allowed special at or after `pos`.
        let mut next: Vec<Option<usize>> = allowed.iter().map(|(s, _)| text.find(s)).collect();
        let mut pos = 0;
        loop {
            let mut best: Option<(usize, Reverse<usize>, usize)> = None;
            for (i, (s, _)) in allowed.iter().enumerate() {
                if matches!(next[i], Some(at) if at < pos) {
                    next[i] = text[pos..].find(s).map(|at| at + pos);
                }
                if let Some(at) = next[i] {
                    // Leftmost occurrence first; the longest special at the same position.
                    let cand = (at, Reverse(s.len()), i);
                    if best.is_none_or(|b| cand < b) {
                        best = Some(cand);
                    }
                }
            }
            let end = best.map_or(text.len(), |(at, _, _)| at);
            self.encode_ordinary_into(pretok, &text[pos..end], &mut out)?;
            match best {
                Some((at, Reverse(len), i)) => {
                    out.push(allowed[i].1);
                    pos = at + len;
                }
                None => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Vocab {
        // 256 "ab", 257 "bc", 258 "abc" (via ab + c), 259 "aa", 260 "aaaa"
        Vocab::new(
            vec![(97, 98), (98, 99), (256, 99), (97, 97), (259, 259)],
            vec!["<|x|>".into()],
        )
        .unwrap()
    }

    #[test]
    fn scan_and_heap_agree() {
        let v = vocab();
        let e = Encoder::new(&v);
        let mut st = State::default();
        for text in ["abcabc", "aaaaaaa", "abcbcaaaab", "a", "cbacbaaab"] {
            let long = text.repeat(40);
            let (mut x, mut y) = (vec![], vec![]);
            e.merge_scan(long.as_bytes(), &mut x, &mut st);
            e.merge_heap(long.as_bytes(), &mut y);
            assert_eq!(x, y, "{text}");
            assert_eq!(v.token_bytes(0).unwrap().len(), 1);
        }
    }

    #[test]
    fn byte_concat_rank_like_tiktoken() {
        // "abc": ab (256) first, then ab+c = abc (258).
        let e = Encoder::new(&vocab());
        let mut out = vec![];
        e.merge_scan(b"xabcx", &mut out, &mut State::default());
        assert_eq!(out, vec![120, 258, 120]);
    }

    #[test]
    fn specials() {
        let v = vocab();
        let e = Encoder::new(&v);
        let pt = Pretokenizer::new("gpt4").unwrap();
        let all = Specials {
            allowed: SpecialSet::All,
            disallowed: SpecialSet::All,
        };
        let ids = e.encode(&pt, &v, "ab<|x|>c", &all).unwrap();
        assert_eq!(ids, vec![256, 261, 99]);
        let none = Specials {
            allowed: SpecialSet::Set(vec![]),
            disallowed: SpecialSet::All,
        };
        assert!(e.encode(&pt, &v, "ab<|x|>c", &none).is_err());
        let plain = Specials {
            allowed: SpecialSet::Set(vec![]),
            disallowed: SpecialSet::Set(vec![]),
        };
        assert!(e.encode(&pt, &v, "ab<|x|>c", &plain).unwrap().len() > 3);
    }
}
