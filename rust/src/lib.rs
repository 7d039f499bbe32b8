//! gptrs_tok: exact byte-level BPE (training and encoding), GPT-2/GPT-4 style.
//!
//! Ids 0..=255 are the bytes, merge k has id 256+k, special tokens come after the merges, so the ranks
//! form a valid `tiktoken` mergeable_ranks table. The pure-Rust core lives here; `python.rs` (feature
//! `python`) only converts arguments and releases the GIL.

pub mod count;
pub mod encode;
pub mod export;
pub mod packed;
pub mod pretok;
pub mod train;
pub mod vocab;

#[cfg(feature = "python")]
mod python;

use std::fmt;
use std::path::{Path, PathBuf};

pub use encode::{Encoder, Specials};
pub use pretok::Pretokenizer;
pub use train::TrainOptions;
pub use vocab::Vocab;

/// Everything that can go wrong, split so Python can map it to ValueError or OSError.
#[derive(Debug)]
pub enum Error {
    /// Bad input: bad argument, corrupt file, disallowed special token... (Python: ValueError).
    Invalid(String),
    /// The file system failed us (Python: OSError / FileNotFoundError).
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A progress callback asked to stop (Python re-raises the callback's own exception).
    Cancelled,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(msg) => f.write_str(msg),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Cancelled => f.write_str("cancelled by the progress callback"),
        }
    }
}

impl std::error::Error for Error {}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::Invalid(msg.into()))
}

/// Progress hook: `(stage, done, total)`; returning false cancels the work.
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64) -> bool;

/// A complete tokenizer: pre-tokenizer + vocabulary + the encoder's lookup tables.
pub struct Tokenizer {
    pretok: Pretokenizer,
    vocab: Vocab,
    encoder: Encoder,
}

impl Tokenizer {
    pub fn new(pattern: &str, vocab: Vocab) -> Result<Self> {
        let pretok = Pretokenizer::new(pattern).map_err(Error::Invalid)?;
        let encoder = Encoder::new(&vocab);
        Ok(Tokenizer {
            pretok,
            vocab,
            encoder,
        })
    }

    /// Train on counted pieces (see `count::PieceCounter`).
    pub fn from_counts(
        pattern: &str,
        counts: count::PieceCounts,
        opts: &TrainOptions,
        progress: Progress,
    ) -> Result<Self> {
        let merges = train::train(counts, opts, progress)?;
        let vocab = Vocab::new(merges, opts.special_tokens.clone())?;
        Tokenizer::new(pattern, vocab)
    }

    pub fn pattern(&self) -> &str {
        self.pretok.pattern()
    }
    pub fn pretokenizer(&self) -> &Pretokenizer {
        &self.pretok
    }
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }
    pub fn n_vocab(&self) -> usize {
        self.vocab.n_vocab()
    }

    /// Encode ignoring special tokens entirely (they are ordinary text).
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3);
        self.encoder
            .encode_ordinary_into(&self.pretok, text, &mut out)?;
        Ok(out)
    }

    /// Encode with tiktoken's semantics for `allowed` / `disallowed` special tokens.
    pub fn encode(&self, text: &str, specials: &Specials) -> Result<Vec<u32>> {
        self.encoder
            .encode(&self.pretok, &self.vocab, text, specials)
    }

    /// Concatenated bytes of `ids`; an unknown id is an error.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            match self.vocab.token_bytes(id) {
                Some(b) => out.extend_from_slice(b),
                None => {
                    return invalid(format!(
                        "token id {id} is out of range (n_vocab = {})",
                        self.n_vocab()
                    ))
                }
            }
        }
        Ok(out)
    }

    /// Decode to text; invalid UTF-8 (a token sequence cut mid-character) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes = self.decode_bytes(ids)?;
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        vocab::save_json(path, self.pattern(), &self.vocab)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let (pattern, vocab) = vocab::load_json(path)?;
        Tokenizer::new(&pattern, vocab).map_err(|e| match e {
            Error::Invalid(msg) => Error::Invalid(format!("{}: {msg}", path.display())),
            other => other,
        })
    }
}
