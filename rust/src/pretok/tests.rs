//! The scanners must cut every text exactly where `fancy-regex` (tiktoken's engine) cuts it with the same
//! pattern: checked on arbitrary Unicode, on alphabets biased towards the patterns' tricky cases, on every
//! Unicode scalar value in several contexts, and on real text (the Python standard library's sources).
//!
//! `PROPTEST_CASES=N` scales every property (this is the CI fuzzer; see `rust/fuzz` for libFuzzer).

use super::*;
use proptest::prelude::*;
use std::path::PathBuf;

fn reference(pattern: &str) -> fancy_regex::Regex {
    fancy_regex::Regex::new(pattern).unwrap()
}

fn regex_pieces<'a>(re: &fancy_regex::Regex, text: &'a str) -> Vec<&'a str> {
    re.find_iter(text).map(|m| m.unwrap().as_str()).collect()
}

/// Asserts the scanner and the regex agree on `text` (and that the pieces cover it).
fn check(p: &Pretokenizer, re: &fancy_regex::Regex, text: &str) {
    let ours = p.pieces(text).unwrap();
    let theirs = regex_pieces(re, text);
    if ours != theirs {
        let k = ours.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
        panic!(
            "{:?} differs from the regex on {:?}: first difference at piece {k}: ours {:?}, regex {:?}",
            p.name(),
            text,
            &ours[k..(k + 3).min(ours.len())],
            &theirs[k..(k + 3).min(theirs.len())],
        );
    }
    assert_eq!(ours.concat(), text);
}

fn builtins() -> [(Pretokenizer, fancy_regex::Regex); 2] {
    [
        (Pretokenizer::Gpt4, reference(GPT4_PATTERN)),
        (Pretokenizer::Gpt2, reference(GPT2_PATTERN)),
    ]
}

/// Characters that exercise every branch of both patterns: all kinds of whitespace (ASCII, Unicode, and
/// look-alikes that are *not* `\s`), newlines, apostrophes and every case fold of the contraction letters,
/// letters of each general category and plane, each kind of number, combining marks, punctuation.
const TRICKY: &[char] = &[
    ' ',
    ' ',
    ' ',
    '\t',
    '\n',
    '\r',
    '\x0b',
    '\x0c',
    '\u{85}',
    '\u{a0}',
    '\u{1680}',
    '\u{2000}',
    '\u{2028}',
    '\u{2029}',
    '\u{202f}',
    '\u{3000}',
    '\u{200b}',
    '\u{feff}',
    '\u{1c}',
    '\0',
    '\'',
    '\'',
    's',
    'S',
    '\u{17f}',
    'd',
    'D',
    'm',
    'M',
    't',
    'T',
    'l',
    'L',
    'v',
    'V',
    'e',
    'E',
    'r',
    'R',
    'k',
    '\u{212a}',
    '\u{212b}',
    'a',
    'z',
    'é',
    'ß',
    'ǅ',
    'ʰ',
    '中',
    'ア',
    '𐌀',
    '0',
    '7',
    '٣',
    '𝟘',
    'Ⅻ',
    '½',
    '\u{301}',
    '\u{903}',
    '\u{20dd}',
    '!',
    '.',
    ',',
    '-',
    '_',
    '"',
    '$',
    '😀',
    '\u{10ffff}',
];

fn tricky_text() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(TRICKY), 0..40).prop_map(String::from_iter)
}

fn any_text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter)
}

/// Runs of one kind (words, digits, spaces, newlines, punctuation), the shape real text has.
fn runs_text() -> impl Strategy<Value = String> {
    let run = prop_oneof![
        "[a-zA-Z]{1,8}",
        "[0-9]{1,7}",
        "[ ]{1,5}",
        "[ \t]{0,3}[\r\n]{1,3}[ \t]{0,3}",
        "[!-/:-@\\[-`{-~]{1,4}",
        "'(s|t|ll|LL|Re|ve|d|m|x)",
        "\\PC{1,3}",
        "\\s{1,3}",
    ];
    prop::collection::vec(run, 0..12).prop_map(|v| v.concat())
}

/// `PROPTEST_CASES` when set (the long fuzzing run), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    #[test]
    fn scanners_equal_regex_on_arbitrary_unicode(text in any_text()) {
        for (p, re) in builtins() {
            check(&p, &re, &text);
        }
    }

    #[test]
    fn scanners_equal_regex_on_tricky_alphabet(text in tricky_text()) {
        for (p, re) in builtins() {
            check(&p, &re, &text);
        }
    }

    #[test]
    fn scanners_equal_regex_on_runs(text in runs_text()) {
        for (p, re) in builtins() {
            check(&p, &re, &text);
        }
    }
}

