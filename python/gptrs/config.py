"""Run configuration: dataclass sections (data, tokenizer, model, training) read from YAML and validated.

Every field has a default and a one-line description (``field(metadata={"help": ...})``);
``python -m gptrs.config --describe`` prints them as the configuration reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a default and a one-line description."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class DataConfig:
    source: str = _f("stdlib", "where text comes from: 'stdlib' (built-in corpus), 'files' or 'hub'")
    paths: list[str] = _f([], "files or globs for source 'files' (.txt, .jsonl/.json, .parquet)")
    text_field: str = _f("text", "field/column holding the text in .jsonl/.json/.parquet files and hub datasets")
    dataset_name: str | None = _f(None, "Hugging Face Hub dataset name for source 'hub', e.g. HuggingFaceFW/fineweb")
    dataset_subset: str | None = _f(None, "Hub dataset subset (configuration name)")
    dataset_split: str = _f("train", "Hub dataset split to stream")
    num_training_samples: int | None = _f(None, "cap on the number of documents read from the source (None: all)")
    validation_split: float = _f(0.05, "fraction of documents held out for validation, in (0, 1)")
    separator: str = _f("eos", "special token placed between documents: 'eos' (after each) or 'bos' (before each)")
    sampling: str = _f("random", "'random' windows (step-based) or 'epochs' (shuffled non-overlapping windows)")
    max_eval_tokens: int = _f(262144, "cap on validation tokens covered by the fixed evaluation windows")
    cache_dir: str | None = _f(None, "token cache directory (None: <run dir>/data)")


@dataclass
class TokenizerConfig:
    vocab_size: int = _f(4096, "total vocabulary: 256 bytes + merges + special tokens")
    pattern: str = _f("gpt4", "pre-tokenization pattern: 'gpt4', 'gpt2' or a custom regex")
    min_frequency: int = _f(1, "minimum pair count for a merge during training")
    special_tokens: dict[str, str] = _f(
        {"bos": "<|bos|>", "eos": "<|endoftext|>", "pad": "<|pad|>"},
        "special tokens by role (bos, eos, pad, unk) -> token string",
    )
    path: str | None = _f(None, "an existing tokenizer JSON to use instead of training one")


@dataclass
class ModelConfig:
    embed_dim: int = _f(128, "width of the residual stream (d_model)")
    ff_dim: int = _f(512, "hidden width of the feed-forward layer (usually 4 * embed_dim)")
    num_layers: int = _f(4, "number of transformer blocks")
    heads: int = _f(4, "attention heads; must divide embed_dim")
    max_seq_len: int = _f(256, "context length (block size) in tokens")
    dropout: float = _f(0.0, "dropout probability in [0, 1)")
    bias: bool = _f(True, "use biases in Linear and LayerNorm layers (GPT-2 does)")
    activation: str = _f("gelu", "feed-forward activation: 'gelu' (exact) or 'gelu_tanh' (GPT-2's approximation)")
    attention: str = _f("sdpa", "attention implementation: 'sdpa' (fused) or 'reference' (explicit mask+softmax)")
    gradient_checkpointing: bool = _f(False, "recompute each block's activations in backward to save memory")
    compile: bool = _f(False, "wrap the model in torch.compile")
    vocab_size: int | None = _f(None, "embedding rows; None takes the tokenizer's vocabulary size")


@dataclass
class TrainingConfig:
    batch_size: int = _f(16, "sequences per micro-batch (per process)")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    max_steps: int = _f(2000, "optimizer steps to train for")
    epochs: int | None = _f(None, "with data.sampling 'epochs': passes over the training tokens (overrides max_steps)")
    learning_rate: float = _f(3e-3, "peak learning rate after warmup")
    min_lr: float = _f(3e-4, "floor of the cosine decay")
    warmup_steps: int = _f(100, "linear warmup steps; must be < max_steps")
    weight_decay: float = _f(0.1, "AdamW weight decay (not applied to norms, biases, embeddings)")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0 disables)")
    mixed_precision: bool | str = _f(True, "false | bf16 | fp16 | true (true: the best the device has)")
    eval_interval: int = _f(250, "steps between evaluations")
    eval_batches: int | None = _f(None, "cap on validation batches per evaluation (None: all fixed windows)")
    log_interval: int = _f(10, "steps between metric logs")
    save_interval: int = _f(500, "steps between checkpoints")
    keep_last: int = _f(2, "periodic checkpoints kept besides 'best' and 'last'")
    early_stopping_patience: int | None = _f(None, "evaluations without improvement before stopping (None: off)")
    seed: int = _f(1337, "seed for initialisation, data split and batch sampling")
    peak_flops: float | None = _f(None, "device peak FLOP/s for MFU (None: measured at start-up)")
    sample_tokens: int = _f(200, "tokens generated as a sample at the end of training")
    sample_prompt: str = _f("def ", "prompt for the end-of-training sample")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
