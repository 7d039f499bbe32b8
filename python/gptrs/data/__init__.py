"""The data side of gptrs, by what it does (each module says more):

- ``sources``: text sources (the built-in stdlib corpus, local files, Hugging Face Hub datasets) as streams
  of documents, and the deterministic train/validation split;
- ``token_cache``: both splits encoded once into flat token files, reused while nothing changed;
- ``batches``: samplers over the token arrays (random windows, epochs, fixed evaluation windows);
- ``pipeline``: ``prepare_data(config, run_dir)``, which runs them in order (source -> tokenizer -> token
  cache -> batches) for a training run.
"""

from __future__ import annotations

from gptrs.data.batches import EpochBatches, EvalBatches, RandomBatches
from gptrs.data.pipeline import DataBundle, prepare_data
from gptrs.data.sources import iter_documents, split_documents, stdlib_paths

__all__ = [
    "DataBundle",
    "EpochBatches",
    "EvalBatches",
    "RandomBatches",
    "iter_documents",
    "prepare_data",
    "split_documents",
    "stdlib_paths",
]
