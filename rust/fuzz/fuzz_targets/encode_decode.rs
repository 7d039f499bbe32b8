//! Fuzz target: encoding gives exactly the ids of tiktoken's algorithm (a naive transcription below) and
//! decodes back to the text, for a fixed tokenizer and for one trained on the input itself; no panics.
#![no_main]

use gptrs_tok::count::PieceCounter;
use gptrs_tok::encode::SpecialSet;
use gptrs_tok::{Pretokenizer, Specials, Tokenizer, TrainOptions};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::OnceLock;

const SPECIALS: [&str; 2] = ["<|endoftext|>", "<|fim|>"];

fn train(texts: &[&str], pattern: &str, vocab_size: usize) -> Tokenizer {
    let pretok = Pretokenizer::new(pattern).unwrap();
    let mut counter = PieceCounter::new(&pretok);
    counter.add_texts(texts).unwrap();
    let opts = TrainOptions {
        vocab_size,
        min_frequency: 1,
        special_tokens: SPECIALS.iter().map(|s| s.to_string()).collect(),
    };
    Tokenizer::from_counts(pattern, counter.into_counts(), &opts, &mut |_, _, _| true).unwrap()
}

/// tiktoken's byte-pair encoding of one piece: a piece that is a token is that token; otherwise merge the
/// adjacent parts whose concatenation has the lowest rank (leftmost first) until none has a rank.
fn reference_piece(ranks: &HashMap<Vec<u8>, u32>, piece: &[u8], out: &mut Vec<u32>) {
    if let Some(&r) = ranks.get(piece) {
        out.push(r);
        return;
    }
    let mut parts: Vec<Vec<u8>> = piece.iter().map(|&b| vec![b]).collect();
    loop {
        let mut best: Option<(u32, usize)> = None;
        for i in 0..parts.len().saturating_sub(1) {
            let joined = [parts[i].as_slice(), parts[i + 1].as_slice()].concat();
            if let Some(&r) = ranks.get(&joined) {
                if best.is_none_or(|(br, _)| r < br) {
                    best = Some((r, i));
                }
            }
        }
        let Some((_, i)) = best else { break };
        let next = parts.remove(i + 1);
        parts[i].extend(next);
    }
    out.extend(parts.iter().map(|p| ranks[p]));
}

fn check(tok: &Tokenizer, text: &str) {
    let vocab = tok.vocab();
    let ranks: HashMap<Vec<u8>, u32> = (0..vocab.n_ranked() as u32)
        .map(|id| (vocab.token_bytes(id).unwrap().to_vec(), id))
        .collect();
    let mut want = Vec::new();
    tok.pretokenizer()
        .for_each_piece(text, |p| reference_piece(&ranks, p.as_bytes(), &mut want))
        .unwrap();
    let ids = tok.encode_ordinary(text).unwrap();
    assert_eq!(ids, want, "encode_ordinary({text:?})");
    assert_eq!(tok.decode_bytes(&ids).unwrap(), text.as_bytes());
    assert_eq!(tok.decode(&ids).unwrap(), text);
    let all = Specials {
        allowed: SpecialSet::All,
        disallowed: SpecialSet::Set(Vec::new()),
    };
    let ids = tok.encode(text, &all).unwrap();
    assert!(ids.iter().all(|&i| (i as usize) < tok.n_vocab()));
    assert_eq!(tok.decode(&ids).unwrap(), text);
}

fn fixed() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let corpus = [
            include_str!("../../src/lib.rs"),
            include_str!("../../src/pretok.rs"),
            "Zoë's café — naïve façade, 東京 2024年; Ünïcödé <|endoftext|> text!\r\n\r\n",
        ];
        train(&corpus, "gpt4", 800)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let text: &str = &text;
    check(fixed(), text);
    // A tokenizer trained on the input itself: tests the trainer (any vocabulary size, both patterns) and
    // encoding with merges made for exactly this text.
    let pattern = if knob & 1 == 0 { "gpt4" } else { "gpt2" };
    let tok = train(&[text], pattern, 258 + (knob >> 1) as usize);
    check(&tok, text);
});
