//! BPE training: repeatedly merge the most frequent adjacent pair inside pieces.
//!
//! Rule: highest count wins, ties go to the smallest (left id, right id); counts are u64. This is the
//! rule of `rustbpe`, so given the same pattern the merges are identical.
//!
//! Why it is fast: unique pieces are stored once with their counts in one flat symbol array; pair counts
//! are updated incrementally (only words containing the merged pair are touched, found through a
//! pair -> word-ids index) instead of being recounted; the best pair comes from a lazy max-heap. Laziness
//! is exact because a pair's count can only fall after it is first pushed (new pairs always contain the
//! newest id and are pushed when created), so a popped entry whose count is stale is just re-pushed.

use crate::count::PieceCounts;
use crate::vocab::MAX_TOKEN_BYTES;
use crate::{invalid, Error, Progress, Result};
use ahash::{AHashMap, AHashSet};
use rayon::prelude::*;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub struct TrainOptions {
    /// Everything counts: 256 bytes + merges + special tokens.
    pub vocab_size: usize,
    /// Stop merging when the best pair occurs fewer times than this.
    pub min_frequency: u64,
    pub special_tokens: Vec<String>,
}

impl TrainOptions {
    pub fn n_merges(&self) -> Result<usize> {
        let floor = 256 + self.special_tokens.len();
        if self.vocab_size < floor {
            return invalid(format!(
                "vocab_size {} is too small: it counts the 256 bytes and the {} special tokens (>= {floor})",
                self.vocab_size,
                self.special_tokens.len()
            ));
        }
        if self.vocab_size > u32::MAX as usize / 2 {
            return invalid(format!("vocab_size {} is too large", self.vocab_size));
        }
        Ok(self.vocab_size - floor)
    }
}

#[inline]
fn key(a: u32, b: u32) -> u64 {
    ((a as u64) << 32) | b as u64
}

/// Unique pieces as symbol sequences in one flat array (words only shrink, so they merge in place).
struct Words {
    syms: Vec<u32>,
    start: Vec<usize>,
    len: Vec<u32>,
    count: Vec<u64>,
}

impl Words {
    fn from_counts(counts: PieceCounts) -> Self {
        // Pieces of one byte hold no pair; dropping them saves memory and time.
        let mut w = Words {
            syms: Vec::new(),
            start: Vec::new(),
            len: Vec::new(),
            count: Vec::new(),
        };
        w.start.reserve_exact(counts.len());
        w.len.reserve_exact(counts.len());
        w.count.reserve_exact(counts.len());
        counts.drain(|piece, n| {
            if piece.len() > 1 {
                w.start.push(w.syms.len());
                w.len.push(piece.len() as u32);
                w.count.push(n);
                w.syms.extend(piece.iter().map(|&b| b as u32));
            }
        });
        w
    }

    fn word(&self, i: usize) -> &[u32] {
        &self.syms[self.start[i]..self.start[i] + self.len[i] as usize]
    }
}

/// Pair counts plus, per pair, the (sorted, possibly stale) ids of words that contain it.
#[derive(Default)]
struct Pairs {
    index: AHashMap<u64, u32>,
    count: Vec<i64>,
    words: Vec<Vec<u32>>,
}

impl Pairs {
    #[inline]
    fn slot(&mut self, k: u64) -> usize {
        let next = self.count.len() as u32;
        let i = *self.index.entry(k).or_insert(next) as usize;
        if i == self.count.len() {
            self.count.push(0);
            self.words.push(Vec::new());
        }
        i
    }

    /// Count every adjacent pair of `words[range]` (one chunk of the parallel initial count).
    fn count_range(words: &Words, range: std::ops::Range<usize>) -> Pairs {
        let mut p = Pairs::default();
        for w in range {
            let c = words.count[w] as i64;
            for ab in words.word(w).windows(2) {
                let i = p.slot(key(ab[0], ab[1]));
                p.count[i] += c;
                let list = &mut p.words[i];
                if list.last() != Some(&(w as u32)) {
                    list.push(w as u32);
                }
            }
        }
        p
    }

    /// Fold `other` (covering later word ids) into self, keeping word lists sorted.
    fn absorb(&mut self, other: Pairs) {
        let mut keys: Vec<(u64, u32)> = other.index.into_iter().collect();
        keys.sort_unstable_by_key(|&(_, i)| i);
        let mut counts = other.count;
        let mut lists = other.words;
        for (k, j) in keys {
            let i = self.slot(k);
            self.count[i] += counts[j as usize];
            counts[j as usize] = 0;
            let list = std::mem::take(&mut lists[j as usize]);
            if self.words[i].is_empty() {
                self.words[i] = list;
            } else {
                self.words[i].extend_from_slice(&list);
            }
        }
    }
}

