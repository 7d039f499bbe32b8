//! Counting pre-tokenized pieces for training, in parallel, with bounded memory.
//!
//! Texts arrive in batches (from a Python iterable or from files). Each batch is cut into segments,
//! worker threads count pieces of their segments into maps that borrow the batch (no allocation per
//! piece), and the per-thread maps are folded into one owned map that only grows with *unique* pieces.
//! Counts are sums, so the result does not depend on the number of threads.

use crate::packed::{pack, pack_at, unpack, PACK_MAX};
use crate::pretok::Pretokenizer;
use crate::{Error, Progress, Result};
use ahash::AHashMap;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Unique piece bytes -> number of occurrences.
///
/// Pieces of at most 15 bytes (almost all) are kept under packed u128 keys (see `packed`).
#[derive(Default)]
pub struct PieceCounts {
    short: AHashMap<u128, u64>,
    long: AHashMap<Box<[u8]>, u64>,
}

impl PieceCounts {
    #[inline]
    pub fn add(&mut self, piece: &[u8], n: u64) {
        if piece.len() <= PACK_MAX {
            *self.short.entry(pack(piece)).or_insert(0) += n;
        } else if let Some(c) = self.long.get_mut(piece) {
            *c += n;
        } else {
            self.long.insert(piece.into(), n);
        }
    }

    pub fn get(&self, piece: &[u8]) -> Option<u64> {
        if piece.len() <= PACK_MAX {
            self.short.get(&pack(piece)).copied()
        } else {
            self.long.get(piece).copied()
        }
    }

    /// Number of unique pieces.
    pub fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls `f(piece, count)` for every unique piece, consuming the counts.
    pub fn drain(self, mut f: impl FnMut(&[u8], u64)) {
        for (k, n) in self.short {
            let (buf, len) = unpack(&k);
            f(&buf[..len], n);
        }
        for (k, n) in self.long {
            f(&k, n);
        }
    }

    fn absorb(&mut self, local: LocalCounts) {
        if self.short.is_empty() {
            self.short = local.short;
        } else {
            for (k, n) in local.short {
                *self.short.entry(k).or_insert(0) += n;
            }
        }
        for (piece, n) in local.long {
            self.add(piece.as_bytes(), n);
        }
    }
}

impl<'a> FromIterator<(&'a [u8], u64)> for PieceCounts {
    fn from_iter<I: IntoIterator<Item = (&'a [u8], u64)>>(iter: I) -> Self {
        let mut c = PieceCounts::default();
        for (piece, n) in iter {
            c.add(piece, n);
        }
        c
    }
}

/// One worker's counts for one batch; long pieces borrow the batch's text (no allocation per piece).
///
/// Short pieces first go through `hot`, a small direct-mapped table that stays in L2: the frequent
/// pieces (the top 16k cover ~95% of occurrences in English) are counted there and only reach the
/// hash map when evicted, saving most of its cache misses.
struct LocalCounts<'t> {
    hot: Vec<(u128, u64)>,
    short: AHashMap<u128, u64>,
    long: AHashMap<&'t str, u64>,
}

const HOT_BITS: u32 = 14;

impl<'t> LocalCounts<'t> {
    fn new() -> Self {
        LocalCounts {
            hot: vec![(0, 0); 1 << HOT_BITS],
            short: AHashMap::new(),
            long: AHashMap::new(),
        }
    }

    /// Count `piece`, which starts at byte `off` of `seg`.
    #[inline]
    fn add(&mut self, seg: &[u8], off: usize, piece: &'t str) {
        if piece.len() > PACK_MAX {
            *self.long.entry(piece).or_insert(0) += 1;
            return;
        }
        let k = pack_at(seg, off, piece.len());
        let h = ((k as u64) ^ ((k >> 64) as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let slot = &mut self.hot[(h >> (64 - HOT_BITS)) as usize];
        if slot.0 == k {
            slot.1 += 1;
        } else {
            if slot.1 > 0 {
                *self.short.entry(slot.0).or_insert(0) += slot.1;
            }
            *slot = (k, 1);
        }
    }

    fn flush(&mut self) {
        for &(k, n) in &self.hot {
            if n > 0 {
                *self.short.entry(k).or_insert(0) += n;
            }
        }
        self.hot = Vec::new();
    }
}

/// Long texts are cut into segments of about this size so one big document still uses every thread.
const SEGMENT_BYTES: usize = 1 << 20;
/// `train_files` reads files in batches of about this many bytes (bounded memory on huge corpora).
const FILE_BATCH_BYTES: u64 = 64 << 20;

pub struct PieceCounter<'p> {
    pretok: &'p Pretokenizer,
    counts: PieceCounts,
}

impl<'p> PieceCounter<'p> {
    pub fn new(pretok: &'p Pretokenizer) -> Self {
        PieceCounter {
            pretok,
            counts: PieceCounts::default(),
        }
    }

    pub fn into_counts(self) -> PieceCounts {
        self.counts
    }

