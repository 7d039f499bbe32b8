//! Counting pre-tokenized pieces for training, in parallel, with bounded memory.
//!
//! Texts arrive in batches (from a Python iterable or from files). Each batch is cut into segments,
//! worker threads count pieces of their segments into maps that borrow the batch (no allocation per
//! piece), and the per-thread maps are folded into one owned map that only grows with *unique* pieces.
//! Counts are sums, so the result does not depend on the number of threads.

use crate::pretok::Pretokenizer;
use crate::{Error, Progress, Result};
use ahash::AHashMap;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Unique piece bytes -> number of occurrences.
pub type PieceCounts = AHashMap<Box<[u8]>, u64>;

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
        PieceCounter { pretok, counts: PieceCounts::default() }
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
        let locals: Vec<std::result::Result<AHashMap<&str, u64>, String>> = (0..workers)
            .into_par_iter()
            .map(|_| {
                let mut local: AHashMap<&str, u64> = AHashMap::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(seg) = segments.get(i) else { break };
                    self.pretok.for_each_piece(seg, |p| *local.entry(p).or_insert(0) += 1)?;
                }
                Ok(local)
            })
            .collect();
        for local in locals {
            for (piece, n) in local.map_err(Error::Invalid)? {
                match self.counts.get_mut(piece.as_bytes()) {
                    Some(c) => *c += n,
                    None => {
                        self.counts.insert(piece.as_bytes().into(), n);
                    }
                }
            }
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
            let texts: Vec<String> = paths[start..end].par_iter().map(|p| read_text(p)).collect::<Result<_>>()?;
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
        assert_eq!(counts[&b"a"[..]], 1);
        assert_eq!(counts[&b" a"[..]], 1);
        assert_eq!(counts[&b" b"[..]], 2);
        assert_eq!(counts[&b"b"[..]], 1);
    }
}