/// Learn the merges from piece counts.
pub fn train(
    counts: PieceCounts,
    opts: &TrainOptions,
    progress: Progress,
) -> Result<Vec<(u32, u32)>> {
    let n_merges = opts.n_merges()?;
    let min_frequency = opts.min_frequency.max(1);
    let mut words = Words::from_counts(counts);
    let mut pairs = initial_pairs(&words);

    let mut heap: BinaryHeap<(u64, Reverse<u64>)> = pairs
        .index
        .iter()
        .filter(|&(_, &i)| pairs.count[i as usize] > 0)
        .map(|(&k, &i)| (pairs.count[i as usize] as u64, Reverse(k)))
        .collect();

    // Token bytes, to refuse a merge whose bytes already exist as a token (see below).
    let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut known: AHashSet<Vec<u8>> = tokens.iter().cloned().collect();
    let mut banned: AHashSet<u64> = AHashSet::new();
    let mut total_bytes = 256;

    let mut merges: Vec<(u32, u32)> = Vec::with_capacity(n_merges);
    let report_every = (n_merges / 100).max(1);
    let mut new_pairs: Vec<u64> = Vec::new();
    while merges.len() < n_merges {
        let Some((c, Reverse(k))) = heap.pop() else {
            break;
        };
        let idx = pairs.index[&k] as usize;
        let cur = pairs.count[idx];
        if cur as u64 != c {
            if cur > 0 {
                heap.push((cur as u64, Reverse(k)));
            }
            continue;
        }
        if c < min_frequency {
            break;
        }
        if banned.contains(&k) {
            continue;
        }
        let (a, b) = ((k >> 32) as u32, k as u32);
        // Two different pairs can in theory spell the same bytes; a second token with the same bytes
        // would make the rank table ambiguous, so such a pair is never merged.
        // Likewise a merge that would push the vocabulary past `MAX_TOKEN_BYTES` (only a corpus of
        // huge repeated runs gets there) is skipped, so training never makes an unloadable file.
        let bytes = [tokens[a as usize].as_slice(), tokens[b as usize].as_slice()].concat();
        if total_bytes + bytes.len() > MAX_TOKEN_BYTES || !known.insert(bytes.clone()) {
            banned.insert(k);
            continue;
        }
        total_bytes += bytes.len();
        tokens.push(bytes);
        let new_id = 256 + merges.len() as u32;
        merges.push((a, b));

        let affected = std::mem::take(&mut pairs.words[idx]);
        new_pairs.clear();
        for &w in &affected {
            merge_word(
                &mut words,
                w as usize,
                a,
                b,
                new_id,
                k,
                &mut pairs,
                &mut new_pairs,
            );
        }
        pairs.count[idx] = 0;
        new_pairs.sort_unstable();
        new_pairs.dedup();
        for &nk in &new_pairs {
            let n = pairs.count[pairs.index[&nk] as usize];
            if n > 0 {
                heap.push((n as u64, Reverse(nk)));
            }
        }
        if merges.len().is_multiple_of(report_every)
            && !progress("merge", merges.len() as u64, n_merges as u64)
        {
            return Err(Error::Cancelled);
        }
    }
    // Always end with a final report so a progress bar reaches its end.
    if !merges.len().is_multiple_of(report_every)
        && !progress("merge", merges.len() as u64, n_merges as u64)
    {
        return Err(Error::Cancelled);
    }
    Ok(merges)
}

fn initial_pairs(words: &Words) -> Pairs {
    let n = words.len.len();
    let chunks = rayon::current_num_threads().max(1);
    let step = n.div_ceil(chunks).max(1);
    let parts: Vec<Pairs> = (0..n.div_ceil(step))
        .into_par_iter()
        .map(|c| Pairs::count_range(words, c * step..n.min((c + 1) * step)))
        .collect();
    let mut iter = parts.into_iter();
    let mut all = iter.next().unwrap_or_default();
    for p in iter {
        all.absorb(p);
    }
    all
}

