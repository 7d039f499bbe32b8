//! Python bindings (`gptrs_tok._core`): argument conversion, GIL release, error mapping. No logic here.
//!
//! Strings with lone surrogates (not valid UTF-8) are converted like tiktoken does: each lone
//! surrogate becomes U+FFFD, the same in every entry point.

mod batch;

use crate::count::PieceCounter;
use crate::encode::{SpecialSet, Specials};
use crate::{pretok, Error, Pretokenizer, Tokenizer, TrainOptions, Vocab};
use numpy::PyReadonlyArray1;
use pyo3::exceptions::{
    PyFileNotFoundError, PyKeyboardInterrupt, PyOSError, PyOverflowError, PyPermissionError,
    PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyType};
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;

/// Texts are pulled from a Python iterable in batches of about this many bytes, then counted without the GIL.
const TRAIN_BATCH_BYTES: usize = 16 << 20;
const TRAIN_BATCH_ITEMS: usize = 1 << 16;
/// Below this size releasing the GIL costs more than it gives.
const DETACH_MIN_BYTES: usize = 1 << 12;

fn to_py(e: Error) -> PyErr {
    match e {
        Error::Invalid(msg) => PyValueError::new_err(msg),
        Error::Io { path, source } => {
            let msg = format!("{}: {source}", path.display());
            match source.kind() {
                std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
                std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
                _ => PyOSError::new_err(msg),
            }
        }
        Error::Cancelled => PyKeyboardInterrupt::new_err("cancelled"),
    }
}

/// A Python `str` as UTF-8, borrowed when possible; lone surrogates become U+FFFD (as in tiktoken).
fn text_of<'a>(obj: &'a Bound<'_, PyAny>, what: &str) -> PyResult<Cow<'a, str>> {
    let s = obj
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err(format!("{what} must be str, not {}", type_name(obj))))?;
    if let Ok(t) = s.to_str() {
        return Ok(Cow::Borrowed(t));
    }
    let fixed = s
        .call_method1("encode", ("utf-16", "surrogatepass"))?
        .call_method1("decode", ("utf-16", "replace"))?;
    Ok(Cow::Owned(fixed.cast::<PyString>()?.to_str()?.to_owned()))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// `"all"` or a collection of strings (tiktoken's allowed_special / disallowed_special).
fn special_set(
    obj: Option<&Bound<'_, PyAny>>,
    default: SpecialSet,
    what: &str,
) -> PyResult<SpecialSet> {
    let Some(obj) = obj else { return Ok(default) };
    if let Ok(s) = obj.cast::<PyString>() {
        return match s.to_str()? {
            "all" => Ok(SpecialSet::All),
            other => Err(PyValueError::new_err(format!(
                "{what} must be \"all\" or a set of str, not {other:?}"
            ))),
        };
    }
    let mut set = Vec::new();
    for item in obj.try_iter()? {
        set.push(text_of(&item?, what)?.into_owned());
    }
    Ok(SpecialSet::Set(set))
}

fn specials_of(
    allowed: Option<&Bound<'_, PyAny>>,
    disallowed: Option<&Bound<'_, PyAny>>,
) -> PyResult<Specials> {
    Ok(Specials {
        allowed: special_set(allowed, SpecialSet::Set(Vec::new()), "allowed_special")?,
        disallowed: special_set(disallowed, SpecialSet::All, "disallowed_special")?,
    })
}

/// Token ids from a list/tuple/any int sequence, with a fast path for 1-D numpy integer arrays.
fn ids_of(obj: &Bound<'_, PyAny>, n_vocab: usize) -> PyResult<Vec<u32>> {
    macro_rules! try_numpy {
        ($t:ty) => {
            if let Ok(arr) = obj.extract::<PyReadonlyArray1<$t>>() {
                return arr
                    .as_array()
                    .iter()
                    .map(|&v| checked_id(v as i128, n_vocab))
                    .collect();
            }
        };
    }
    try_numpy!(u16);
    try_numpy!(u32);
    try_numpy!(i32);
    try_numpy!(i64);
    try_numpy!(u64);
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "ids must be a sequence of int, not str",
        ));
    }
    obj.try_iter()?.map(|item| id_of(&item?, n_vocab)).collect()
}

fn checked_id(id: i128, n_vocab: usize) -> PyResult<u32> {
    if id < 0 || id >= n_vocab as i128 {
        Err(out_of_range(id, n_vocab))
    } else {
        Ok(id as u32)
    }
}

