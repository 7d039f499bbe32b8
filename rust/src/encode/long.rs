//! Merging long pieces (a 10 MB run of letters) in O(n log n) or O(n), with tiktoken's exact order:
//! repeatedly merge the adjacent pair of lowest rank, the leftmost one on ties.
//!
//! Both algorithms keep the parts in a linked list over byte positions and `cur[i]`, the rank of the
//! pair starting at part i. A queued (rank, position) is stale unless it still equals `cur`; that test
//! is exact because a pair only changes by growing (a part merged), so it then spells other bytes and
//! has another rank.

use super::{Encoder, NO_RANK};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

const NONE: u32 = u32::MAX;

/// Parts of a piece as a linked list (u32 arrays keep a 10 MB piece cache-friendly).
struct Parts {
    ids: Vec<u32>,
    next: Vec<u32>,
    prev: Vec<u32>,
    cur: Vec<u32>,
}

impl Parts {
    fn new(enc: &Encoder, piece: &[u8]) -> Self {
        let n = piece.len();
        let ids: Vec<u32> = piece.iter().map(|&b| b as u32).collect();
        let cur = (0..n)
            .map(|i| {
                if i + 1 < n {
                    enc.rank(ids[i], ids[i + 1])
                } else {
                    NO_RANK
                }
            })
            .collect();
        Parts {
            next: (1..=n as u32).collect(),
            prev: (0..n as u32).map(|i| i.wrapping_sub(1)).collect(),
            ids,
            cur,
        }
    }

    /// Merge the pair at part `i` (rank `r`) and report the new pairs around it as `queue(rank, pos)`.
    #[inline]
    fn merge(&mut self, enc: &Encoder, i: usize, r: u32, mut queue: impl FnMut(u32, usize)) {
        let n = self.ids.len();
        let j = self.next[i] as usize;
        self.ids[i] = r;
        self.cur[j] = NO_RANK; // part j is gone
        self.next[i] = self.next[j];
        let k = self.next[i] as usize;
        self.cur[i] = NO_RANK;
        if k < n {
            self.prev[k] = i as u32;
            self.cur[i] = enc.rank(r, self.ids[k]);
            if self.cur[i] != NO_RANK {
                queue(self.cur[i], i);
            }
        }
        let p = self.prev[i];
        if p != NONE {
            let p = p as usize;
            self.cur[p] = enc.rank(self.ids[p], r);
            if self.cur[p] != NO_RANK {
                queue(self.cur[p], p);
            }
        }
    }

    fn emit(&self, out: &mut Vec<u32>) {
        let mut i = 0;
        while i < self.ids.len() {
            out.push(self.ids[i]);
            i = self.next[i] as usize;
        }
    }
}

impl Encoder {
    /// O(n log n): a min-heap of `rank << 32 | position`, which orders by rank, then leftmost.
    pub(super) fn merge_heap(&self, piece: &[u8], out: &mut Vec<u32>) {
        if piece.len() >= 1 << 31 {
            // Positions are u32; a single piece of 2 GiB or more is encoded in 2 GiB slices.
            piece.chunks(1 << 31).for_each(|c| self.merge_heap(c, out));
            return;
        }
        let mut parts = Parts::new(self, piece);
        let entry = |r: u32, i: usize| Reverse(((r as u64) << 32) | i as u64);
        let mut heap: BinaryHeap<Reverse<u64>> = parts
            .cur
            .iter()
            .enumerate()
            .filter(|(_, &r)| r != NO_RANK)
            .map(|(i, &r)| entry(r, i))
            .collect();
        while let Some(Reverse(e)) = heap.pop() {
            let (r, i) = ((e >> 32) as u32, e as u32 as usize);
            if parts.cur[i] == r {
                parts.merge(self, i, r, |r2, p| heap.push(entry(r2, p)));
            }
        }
        parts.emit(out);
    }

