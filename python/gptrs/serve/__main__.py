"""Serve a trained gptrs model: the OpenAI completions API and a playground page, one batched decode loop.

    python -m gptrs.serve --model-path runs/nanochat-small            # http://127.0.0.1:8000/
    python -m gptrs.serve --model-path runs/small --host 0.0.0.0 --api-key "$KEY"

``--model-path`` is a checkpoint directory or a run directory (then its best checkpoint). The API key may
also come from the GPTRS_API_KEY environment variable. SIGTERM (or Ctrl-C) stops taking requests, lets the
running ones finish for up to ``--drain-seconds``, then ends the rest.
"""

from __future__ import annotations

import os

# OpenMP's idle threads spin for a while after each parallel region (the default wait policy). The decode
# loop runs many tiny regions while the HTTP side needs a core of its own: spinning workers starved it and
# made a streamed reply 30x slower on 2 cores (measured). Set before torch (and its OpenMP) loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gptrs.cli import make_parser, run_main, setup_logging, summary
from gptrs.errors import CheckpointError, GptrsError
from gptrs.host_memory import tune_host_allocator

log = logging.getLogger("gptrs.serve")

TAG = "gptrs-serve"
API_KEY_ENV = "GPTRS_API_KEY"


def build_parser(prog: str = TAG) -> argparse.ArgumentParser:
    p = make_parser(prog, summary(__doc__), tag=TAG)
    p.add_argument(
        "--model-path", required=True, metavar="DIR", help="checkpoint directory, or a run directory"
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="default 8000 (0: any free port, logged)")
    p.add_argument(
        "--api-key", metavar="KEY", help=f"require 'Authorization: Bearer KEY' (or set {API_KEY_ENV})"
    )
    p.add_argument("--device", default="auto", metavar="DEVICE", help="auto (default), cpu, cuda or mps")
    p.add_argument(
        "--max-batch", type=int, default=32, metavar="N", help="rows decoded together (default 32)"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=256,
        metavar="N",
        help="requests waiting beyond those (default 256; more get 429)",
    )
    p.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        metavar="N",
        help="cap on a request's max_tokens (default: the context - 1 with learned positions, 4096 with rotary)",
    )
    p.add_argument(
        "--max-prompt-tokens",
        type=int,
        default=None,
        metavar="N",
        help="cap on a prompt's tokens (default: the context)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=1 << 20,
        metavar="N",
        help="largest request body (default 1 MiB)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="intra-op threads of the model on the CPU (default: the cores less one, at least 1: the HTTP "
        "loop, tokenizing and streaming keep a core of their own)",
    )
    p.add_argument(
        "--stream-interval",
        type=float,
        default=0.05,
        metavar="S",
        help="a stream's tokens are sent at most every S seconds, several to an event (its first token and "
        "its end at once; default 0.05; 0: each token as it is made)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, how long running requests may finish (default 30)",
    )
    return p


def _positive(name: str, value: int | float | None) -> None:
    if value is not None and value < 1:
        raise GptrsError(f"{name} must be >= 1, got {value}")


def serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise GptrsError('gptrs.serve needs FastAPI and uvicorn: pip install "gptrs[serve]"') from None

    from gptrs.generate import _token_bytes_fn, encode_prompt, load_for_inference
    from gptrs.serve.api import Limits, ServeState, create_app
    from gptrs.serve.engine import Engine
    from gptrs.training.distributed import resolve_device

    for name in ("max_batch", "max_tokens", "max_prompt_tokens", "max_body_bytes"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    for flag in ("max_queue", "drain_seconds", "stream_interval"):
        value = getattr(args, flag)
        if not value >= 0:  # NaN too
            raise GptrsError(f"--{flag.replace('_', '-')} must be >= 0, got {value}")
    if not 0 <= args.port < 65536:
        raise GptrsError(f"--port must be in [0, 65535], got {args.port}")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not Path(args.model_path).exists():
        raise CheckpointError(f"--model-path {args.model_path}: no such directory")

    device = resolve_device(args.device)
    model, tok, separator = load_for_inference(args.model_path, device, None)
    cfg = model.config
    learned = getattr(cfg, "positions", "learned" if cfg.arch == "gpt2" else "rotary") == "learned"
    ctx = int(cfg.max_seq_len)
    limits = Limits(
        max_body_bytes=args.max_body_bytes,
        max_prompt_tokens=args.max_prompt_tokens or (ctx - 1 if learned else ctx),
        max_tokens=args.max_tokens or (ctx - 1 if learned else 4096),
        learned_positions=learned,
        max_seq_len=ctx,
    )
    token_bytes, specials = _token_bytes_fn(tok)
    # The run's name: a run directory's own, or the run a checkpoint directory (run/checkpoints/NAME) is of.
    where = Path(args.model_path).resolve()
    model_id = (where.parent.parent if where.parent.name == "checkpoints" else where).name
    _positive("--threads", args.threads)
    # On the CPU the decode step of a small model is a chain of small ops; sharing both cores of a 2-core
    # machine with the HTTP loop made every op wait for a thread: measured on nanochat-small (2-core Xeon),
    # 1 intra-op thread against 2: 575-684 against 314-322 new tokens/s for 1 client, 2,980-3,280 against
    # 2,688-2,758 for 32 (benches/bench_serve.py's load, alternated).
    threads = args.threads or (max(1, len(os.sched_getaffinity(0)) - 1) if device.type == "cpu" else None)
    engine = Engine(
        model,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        threads=threads,
        stream_interval=args.stream_interval,
    ).start()
    state = ServeState(
        engine=engine,
        model_id=model_id,
        limits=limits,
        encode=lambda text: encode_prompt(tok, text, separator),
        decode=lambda ids: tok.decode([i for i in ids if i not in specials]),
        token_bytes=token_bytes,
        specials=specials,
        vocab_size=int(cfg.vocab_size or tok.get_vocab_size()),
        eos_token_id=tok.eos_token_id,
        api_key=api_key,
    )
    app = create_app(state)
    if args.host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        log.warning(
            "listening on %s without an API key: anyone who can reach this port can use the model "
            "(give --api-key or %s)",
            args.host,
            API_KEY_ENV,
        )
    log.info(
        "model %s (%s, %s positions, context %d, vocab %d) on %s; limits: batch %d, queue %d, max_tokens %d, "
        "prompt %d tokens, body %d bytes%s; decoding: %s",
        model_id,
        cfg.arch,
        "learned" if learned else "rotary",
        ctx,
        state.vocab_size,
        device,
        args.max_batch,
        args.max_queue,
        limits.max_tokens,
        limits.max_prompt_tokens,
        limits.max_body_bytes,
        ", API key required" if api_key else "",
        "static slots, CUDA graph" if engine.static and device.type == "cuda" else
        "static slots" if engine.static else "eager batch",
    )  # fmt: skip
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=max(1, int(args.drain_seconds)),
        # Connections beyond what the batch and queue can hold get 503 before any body is read.
        limit_concurrency=args.max_batch + args.max_queue + 64,
    )
    # uvicorn re-raises the signal that stopped it once it is done; these handlers take it, so a graceful
    # stop logs its summary and exits 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    _server_class(state)(config).run()
    engine.stop(drain=False, timeout=10)
    log.info("stopped (%d tokens generated in %d decode steps)", engine.tokens_out, engine.steps)
    return 0


def _server_class(state: Any) -> type[Any]:
    """uvicorn's server, which also logs the address it got and, on SIGTERM/SIGINT, closes the door first."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            for server in self.servers:
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    log.info("serving on http://%s:%d/ (the playground; the API under /v1)", host, port)

        def handle_exit(self, sig: int, frame: Any) -> None:
            if not state.draining:
                log.info("%s: taking no new requests; running ones may finish", signal.Signals(sig).name)
            state.draining = True
            state.engine.close_intake()
            super().handle_exit(sig, frame)

    return Server


def main(argv: Sequence[str] | None = None, *, prog: str = TAG) -> int:
    """Entry point of ``gptrs-serve`` and ``python -m gptrs.serve``; returns the exit status."""
    args = build_parser(prog).parse_args(argv)
    setup_logging(args.log_level)
    tune_host_allocator()
    return run_main(lambda: serve(args), tag=TAG, log_level=args.log_level)


if __name__ == "__main__":
    sys.exit(main(prog="python -m gptrs.serve"))
