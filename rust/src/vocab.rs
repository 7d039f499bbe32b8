//! The vocabulary (merges, special tokens, every token's bytes) and its JSON file format.
//!
//! File: `{"format": "gptrs_tok", "version": 1, "pattern": str, "merges": [[left, right], ...],
//! "special_tokens": {str: id}}`; other keys are ignored (room for a wrapper's own data). Loading
//! validates everything, so a bad file fails here with a message naming it, never later inside
//! encode.

use crate::{invalid, Error, Result};
use ahash::AHashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

pub const FORMAT: &str = "gptrs_tok";
pub const VERSION: u64 = 1;
/// A real vocabulary file is a few MB; refusing anything larger before reading it keeps a wrong path
/// (a dataset, a disk image) from being pulled into memory.
pub const MAX_FILE_BYTES: u64 = 256 << 20;
/// Cap on the bytes of all tokens together (a real vocabulary spells a few MB). Each merge can double
/// a token's length, so without it a small file of merges could ask for terabytes.
pub const MAX_TOKEN_BYTES: usize = 64 << 20;

pub struct Vocab {
    merges: Vec<(u32, u32)>,
    specials: Vec<String>,
    /// Bytes of token `id` are `bytes[offsets[id]..offsets[id + 1]]` (specials included).
    bytes: Vec<u8>,
    offsets: Vec<usize>,
}

impl Vocab {
    /// Validates that merge k only uses ids < 256 + k, that no pair repeats and no two tokens share
    /// bytes (so the ranks form a valid tiktoken table), and that special tokens are distinct and non-empty.
    pub fn new(merges: Vec<(u32, u32)>, specials: Vec<String>) -> Result<Self> {
        let n_ranked = 256 + merges.len();
        if n_ranked + specials.len() > u32::MAX as usize {
            return invalid("too many tokens");
        }
        let mut bytes: Vec<u8> = (0..=255u8).collect();
        let mut offsets: Vec<usize> = (0..=256).collect();
        let mut seen: AHashMap<Vec<u8>, u32> = AHashMap::with_capacity(n_ranked);
        for b in 0..=255u8 {
            seen.insert(vec![b], b as u32);
        }
        let mut pairs: AHashMap<(u32, u32), usize> = AHashMap::with_capacity(merges.len());
        for (k, &(a, b)) in merges.iter().enumerate() {
            let id = 256 + k;
            if a as usize >= id || b as usize >= id {
                return invalid(format!(
                    "merge {k} ({a}, {b}) uses an id that is not defined before it (< {id})"
                ));
            }
            if let Some(prev) = pairs.insert((a, b), k) {
                return invalid(format!("merge {k} ({a}, {b}) repeats merge {prev}"));
            }
            let start = bytes.len();
            let (la, lb) = (
                (offsets[a as usize], offsets[a as usize + 1]),
                (offsets[b as usize], offsets[b as usize + 1]),
            );
            if start + (la.1 - la.0) + (lb.1 - lb.0) > MAX_TOKEN_BYTES {
                return invalid(format!(
                    "merge {k} ({a}, {b}) makes the tokens spell more than {} MiB in all; \
                     no real vocabulary is that large",
                    MAX_TOKEN_BYTES >> 20
                ));
            }
            bytes.extend_from_within(la.0..la.1);
            bytes.extend_from_within(lb.0..lb.1);
            let token = bytes[start..].to_vec();
            if let Some(other) = seen.insert(token, id as u32) {
                return invalid(format!(
                    "merge {k} ({a}, {b}) makes the same bytes as token {other}"
                ));
            }
            offsets.push(bytes.len());
        }
        let mut names: AHashMap<&str, usize> = AHashMap::new();
        for (i, s) in specials.iter().enumerate() {
            if s.is_empty() {
                return invalid("special tokens must be non-empty strings");
            }
            if names.insert(s, i).is_some() {
                return invalid(format!("special token {s:?} is given twice"));
            }
            bytes.extend_from_slice(s.as_bytes());
            offsets.push(bytes.len());
        }
        Ok(Vocab {
            merges,
            specials,
            bytes,
            offsets,
        })
    }

    /// Bytes only, no merges: a valid (if useless) tokenizer.
    pub fn bytes_only() -> Self {
        Vocab::new(Vec::new(), Vec::new()).expect("the byte vocabulary is valid")
    }

    pub fn merges(&self) -> &[(u32, u32)] {
        &self.merges
    }
    /// Tokens with a rank: the 256 bytes plus the merges.
    pub fn n_ranked(&self) -> usize {
        256 + self.merges.len()
    }
    pub fn n_vocab(&self) -> usize {
        self.n_ranked() + self.specials.len()
    }
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let id = id as usize;
        (id < self.n_vocab()).then(|| &self.bytes[self.offsets[id]..self.offsets[id + 1]])
    }
    /// `(string, id)` of each special token, in id order.
    pub fn specials(&self) -> impl Iterator<Item = (&str, u32)> {
        let base = self.n_ranked() as u32;
        self.specials
            .iter()
            .enumerate()
            .map(move |(i, s)| (s.as_str(), base + i as u32))
    }
    pub fn special_id(&self, s: &str) -> Option<u32> {
        self.specials().find(|(t, _)| *t == s).map(|(_, id)| id)
    }
}

/// Other top-level keys are ignored, so a wrapper can keep its own data in the same file (the
/// `gptrs.BPETokenizer` stores special-token roles under "roles").
#[derive(Serialize, Deserialize)]
struct VocabFile {
    format: String,
    version: u64,
    pattern: String,
    merges: Vec<(u32, u32)>,
    special_tokens: BTreeMap<String, u32>,
}