    /// About O(n + n_vocab): one bucket of positions per rank, visited from the lowest rank up, each
    /// bucket in increasing position (leftmost first). Merging a rank-r pair never makes another
    /// rank-r pair (the new pairs spell longer bytes), so a bucket does not grow while it is visited;
    /// if a merge makes a pair of *lower* rank (possible: ranks rank bytes, not pairs), the visit
    /// stops and resumes at that rank, exactly as tiktoken would pick it next.
    pub(super) fn merge_buckets(&self, piece: &[u8], out: &mut Vec<u32>) {
        if piece.len() >= 1 << 31 {
            piece
                .chunks(1 << 31)
                .for_each(|c| self.merge_buckets(c, out));
            return;
        }
        let mut parts = Parts::new(self, piece);
        let mut buckets: Vec<Vec<u32>> = vec![Vec::new(); self.n_ranked];
        let mut r = NO_RANK;
        for (i, &ri) in parts.cur.iter().enumerate() {
            if ri != NO_RANK {
                buckets[ri as usize].push(i as u32);
                r = r.min(ri);
            }
        }
        while (r as usize) < buckets.len() {
            if buckets[r as usize].is_empty() {
                r += 1;
                continue;
            }
            let mut list = std::mem::take(&mut buckets[r as usize]);
            if !list.is_sorted() {
                list.sort_unstable();
            }
            let mut lower = NO_RANK;
            let mut at = 0;
            while at < list.len() && lower == NO_RANK {
                let i = list[at] as usize;
                at += 1;
                if parts.cur[i] == r {
                    parts.merge(self, i, r, |r2, p| {
                        buckets[r2 as usize].push(p as u32);
                        if r2 < r {
                            lower = lower.min(r2);
                        }
                    });
                }
            }
            if lower != NO_RANK {
                buckets[r as usize].extend_from_slice(&list[at..]);
                r = lower;
            }
        }
        parts.emit(out);
    }
}

#[cfg(test)]
mod tests {
    use super::super::State;
    use super::*;
    use crate::count::PieceCounts;
    use crate::vocab::Vocab;
    use crate::TrainOptions;

    /// A vocabulary trained on a small alphabet, so long random strings hit many merges.
    fn encoder() -> Encoder {
        let mut seed = 12345u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let words: Vec<String> = (0..3000)
            .map(|_| {
                (0..2 + rand() % 10)
                    .map(|_| b"aabcd"[(rand() % 5) as usize] as char)
                    .collect()
            })
            .collect();
        let counts: PieceCounts = words
            .iter()
            .map(|w| (w.as_bytes(), 1 + rand() % 50))
            .collect();
        let opts = TrainOptions {
            vocab_size: 600,
            min_frequency: 1,
            special_tokens: vec![],
        };
        let merges = crate::train::train(counts, &opts, &mut |_, _, _| true).unwrap();
        Encoder::new(&Vocab::new(merges, vec![]).unwrap())
    }

    #[test]
    fn scan_heap_and_buckets_agree() {
        let enc = encoder();
        let mut seed = 99u64;
        for len in [2usize, 3, 17, 200, 1000, 5000] {
            for alphabet in [&b"a"[..], b"ab", b"aabcd", b"abcdxyz"] {
                let piece: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        alphabet[(seed >> 33) as usize % alphabet.len()]
                    })
                    .collect();
                let (mut a, mut b, mut c) = (vec![], vec![], vec![]);
                enc.merge_scan(&piece, &mut a, &mut State::default());
                enc.merge_heap(&piece, &mut b);
                enc.merge_buckets(&piece, &mut c);
                assert_eq!(a, b, "heap, len {len}");
                assert_eq!(a, c, "buckets, len {len}");
            }
        }
    }

    /// Random (valid) merge tables, unlike trained ones, make merges that create lower-rank pairs,
    /// which exercises the bucket merge's resume-at-lower-rank path.
    #[test]
    fn agree_on_random_merge_tables() {
        let mut seed = 7u64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let merges: Vec<(u32, u32)> = (0..12u32)
                .map(|k| {
                    let pick = |x: u64| {
                        if x % (3 + k as u64) < 3 {
                            97 + (x % 3) as u32
                        } else {
                            256 + (x % k.max(1) as u64) as u32
                        }
                    };
                    (pick(rand()), pick(rand()))
                })
                .collect();
            let Ok(vocab) = Vocab::new(merges, vec![]) else {
                continue;
            };
            let enc = Encoder::new(&vocab);
            for _ in 0..20 {
                let piece: Vec<u8> = (0..2 + rand() % 30)
                    .map(|_| b"abc"[(rand() % 3) as usize])
                    .collect();
                let (mut a, mut b, mut c) = (vec![], vec![], vec![]);
                enc.merge_scan(&piece, &mut a, &mut State::default());
                enc.merge_heap(&piece, &mut b);
                enc.merge_buckets(&piece, &mut c);
                assert_eq!((&a, &a), (&b, &c));
            }
        }
    }
}
