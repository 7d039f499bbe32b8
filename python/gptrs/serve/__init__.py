"""Serve a trained model over HTTP: ``python -m gptrs.serve --model-path RUN_DIR`` (or ``gptrs-serve``).

The OpenAI completions API (``POST /v1/completions``, streaming or not; ``GET /v1/models``; ``GET /health``)
and a playground page at ``/``. Concurrent requests share one decode loop (``engine.py``); the HTTP layer and
its checks are in ``api.py``; this package's ``__main__`` is the command line. Needs the ``serve`` extra
(``pip install "gptrs[serve]"``: FastAPI and uvicorn). See docs/serve.md.
"""