pub fn save_json(path: &Path, pattern: &str, vocab: &Vocab) -> Result<()> {
    let file = VocabFile {
        format: FORMAT.to_string(),
        version: VERSION,
        pattern: pattern.to_string(),
        merges: vocab.merges.clone(),
        special_tokens: vocab
            .specials()
            .map(|(s, id)| (s.to_string(), id))
            .collect(),
    };
    let json =
        serde_json::to_vec(&file).map_err(|e| Error::Invalid(format!("cannot serialize: {e}")))?;
    write_atomic(path, &json)
}

/// Write to a temporary sibling then rename, so a crash never leaves a half-written file at `path`.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

pub fn load_json(path: &Path) -> Result<(String, Vocab)> {
    let bad = |msg: String| Error::Invalid(format!("{}: {msg}", path.display()));
    let size = fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
    if size > MAX_FILE_BYTES {
        return Err(bad(format!(
            "file is {size} bytes, larger than any tokenizer file ({MAX_FILE_BYTES} max); wrong path?"
        )));
    }
    let data = fs::read(path).map_err(|e| Error::io(path, e))?;
    let value: serde_json::Value = serde_json::from_slice(&data).map_err(|e| {
        bad(format!(
            "not a gptrs_tok tokenizer file (invalid or truncated JSON: {e})"
        ))
    })?;
    // Check format and version first so an old or foreign file gets the message that matters.
    if value.get("format").and_then(|v| v.as_str()) != Some(FORMAT) {
        return Err(bad(format!(
            "not a gptrs_tok tokenizer file (missing \"format\": \"{FORMAT}\")"
        )));
    }
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(VERSION) => {}
        Some(v) => {
            return Err(bad(format!(
                "unsupported version {v} (this gptrs_tok reads version {VERSION})"
            )))
        }
        None => return Err(bad("missing or non-integer \"version\"".to_string())),
    }
    let file: VocabFile =
        serde_json::from_value(value).map_err(|e| bad(format!("bad tokenizer file: {e}")))?;
    let mut specials: Vec<(u32, String)> = file
        .special_tokens
        .into_iter()
        .map(|(s, id)| (id, s))
        .collect();
    specials.sort();
    let ids: Vec<u32> = specials.iter().map(|(id, _)| *id).collect();
    let vocab = Vocab::new(file.merges, specials.into_iter().map(|(_, s)| s).collect())
        .map_err(|e| bad(e.to_string()))?;
    for ((s, want), got) in vocab.specials().zip(ids) {
        if got != want {
            let (lo, hi) = (vocab.n_ranked(), vocab.n_vocab());
            return Err(bad(format!("special token {s:?} has id {got}; special ids must be {lo}..{hi} (right after the merges)")));
        }
    }
    Ok((file.pattern, vocab))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_of_merges() {
        let v = Vocab::new(vec![(104, 105), (256, 33)], vec!["<|eot|>".into()]).unwrap();
        assert_eq!(v.token_bytes(256), Some(&b"hi"[..]));
        assert_eq!(v.token_bytes(257), Some(&b"hi!"[..]));
        assert_eq!(v.token_bytes(258), Some(&b"<|eot|>"[..]));
        assert_eq!(v.token_bytes(259), None);
        assert_eq!(v.special_id("<|eot|>"), Some(258));
    }

    #[test]
    fn rejects_bad_merges() {
        assert!(Vocab::new(vec![(256, 1)], vec![]).is_err()); // undefined id
        assert!(Vocab::new(vec![(1, 2), (1, 2)], vec![]).is_err()); // repeated pair
        assert!(Vocab::new(vec![(97, 98), (256, 99), (98, 99), (97, 258)], vec![]).is_err()); // same bytes
        assert!(Vocab::new(vec![], vec!["x".into(), "x".into()]).is_err());
        assert!(Vocab::new(vec![], vec![String::new()]).is_err());
        let doubling: Vec<(u32, u32)> = (0..40)
            .map(|k| if k == 0 { (97, 97) } else { (255 + k, 255 + k) })
            .collect();
        assert!(Vocab::new(doubling, vec![])
            .err()
            .unwrap()
            .to_string()
            .contains("MiB"));
    }

    #[test]
    fn json_round_trip_and_errors() {
        let dir = std::env::temp_dir().join(format!("gptrs_tok_vocab_{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tok.json");
        let v = Vocab::new(vec![(104, 105), (256, 33)], vec!["<|eot|>".into()]).unwrap();
        save_json(&path, "gpt4", &v).unwrap();
        let (pattern, w) = load_json(&path).unwrap();
        assert_eq!(pattern, "gpt4");
        assert_eq!(w.merges(), v.merges());
        assert_eq!(w.special_id("<|eot|>"), Some(258));
        let data = fs::read(&path).unwrap();
        fs::write(&path, &data[..data.len() / 2]).unwrap();
        let msg = load_json(&path).err().unwrap().to_string();
        assert!(
            msg.contains("tok.json") && msg.contains("truncated"),
            "{msg}"
        );
        let text = String::from_utf8(data)
            .unwrap()
            .replace("\"version\":1", "\"version\":2");
        fs::write(&path, text).unwrap();
        assert!(load_json(&path)
            .err()
            .unwrap()
            .to_string()
            .contains("unsupported version 2"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
