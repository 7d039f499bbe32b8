"""Correctness and fault harnesses (not benchmarks), shared by the tests and runnable on their own.

- ``hostile_cases.py``: hostile and broken inputs, one table per surface (tokenizer files and inputs,
  checkpoints, generation), each case with what it must raise or return; ``tests/test_hostile_*.py`` run them.
- ``reliability.py``: the crash harness (SIGKILL at chosen moments, then ``--resume``, checked bitwise against
  a run never killed), SIGTERM/SIGINT and full-disk scenarios; ``tests/test_crash.py`` runs a short version.
  ``python tests/reliability/reliability.py --kills 24 --seed 0`` (or ``python -m tests.reliability``).
- ``hook.py``: the child side of the crash harness, a hook on ``gptrs.faults``' named fault points.
"""