fn out_of_range(id: impl std::fmt::Display, n_vocab: usize) -> PyErr {
    PyValueError::new_err(format!(
        "token id {id} is out of range (n_vocab = {n_vocab})"
    ))
}

/// One id from any Python int (an int too big for i64 is just out of range).
fn id_of(item: &Bound<'_, PyAny>, n_vocab: usize) -> PyResult<u32> {
    match item.extract::<i64>() {
        Ok(v) => checked_id(v as i128, n_vocab),
        Err(e) if e.is_instance_of::<PyOverflowError>(item.py()) => {
            Err(out_of_range(item, n_vocab))
        }
        Err(e) => Err(e),
    }
}

/// A progress hook that reattaches to Python every call (~1% of the work): it checks for Ctrl-C and
/// calls the user's `progress(stage, done, total)`. Any Python error cancels the work and is kept.
fn progress_hook<'a>(
    callback: &'a Option<Py<PyAny>>,
    error: &'a mut Option<PyErr>,
) -> impl FnMut(&str, u64, u64) -> bool + Send + 'a {
    move |stage, done, total| {
        Python::attach(|py| {
            let r = py.check_signals().and_then(|_| match callback {
                Some(f) => f.call1(py, (stage, done, total)).map(|_| ()),
                None => Ok(()),
            });
            r.map_err(|e| *error = Some(e)).is_ok()
        })
    }
}

fn finish<T>(r: crate::Result<T>, error: &mut Option<PyErr>) -> PyResult<T> {
    r.map_err(|e| match (e, error.take()) {
        (Error::Cancelled, Some(py_err)) => py_err,
        (e, _) => to_py(e),
    })
}

fn checked_usize(v: i64, what: &str) -> PyResult<usize> {
    usize::try_from(v).map_err(|_| PyValueError::new_err(format!("{what} must be >= 0, got {v}")))
}

#[pyclass(subclass, name = "Tokenizer", module = "gptrs_tok._core")]
struct PyTokenizer {
    inner: Arc<Tokenizer>,
    /// One Python int per token id, made once: returning ids as a list then costs a reference count
    /// per id instead of allocating an int (which took about as long as encoding itself).
    ints: PyOnceLock<Vec<Py<PyAny>>>,
}

impl PyTokenizer {
    fn wrap(tok: Tokenizer) -> Self {
        PyTokenizer {
            inner: Arc::new(tok),
            ints: PyOnceLock::new(),
        }
    }

    /// An instance of `cls` (which may be a Python subclass) holding `tok`.
    fn build<'py>(cls: &Bound<'py, PyType>, tok: Tokenizer) -> PyResult<Bound<'py, PyAny>> {
        let obj = cls.call0()?;
        *obj.cast::<PyTokenizer>()?.borrow_mut() = PyTokenizer::wrap(tok);
        Ok(obj)
    }

    fn ints(&self, py: Python<'_>) -> PyResult<&[Py<PyAny>]> {
        if let Some(ints) = self.ints.get(py) {
            return Ok(ints);
        }
        let ints = (0..self.inner.n_vocab() as u32)
            .map(|i| Ok(i.into_pyobject(py)?.into_any().unbind()))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(self.ints.get_or_init(py, || ints))
    }

    fn list_of<'py>(&self, py: Python<'py>, ids: &[u32]) -> PyResult<Bound<'py, PyList>> {
        let ints = self.ints(py)?;
        PyList::new(py, ids.iter().map(|&i| ints[i as usize].bind(py)))
    }

    fn train_options(
        vocab_size: i64,
        special_tokens: Vec<String>,
        min_frequency: i64,
    ) -> PyResult<TrainOptions> {
        Ok(TrainOptions {
            vocab_size: checked_usize(vocab_size, "vocab_size")?,
            min_frequency: checked_usize(min_frequency, "min_frequency")? as u64,
            special_tokens,
        })
    }
}

#[pymethods]
impl PyTokenizer {
    /// A tokenizer with the 256 byte tokens only (use `train`/`load` for a real one).
    #[new]
    #[pyo3(signature = (pattern = "gpt4"))]
    fn new(pattern: &str) -> PyResult<Self> {
        let tok = Tokenizer::new(pattern, Vocab::bytes_only()).map_err(to_py)?;
        Ok(PyTokenizer::wrap(tok))
    }

