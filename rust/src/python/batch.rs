//! `encode_batch`: workers encode without the GIL while this thread, holding the GIL, turns finished
//! results into Python objects.
//!
//! Creating the ints of a Python list needs the GIL, so it is serial, and it costs about half as much
//! as encoding itself. Doing it while the workers encode the next texts (instead of after all of them)
//! is what lets batch encoding scale with threads.

use crate::encode::Specials;
use crate::{Error, Tokenizer};
use numpy::PyArray1;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyList;
use rayon::prelude::*;
use std::borrow::Cow;
use std::sync::mpsc::{channel, TryRecvError};
use std::sync::Mutex;

/// A list (of the shared per-id ints `ints`) or a numpy array of the smallest dtype that fits.
fn to_python<'py>(
    py: Python<'py>,
    ids: Vec<u32>,
    ints: &[Py<PyAny>],
    as_numpy: bool,
    n_vocab: usize,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(match (as_numpy, n_vocab <= 1 << 16) {
        (false, _) => PyList::new(py, ids.iter().map(|&i| ints[i as usize].bind(py)))?.into_any(),
        (true, true) => {
            PyArray1::from_vec(py, ids.into_iter().map(|i| i as u16).collect()).into_any()
        }
        (true, false) => PyArray1::from_vec(py, ids).into_any(),
    })
}

pub(super) fn encode_batch<'py>(
    py: Python<'py>,
    tok: &Tokenizer,
    ints: &[Py<PyAny>],
    texts: &[Cow<str>],
    specials: &Specials,
    num_threads: Option<usize>,
    as_numpy: bool,
) -> PyResult<Bound<'py, PyList>> {
    let threads = match num_threads {
        Some(0) => return Err(PyValueError::new_err("num_threads must be >= 1")),
        Some(n) => n,
        None => rayon::current_num_threads(),
    };
    let n_vocab = tok.n_vocab();
    if threads == 1 || texts.len() <= 1 {
        let encoded: crate::Result<Vec<Vec<u32>>> =
            py.detach(|| texts.iter().map(|t| tok.encode(t, specials)).collect());
        let items = encoded
            .map_err(super::to_py)?
            .into_iter()
            .map(|ids| to_python(py, ids, ints, as_numpy, n_vocab))
            .collect::<PyResult<Vec<_>>>()?;
        return PyList::new(py, items);
    }
    let pool = match num_threads {
        Some(n) => Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| PyOSError::new_err(format!("cannot start {n} threads: {e}")))?,
        ),
        None => None,
    };
    let mut slots: Vec<Option<Bound<'py, PyAny>>> = (0..texts.len()).map(|_| None).collect();
    // The error of the first failing text, as a sequential loop would report it.
    let mut failed: Option<(usize, Error)> = None;
    let mut py_error: Option<PyErr> = None;
    std::thread::scope(|s| {
        let (tx, rx) = channel::<(usize, crate::Result<Vec<u32>>)>();
        s.spawn(move || {
            let work = || {
                texts
                    .par_iter()
                    .enumerate()
                    .for_each_with(tx, |tx, (i, t)| {
                        let _ = tx.send((i, tok.encode(t, specials)));
                    })
            };
            match &pool {
                Some(p) => p.install(work),
                None => work(),
            }
        });
        // A Mutex only to make the receiver shareable with `detach` (it is never contended).
        let rx = Mutex::new(rx);
        loop {
            let next = match rx.lock().map(|r| r.try_recv()) {
                Ok(Ok(msg)) => Some(msg),
                Ok(Err(TryRecvError::Empty)) => {
                    py.detach(|| rx.lock().ok().and_then(|r| r.recv().ok()))
                }
                _ => None,
            };
            let Some((i, result)) = next else { break };
            match result {
                Ok(ids) if py_error.is_none() && failed.is_none() => {
                    match to_python(py, ids, ints, as_numpy, n_vocab) {
                        Ok(obj) => slots[i] = Some(obj),
                        Err(e) => py_error = Some(e),
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if failed.as_ref().is_none_or(|(j, _)| i < *j) {
                        failed = Some((i, e));
                    }
                }
            }
        }
    });
    if let Some((_, e)) = failed {
        return Err(super::to_py(e));
    }
    if let Some(e) = py_error {
        return Err(e);
    }
    PyList::new(
        py,
        slots
            .into_iter()
            .map(|o| o.expect("every text was encoded")),
    )
}
