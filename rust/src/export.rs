//! Exports for other tools: tiktoken's `.tiktoken` rank file and Hugging Face `tokenizer.json`.

use crate::vocab::{write_atomic, Vocab};
use crate::{Error, Result};
use ahash::AHashMap;
use base64::Engine;
use serde_json::{json, Map, Value};
use std::path::Path;

/// tiktoken's rank file: `base64(token bytes) rank` per line, ranks 0..n_ranked (no specials).
pub fn tiktoken_ranks(vocab: &Vocab) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = String::with_capacity(vocab.n_ranked() * 12);
    for id in 0..vocab.n_ranked() as u32 {
        out.push_str(&b64.encode(vocab.token_bytes(id).unwrap_or_default()));
        out.push(' ');
        out.push_str(&id.to_string());
        out.push('\n');
    }
    out
}

pub fn save_tiktoken(path: &Path, vocab: &Vocab) -> Result<()> {
    write_atomic(path, tiktoken_ranks(vocab).as_bytes())
}

/// GPT-2's byte -> printable char table used by HF's ByteLevel pre-tokenizer and decoder.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        table[b as usize] = if printable {
            b as char
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\u{FFFD}')
        };
    }
    table
}

/// HF `tokenizer.json`: Split(pattern, isolated) + ByteLevel pre-tokenizer, BPE model, ByteLevel
/// decoder, specials as added tokens.
///
/// HF's BPE ranks *pairs* while tiktoken (and our encoder) ranks the concatenated bytes. To give the
/// same ids, every way of spelling a token from two tokens is listed as a merge, grouped by the token's
/// rank, and `ignore_merges` makes a piece that is a whole token map to it directly, as in tiktoken.
pub fn hf_json(pattern: &str, vocab: &Vocab) -> Value {
    let table = byte_to_char();
    let spell = |id: u32| -> String {
        vocab
            .token_bytes(id)
            .unwrap_or_default()
            .iter()
            .map(|&b| table[b as usize])
            .collect()
    };
    let n = vocab.n_ranked() as u32;
    let mut by_bytes: AHashMap<&[u8], u32> = AHashMap::with_capacity(n as usize);
    let mut model_vocab = Map::with_capacity(n as usize);
    for id in 0..n {
        by_bytes.insert(vocab.token_bytes(id).unwrap_or_default(), id);
        model_vocab.insert(spell(id), json!(id));
    }
    let mut merges = Vec::with_capacity(vocab.merges().len());
    for (k, &(a, b)) in vocab.merges().iter().enumerate() {
        merges.push(Value::String(format!("{} {}", spell(a), spell(b))));
        let t = vocab.token_bytes(256 + k as u32).unwrap_or_default();
        for cut in 1..t.len() {
            if let (Some(&l), Some(&r)) = (by_bytes.get(&t[..cut]), by_bytes.get(&t[cut..])) {
                if (l, r) != (a, b) {
                    merges.push(Value::String(format!("{} {}", spell(l), spell(r))));
                }
            }
        }
    }
    let added: Vec<Value> = vocab
        .specials()
        .map(|(s, id)| {
            json!({"id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": onig_pattern(pattern)}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": true,
                  "vocab": model_vocab, "merges": merges}
    })
}

/// HF matches with Oniguruma, where `X{n,m}+` is *not* possessive (it means `(?:X{n,m})+`, so
/// cl100k's `\p{N}{1,3}+` would take any number of digits). Rewrite it as the atomic group
/// `(?>X{n,m})`, which is what possessive means, for atoms `\p{..}`, `\x`, `[...]` and single chars.
fn onig_pattern(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let (mut copied, mut from) = (0, 0);
    while let Some(rel) = pattern[from..].find('{') {
        let open = from + rel;
        from = open + 1;
        let Some(close) = pattern[open..].find('}').map(|c| open + c) else {
            break;
        };
        let counted = close > open + 1
            && pattern[open + 1..close]
                .chars()
                .all(|c| c.is_ascii_digit() || c == ',');
        if !counted || !pattern[close + 1..].starts_with('+') {
            continue;
        }
        if let Some(at) = atom_start(&pattern[copied..open]).map(|a| copied + a) {
            out.push_str(&pattern[copied..at]);
            out.push_str("(?>");
            out.push_str(&pattern[at..=close]);
            out.push(')');
            copied = close + 2;
            from = copied;
        }
    }
    out.push_str(&pattern[copied..]);
    out
}

/// Byte offset where the atom ending `head` starts, for the simple atoms `onig_pattern` handles.
fn atom_start(head: &str) -> Option<usize> {
    if head.ends_with('}') {
        let at = head.rfind('\\')?;
        return matches!(&head[at..at + 2], "\\p" | "\\P").then_some(at);
    }
    if head.ends_with(']') {
        let b = head.as_bytes();
        return (0..head.len())
            .rev()
            .find(|&i| b[i] == b'[' && (i == 0 || b[i - 1] != b'\\'));
    }
    let (last, c) = head.char_indices().last()?;
    let escaped = last > 0 && head[..last].ends_with('\\') && !head[..last].ends_with("\\\\");
    match (escaped, c) {
        (true, _) => Some(last - 1),
        (false, '(' | ')' | '|' | '*' | '+' | '?') => None,
        (false, _) => Some(last),
    }
}

pub fn save_hf(path: &Path, pattern: &str, vocab: &Vocab) -> Result<()> {
    let json = serde_json::to_vec(&hf_json(pattern, vocab))
        .map_err(|e| Error::Invalid(format!("cannot serialize: {e}")))?;
    write_atomic(path, &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_a_bijection() {
        let t = byte_to_char();
        let set: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
    }

    #[test]
    fn possessive_counted_repeats_become_atomic_groups() {
        assert_eq!(onig_pattern(r"a|\p{N}{1,3}+|b"), r"a|(?>\p{N}{1,3})|b");
        assert_eq!(onig_pattern(r"[a-z]{2}+x{1,}+"), r"(?>[a-z]{2})(?>x{1,})");
        assert_eq!(onig_pattern(r"\d{3}|\p{L}++"), r"\d{3}|\p{L}++");
    }

    #[test]
    fn tiktoken_lines() {
        let v = Vocab::new(vec![(104, 105)], vec![]).unwrap();
        let text = tiktoken_ranks(&v);
        assert_eq!(text.lines().count(), 257);
        assert_eq!(text.lines().last(), Some("aGk= 256"));
    }
}
