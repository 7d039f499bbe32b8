"""Mixed precision: map ``training.mixed_precision`` (false | bf16 | fp16 | true) to an autocast context
and, for fp16, a gradient scaler.

Weights and optimizer state stay fp32 in every mode; autocast runs matmuls in the lower precision.
``true`` picks the best the device has: bf16 on CUDA when supported (else fp16 with a scaler), bf16 on
CPUs with native bf16 (AVX512-BF16 or AMX, where it is several times faster than fp32), else fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from gptrs.errors import ConfigError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles); emulated bf16 is slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None:
            try:
                if fn():
                    return True
            except RuntimeError:
                pass
    return False


@dataclass(frozen=True)
class Precision:
    """The resolved mode: ``name`` is 'fp32', 'bf16' or 'fp16'."""

    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.name]

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.name == "fp32":
            yield
        else:
            with torch.autocast(device_type=self.device_type, dtype=self.dtype):
                yield

    def make_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
        if self.name == "fp16":
            return torch.amp.GradScaler(self.device_type)
        return None


def _normalize(setting: bool | str | None) -> str:
    if isinstance(setting, bool) or setting is None:
        return "true" if setting else "false"
    s = str(setting).strip().lower()
    aliases = {"yes": "true", "on": "true", "no": "false", "off": "false", "none": "false", "fp32": "false"}
    s = aliases.get(s, s)
    if s not in ("true", "false", "bf16", "fp16"):
        raise ConfigError(f"training.mixed_precision: expected false, bf16, fp16 or true, got {setting!r}")
    return s


def resolve_precision(setting: bool | str | None, device: torch.device | str) -> Precision:
    """Turn the config value into a Precision for ``device``; impossible combinations are ConfigErrors."""
    device = torch.device(device)
    kind = device.type
    s = _normalize(setting)
    if s == "false":
        return Precision("fp32", kind)
    if kind == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if s == "true":
            return Precision("bf16" if bf16_ok else "fp16", kind)
        if s == "bf16" and not bf16_ok:
            raise ConfigError("training.mixed_precision: bf16 is not supported by this GPU; use fp16 or true")
        return Precision(s, kind)
    if s == "fp16":
        raise ConfigError(f"training.mixed_precision: fp16 needs a CUDA device (use bf16 or false on {kind})")
    if s == "true":
        if kind == "cpu" and cpu_supports_bf16():
            return Precision("bf16", kind)
        return Precision("fp32", kind)
    return Precision("bf16", kind)