/// Every Unicode scalar value, each in the contexts where its class matters: after an apostrophe (the
/// contractions and their case folds), before and after letters, digits, spaces, newlines and
/// punctuation, doubled, and at the end of the text.
#[test]
fn scanners_equal_regex_on_every_character() {
    // Optimised builds check all 1.1M; debug builds (where the regex is ~50x slower) check every
    // character at a class boundary (both sides of each range of `\p{L}`, `\p{N}`, `\s`) plus a stride.
    let all = !cfg!(debug_assertions) || std::env::var_os("GPTRS_PRETOK_FULL").is_some();
    let mut edges = std::collections::BTreeSet::new();
    for re in [r"\p{L}", r"\p{N}", r"\s"] {
        for (lo, hi) in class_ranges(re) {
            edges.extend([lo.saturating_sub(1), lo, hi, hi + 1]);
        }
    }
    let chars: Vec<char> = (0..=0x10FFFFu32)
        .filter(|&c| all || c < 0x300 || c % 61 == 0 || edges.contains(&c))
        .filter_map(char::from_u32)
        .collect();
    for (p, re) in builtins() {
        for chunk in chars.chunks(4096) {
            let mut text = String::new();
            for &c in chunk {
                for ctx in ["'", "a", "1", " ", "\n", "!", " '", "'l", "'v", "'r"] {
                    text.push_str(ctx);
                    text.push(c);
                }
                text.push(c);
                text.push('x');
                text.push(c);
                text.push('7');
                text.push(c);
                text.push(c);
                text.push(' ');
            }
            check(&p, &re, &text);
            // Each character also ends a text.
            check(&p, &re, &format!("{}{}", text, chunk[0]));
        }
    }
}

/// Letter runs of every length around the 8-byte SWAR window, ended by every ASCII character and by
/// non-ASCII letters and non-letters.
#[test]
fn letter_runs_of_every_length() {
    let mut enders: Vec<char> = (0..128u8).map(char::from).collect();
    enders.extend(['é', 'ß', '\u{301}', '\u{a0}', '中', '😀', '\u{17f}']);
    for (p, re) in builtins() {
        for len in 0..20 {
            let word: String = "aZbYcXdWeVfUgThSiRjQ".chars().take(len).collect();
            for &c in &enders {
                check(&p, &re, &format!("{word}{c}{word}"));
                check(&p, &re, &format!(" {word}{c}x"));
            }
        }
    }
}

#[test]
fn whitespace_edge_cases() {
    let cases = [
        "",
        " ",
        "  ",
        "a ",
        "a  ",
        "a   b",
        "a \n",
        "a\n\n",
        "a \n b",
        "a\r\n\r\nb",
        " \n\n  \t x",
        "\t\tx",
        "x\u{a0}\u{a0}y",
        "x \u{3000}y",
        "x\u{2028} y",
        "1  2",
        "!!\n\n\nx",
        " !!\r\n ",
        "'s'S'\u{17f}'LL'lL",
        "I'm they're we've you'll he'd 'tis",
        "  'll",
        "\u{301}abc",
        "a\u{301}b",
        "123456789",
        "  123",
    ];
    for (p, re) in builtins() {
        for text in cases {
            check(&p, &re, text);
        }
    }
}

/// The `.py` files of the Python standard library (the project's built-in corpus), when a `python3`
/// is on the PATH; real text covers what synthetic strings do not (long runs, indentation, comments).
fn stdlib_files() -> Vec<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['stdlib'])",
        ])
        .output();
    let Ok(out) = out else { return Vec::new() };
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let mut files = Vec::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                // The corpus is the standard library alone, as `gptrs.data.stdlib_paths()` defines it.
                let name = e.file_name();
                if !matches!(
                    name.to_str(),
                    Some("site-packages" | "dist-packages" | "__pycache__")
                ) {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|x| x == "py") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn scanners_equal_regex_on_real_text() {
    let files = stdlib_files();
    if files.is_empty() {
        eprintln!("no python3 standard library found; skipping");
        return;
    }
    // Debug builds run the regex ~50x slower: a deterministic sample of the files there.
    let all = !cfg!(debug_assertions) || std::env::var_os("GPTRS_PRETOK_FULL").is_some();
    let step = if all { 1 } else { 100 };
    let mut bytes = 0;
    for path in files.iter().step_by(step) {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        bytes += text.len();
        for (p, re) in builtins() {
            check(&p, &re, &text);
        }
    }
    assert!(bytes > 0);
}

#[test]
fn names_patterns_and_custom() {
    for (name, pattern) in [("gpt4", GPT4_PATTERN), ("gpt2", GPT2_PATTERN)] {
        for spelling in [name, pattern] {
            let p = Pretokenizer::new(spelling).unwrap();
            assert_eq!(p.name(), Some(name));
            assert_eq!(p.pattern(), pattern);
        }
    }
    let p = Pretokenizer::new(r"\w+|\s+").unwrap();
    assert_eq!(p.name(), None);
    assert_eq!(p.pattern(), r"\w+|\s+");
    // Unmatched text is dropped and empty matches yield nothing, as in tiktoken.
    assert_eq!(p.pieces("ab, cd").unwrap(), vec!["ab", " ", "cd"]);
    assert_eq!(
        Pretokenizer::new("x*").unwrap().pieces("axxb").unwrap(),
        vec!["xx"]
    );
    assert!(Pretokenizer::new("(")
        .unwrap_err()
        .contains("invalid pre-tokenization pattern"));
    assert!(Pretokenizer::new("").is_err());
}

#[test]
fn custom_runtime_error_is_an_err() {
    // Catastrophic backtracking hits fancy-regex's backtrack limit: an Err, not a panic or a hang.
    let p = Pretokenizer::new(r"((a|a)+)+(?!a)b").unwrap();
    let text = "a".repeat(40);
    assert!(p.pieces(&text).unwrap_err().contains("failed on the input"));
}
