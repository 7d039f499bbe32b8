//! Fuzz target: the hand-written GPT-4 and GPT-2 scanners cut every text exactly where `fancy-regex` (tiktoken's
//! engine) cuts it with the same pattern, and their pieces concatenate back to the text.
#![no_main]

use gptrs_tok::pretok::{Pretokenizer, GPT2_PATTERN, GPT4_PATTERN};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn reference() -> &'static [(Pretokenizer, fancy_regex::Regex); 2] {
    static R: OnceLock<[(Pretokenizer, fancy_regex::Regex); 2]> = OnceLock::new();
    R.get_or_init(|| {
        [
            (
                Pretokenizer::Gpt4,
                fancy_regex::Regex::new(GPT4_PATTERN).unwrap(),
            ),
            (
                Pretokenizer::Gpt2,
                fancy_regex::Regex::new(GPT2_PATTERN).unwrap(),
            ),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    // Invalid UTF-8 becomes U+FFFD, so every input is a test (and bytes near 0x80.. reach multi-byte chars).
    let text = String::from_utf8_lossy(data);
    let text: &str = &text;
    for (p, re) in reference() {
        let ours = p.pieces(text).unwrap();
        let theirs: Vec<&str> = re.find_iter(text).map(|m| m.unwrap().as_str()).collect();
        assert_eq!(ours, theirs, "{:?} on {:?}", p.name(), text);
        assert_eq!(ours.concat(), text);
    }
});
