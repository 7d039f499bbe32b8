"""gptrs benchmarks: ``python -m benches [tokenizer|data|train|generate|reliability|all] [--quick]``.

See ``benches/__main__.py`` for the entry point and ``benches/common.py`` for the shared helpers.
"""