    #[classmethod]
    #[pyo3(signature = (texts, vocab_size, *, pattern = "gpt4", special_tokens = Vec::new(), min_frequency = 1, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn train<'py>(
        cls: &Bound<'py, PyType>,
        texts: &Bound<'py, PyAny>,
        vocab_size: i64,
        pattern: &str,
        special_tokens: Vec<String>,
        min_frequency: i64,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = cls.py();
        let opts = Self::train_options(vocab_size, special_tokens, min_frequency)?;
        opts.n_merges().map_err(to_py)?;
        if texts.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(
                "texts must be an iterable of str, not a single str",
            ));
        }
        let pretok = Pretokenizer::new(pattern).map_err(PyValueError::new_err)?;
        let mut counter = PieceCounter::new(&pretok);
        let total = texts.len().map(|n| n as u64).unwrap_or(0);
        let (mut done, mut batch, mut bytes) = (0u64, Vec::<String>::new(), 0usize);
        let mut items = texts.try_iter()?;
        loop {
            let item = items.next().transpose()?;
            if let Some(obj) = &item {
                let t = text_of(obj, "each text")?;
                bytes += t.len();
                batch.push(t.into_owned());
            }
            if item.is_none() || bytes >= TRAIN_BATCH_BYTES || batch.len() >= TRAIN_BATCH_ITEMS {
                py.detach(|| counter.add_texts(&batch)).map_err(to_py)?;
                done += batch.len() as u64;
                (batch, bytes) = (Vec::new(), 0);
                py.check_signals()?;
                if let Some(f) = &progress {
                    f.call1(py, ("count", done, total))?;
                }
            }
            if item.is_none() {
                break;
            }
        }
        let counts = counter.into_counts();
        let mut error = None;
        let mut hook = progress_hook(&progress, &mut error);
        let tok = py.detach(|| Tokenizer::from_counts(pattern, counts, &opts, &mut hook));
        drop(hook);
        Self::build(cls, finish(tok, &mut error)?)
    }

    #[classmethod]
    #[pyo3(signature = (paths, vocab_size, *, pattern = "gpt4", special_tokens = Vec::new(), min_frequency = 1, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn train_files<'py>(
        cls: &Bound<'py, PyType>,
        paths: Vec<PathBuf>,
        vocab_size: i64,
        pattern: &str,
        special_tokens: Vec<String>,
        min_frequency: i64,
        progress: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let opts = Self::train_options(vocab_size, special_tokens, min_frequency)?;
        opts.n_merges().map_err(to_py)?;
        if paths.is_empty() {
            return Err(PyValueError::new_err("train_files needs at least one path"));
        }
        let pretok = Pretokenizer::new(pattern).map_err(PyValueError::new_err)?;
        let mut error = None;
        let mut hook = progress_hook(&progress, &mut error);
        let tok = cls.py().detach(|| {
            let mut counter = PieceCounter::new(&pretok);
            counter.add_files(&paths, &mut hook)?;
            Tokenizer::from_counts(pattern, counter.into_counts(), &opts, &mut hook)
        });
        drop(hook);
        Self::build(cls, finish(tok, &mut error)?)
    }

    #[classmethod]
    fn load<'py>(cls: &Bound<'py, PyType>, path: PathBuf) -> PyResult<Bound<'py, PyAny>> {
        let tok = cls.py().detach(|| Tokenizer::load(&path)).map_err(to_py)?;
        Self::build(cls, tok)
    }

    fn save(&self, path: PathBuf) -> PyResult<()> {
        self.inner.save(&path).map_err(to_py)
    }

    fn save_tiktoken(&self, path: PathBuf) -> PyResult<()> {
        crate::export::save_tiktoken(&path, self.inner.vocab()).map_err(to_py)
    }

    fn save_hf(&self, path: PathBuf) -> PyResult<()> {
        crate::export::save_hf(&path, self.inner.pattern(), self.inner.vocab()).map_err(to_py)
    }

    fn encode_ordinary<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let text = text_of(text, "text")?;
        let tok = &self.inner;
        let r = if text.len() >= DETACH_MIN_BYTES {
            py.detach(|| tok.encode_ordinary(&text))
        } else {
            tok.encode_ordinary(&text)
        };
        self.list_of(py, &r.map_err(to_py)?)
    }

    #[pyo3(signature = (text, *, allowed_special = None, disallowed_special = None))]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'py, PyAny>,
        allowed_special: Option<&Bound<'py, PyAny>>,
        disallowed_special: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        let text = text_of(text, "text")?;
        let specials = specials_of(allowed_special, disallowed_special)?;
        let tok = &self.inner;
        let r = if text.len() >= DETACH_MIN_BYTES {
            py.detach(|| tok.encode(&text, &specials))
        } else {
            tok.encode(&text, &specials)
        };
        self.list_of(py, &r.map_err(to_py)?)
    }

    /// Encode many texts in parallel (see `batch`); same semantics as `encode`.
    #[pyo3(signature = (texts, *, num_threads = None, as_numpy = false, allowed_special = None, disallowed_special = None))]
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyAny>,
        num_threads: Option<usize>,
        as_numpy: bool,
        allowed_special: Option<&Bound<'py, PyAny>>,
        disallowed_special: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyList>> {
        if texts.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(
                "texts must be a sequence of str, not a single str",
            ));
        }
        let specials = specials_of(allowed_special, disallowed_special)?;
        let objs: Vec<Bound<'py, PyAny>> = texts.try_iter()?.collect::<PyResult<_>>()?;
        let strs: Vec<Cow<str>> = objs
            .iter()
            .map(|o| text_of(o, "each text"))
            .collect::<PyResult<_>>()?;
        let ints = if as_numpy { &[][..] } else { self.ints(py)? };
        batch::encode_batch(
            py,
            &self.inner,
            ints,
            &strs,
            &specials,
            num_threads,
            as_numpy,
        )
    }

    /// Text of `ids`; bytes that are not valid UTF-8 become U+FFFD (never raises for valid ids).
    fn decode(&self, ids: &Bound<'_, PyAny>) -> PyResult<String> {
        let ids = ids_of(ids, self.inner.n_vocab())?;
        self.inner.decode(&ids).map_err(to_py)
    }

    fn decode_bytes<'py>(
        &self,
        py: Python<'py>,
        ids: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let ids = ids_of(ids, self.inner.n_vocab())?;
        Ok(PyBytes::new(
            py,
            &self.inner.decode_bytes(&ids).map_err(to_py)?,
        ))
    }

    fn decode_batch(&self, batch: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        batch.try_iter()?.map(|ids| self.decode(&ids?)).collect()
    }

    fn token_bytes<'py>(
        &self,
        py: Python<'py>,
        id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let id = id_of(id, self.inner.n_vocab())?;
        Ok(PyBytes::new(
            py,
            self.inner.vocab().token_bytes(id).unwrap_or_default(),
        ))
    }

    /// The merges in order: merge k (a pair of ids) made token 256 + k.
    fn merges(&self) -> Vec<(u32, u32)> {
        self.inner.vocab().merges().to_vec()
    }

    /// Token bytes -> rank for the 256 bytes and every merge (tiktoken's mergeable_ranks).
    fn mergeable_ranks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let vocab = self.inner.vocab();
        for id in 0..vocab.n_ranked() as u32 {
            d.set_item(
                PyBytes::new(py, vocab.token_bytes(id).unwrap_or_default()),
                id,
            )?;
        }
        Ok(d)
    }

    #[getter]
    fn special_tokens<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (s, id) in self.inner.vocab().specials() {
            d.set_item(s, id)?;
        }
        Ok(d)
    }

    #[getter]
    fn pattern(&self) -> &str {
        self.inner.pattern()
    }

    #[getter]
    fn n_vocab(&self) -> usize {
        self.inner.n_vocab()
    }

    fn __repr__(&self) -> String {
        let pattern = match self.inner.pretokenizer().name() {
            Some(name) => name.to_string(),
            None => format!("{:?}", self.inner.pattern()),
        };
        let specials: Vec<&str> = self.inner.vocab().specials().map(|(s, _)| s).collect();
        format!(
            "Tokenizer(n_vocab={}, pattern={pattern}, special_tokens={specials:?})",
            self.inner.n_vocab()
        )
    }
}

/// Split `text` into pre-tokenization pieces (what BPE sees); they concatenate back to `text`.
#[pyfunction]
#[pyo3(signature = (text, pattern = "gpt4"))]
fn pretokenize(text: &Bound<'_, PyAny>, pattern: &str) -> PyResult<Vec<String>> {
    let text = text_of(text, "text")?;
    let pretok = Pretokenizer::new(pattern).map_err(PyValueError::new_err)?;
    let pieces = pretok.pieces(&text).map_err(PyValueError::new_err)?;
    Ok(pieces.into_iter().map(str::to_owned).collect())
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTokenizer>()?;
    m.add_function(wrap_pyfunction!(pretokenize, m)?)?;
    m.add("GPT4_PATTERN", pretok::GPT4_PATTERN)?;
    m.add("GPT2_PATTERN", pretok::GPT2_PATTERN)?;
    Ok(())
}