/// Replace every non-overlapping (a, b) in word `w` (left to right) by `new_id`, updating pair counts
/// locally: only the neighbours of each occurrence change. Deltas on the merged pair itself are skipped
/// (its count is zeroed by the caller).
#[allow(clippy::too_many_arguments)]
#[inline]
fn merge_word(
    words: &mut Words,
    w: usize,
    a: u32,
    b: u32,
    new_id: u32,
    merged: u64,
    pairs: &mut Pairs,
    new_pairs: &mut Vec<u64>,
) {
    let c = words.count[w] as i64;
    let start = words.start[w];
    let len = words.len[w] as usize;
    let s = &mut words.syms[start..start + len];
    let (mut r, mut out) = (0usize, 0usize);
    let dec = |k: u64, pairs: &mut Pairs| {
        if k != merged {
            if let Some(&i) = pairs.index.get(&k) {
                pairs.count[i as usize] -= c;
            }
        }
    };
    let mut inc = |k: u64, pairs: &mut Pairs| {
        let i = pairs.slot(k);
        pairs.count[i] += c;
        let list = &mut pairs.words[i];
        if list.last() != Some(&(w as u32)) {
            list.push(w as u32);
        }
        new_pairs.push(k);
    };
    while r < len {
        if r + 1 < len && s[r] == a && s[r + 1] == b {
            if out > 0 {
                let x = s[out - 1];
                dec(key(x, a), pairs);
                inc(key(x, new_id), pairs);
            }
            if r + 2 < len {
                let y = s[r + 2];
                dec(key(b, y), pairs);
                inc(key(new_id, y), pairs);
            }
            s[out] = new_id;
            r += 2;
        } else {
            s[out] = s[r];
            r += 1;
        }
        out += 1;
    }
    words.len[w] = out as u32;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(items: &[(&str, u64)]) -> PieceCounts {
        items.iter().map(|(s, n)| (s.as_bytes(), *n)).collect()
    }

    fn opts(vocab_size: usize) -> TrainOptions {
        TrainOptions {
            vocab_size,
            min_frequency: 1,
            special_tokens: vec![],
        }
    }

    /// Straightforward reference: recount every pair from scratch before each merge.
    fn naive(items: &[(&str, u64)], n: usize) -> Vec<(u32, u32)> {
        let mut ws: Vec<(Vec<u32>, u64)> = items
            .iter()
            .map(|(s, c)| (s.bytes().map(|b| b as u32).collect(), *c))
            .collect();
        let mut merges = vec![];
        while merges.len() < n {
            let mut pc: std::collections::BTreeMap<(u32, u32), u64> = Default::default();
            for (w, c) in &ws {
                for p in w.windows(2) {
                    *pc.entry((p[0], p[1])).or_default() += c;
                }
            }
            let Some((&best, _)) = pc.iter().max_by_key(|(p, c)| (**c, Reverse(**p))) else {
                break;
            };
            let id = 256 + merges.len() as u32;
            merges.push(best);
            for (w, _) in ws.iter_mut() {
                let mut out = vec![];
                let mut i = 0;
                while i < w.len() {
                    if i + 1 < w.len() && (w[i], w[i + 1]) == best {
                        out.push(id);
                        i += 2;
                    } else {
                        out.push(w[i]);
                        i += 1;
                    }
                }
                *w = out;
            }
        }
        merges
    }

    #[test]
    fn matches_naive_on_repetitive_words() {
        let items = [
            ("aaaaa", 3),
            ("abab", 5),
            ("ababab", 2),
            ("ba", 7),
            ("aaab", 4),
            ("bbbb", 1),
            ("abc", 9),
        ];
        let got = train(counts(&items), &opts(256 + 12), &mut |_, _, _| true).unwrap();
        assert_eq!(got, naive(&items, 12));
    }

    #[test]
    fn tie_goes_to_smallest_pair() {
        let got = train(
            counts(&[("zy", 2), ("ba", 2)]),
            &opts(257),
            &mut |_, _, _| true,
        )
        .unwrap();
        assert_eq!(got, vec![(b'b' as u32, b'a' as u32)]);
    }

    #[test]
    fn min_frequency_and_early_stop() {
        let items = [("ab", 3), ("cd", 1)];
        let mut o = opts(300);
        o.min_frequency = 2;
        assert_eq!(
            train(counts(&items), &o, &mut |_, _, _| true).unwrap(),
            vec![(97, 98)]
        );
        o.min_frequency = 1;
        assert_eq!(
            train(counts(&items), &o, &mut |_, _, _| true)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn vocab_size_too_small() {
        let o = TrainOptions {
            vocab_size: 256,
            min_frequency: 1,
            special_tokens: vec!["<s>".into()],
        };
        assert!(train(counts(&[("ab", 1)]), &o, &mut |_, _, _| true).is_err());
    }

    #[test]
    fn cancel() {
        let r = train(counts(&[("abcdef", 1)]), &opts(260), &mut |_, _, _| false);
        assert!(matches!(r, Err(Error::Cancelled)));
    }
}