    /// Count the pieces of every text (each text is pre-tokenized on its own, as in encoding).
    pub fn add_texts<S: AsRef<str> + Sync>(&mut self, texts: &[S]) -> Result<()> {
        let mut segments: Vec<&str> = Vec::new();
        for t in texts {
            split_segments(self.pretok, t.as_ref(), &mut segments);
        }
        let next = AtomicUsize::new(0);
        let workers = rayon::current_num_threads().min(segments.len()).max(1);
        let locals: Vec<std::result::Result<LocalCounts, String>> = (0..workers)
            .into_par_iter()
            .map(|_| {
                let mut local = LocalCounts::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(seg) = segments.get(i) else { break };
                    let base = seg.as_ptr() as usize;
                    self.pretok.for_each_piece(seg, |p| {
                        local.add(seg.as_bytes(), p.as_ptr() as usize - base, p)
                    })?;
                }
                local.flush();
                Ok(local)
            })
            .collect();
        for local in locals {
            self.counts.absorb(local.map_err(Error::Invalid)?);
        }
        Ok(())
    }

    /// Read and count files (each file is one text), in parallel, batch by batch.
    /// `progress("count", bytes_done, bytes_total)` is called after each batch.
    pub fn add_files(&mut self, paths: &[PathBuf], progress: Progress) -> Result<()> {
        let mut sizes = Vec::with_capacity(paths.len());
        for p in paths {
            sizes.push(std::fs::metadata(p).map_err(|e| Error::io(p, e))?.len());
        }
        let total: u64 = sizes.iter().sum();
        let mut done = 0u64;
        let mut start = 0;
        while start < paths.len() {
            let mut end = start;
            let mut batch = 0u64;
            while end < paths.len() && (end == start || batch + sizes[end] <= FILE_BATCH_BYTES) {
                batch += sizes[end];
                end += 1;
            }
            let texts: Vec<String> = paths[start..end]
                .par_iter()
                .map(|p| read_text(p))
                .collect::<Result<_>>()?;
            self.add_texts(&texts)?;
            done += batch;
            if !progress("count", done, total) {
                return Err(Error::Cancelled);
            }
            start = end;
        }
        Ok(())
    }
}

fn read_text(path: &Path) -> Result<String> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(data).map_err(|e| {
        Error::Invalid(format!(
            "{}: not valid UTF-8 (first bad byte at offset {}); convert the file to UTF-8",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Cut `text` into segments whose pieces are exactly the pieces of the whole text.
///
/// For the two built-in patterns a cut between an ASCII letter and " x" (space + ASCII letter) is safe:
/// no alternative matches a letter followed by a space, so the piece before the cut ends there, and
/// matching restarts at the space exactly as it would in the whole text (the patterns only look ahead,
/// and a segment never ends in whitespace, where `\s++$` would see a different end). Custom patterns are
/// never cut: we cannot know their safe points.
fn split_segments<'t>(pretok: &Pretokenizer, text: &'t str, out: &mut Vec<&'t str>) {
    if pretok.name().is_none() || text.len() <= 2 * SEGMENT_BYTES {
        out.push(text);
        return;
    }
    let b = text.as_bytes();
    let mut start = 0;
    let mut p = SEGMENT_BYTES;
    while p + 1 < b.len() {
        if b[p] == b' ' && b[p - 1].is_ascii_alphabetic() && b[p + 1].is_ascii_alphabetic() {
            out.push(&text[start..p]);
            start = p;
            p += SEGMENT_BYTES;
        } else {
            p += 1;
        }
    }
    out.push(&text[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_preserve_pieces() {
        let unit = "Hello world,  it's 2024!\n\n  indented  text\tand   more words here ";
        let text = unit.repeat(3 * SEGMENT_BYTES / unit.len());
        for name in ["gpt4", "gpt2"] {
            let pt = Pretokenizer::new(name).unwrap();
            let mut segs = Vec::new();
            split_segments(&pt, &text, &mut segs);
            assert!(segs.len() >= 2);
            let whole = pt.pieces(&text).unwrap();
            let joined: Vec<&str> = segs.iter().flat_map(|s| pt.pieces(s).unwrap()).collect();
            assert_eq!(whole, joined);
        }
    }

    #[test]
    fn counts_are_sums() {
        let pt = Pretokenizer::new("gpt4").unwrap();
        let mut c = PieceCounter::new(&pt);
        c.add_texts(&["a b a", "b"]).unwrap();
        c.add_texts(&[" b"]).unwrap();
        let counts = c.into_counts();
        assert_eq!(counts.get(b"a"), Some(1));
        assert_eq!(counts.get(b" a"), Some(1));
        assert_eq!(counts.get(b" b"), Some(2));
        assert_eq!(counts.get(b"b"), Some(1));
        assert_eq!(counts.get(b"c"), None);
        assert_eq!(counts.len(), 4);
    }

    #[test]
    fn short_and_long_pieces_round_trip() {
        let pieces: [&[u8]; 6] = [
            b"",
            b"x",
            b"1234567",
            b"123456789012345",
            b"1234567890123456",
            b"\x00\x00",
        ];
        let counts: PieceCounts = pieces.iter().map(|p| (*p, 3)).collect();
        let mut seen = Vec::new();
        counts.drain(|p, n| seen.push((p.to_vec(), n)));
        seen.sort();
        let mut want: Vec<(Vec<u8>, u64)> = pieces.iter().map(|p| (p.to_vec(), 3)).collect();
        want.sort();
        assert_eq!(seen, want);
    }
}
