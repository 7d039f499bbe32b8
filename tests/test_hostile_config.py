"""Hostile configs through ``python -m gptrs.config --check``: YAML alias bombs ("billion laughs") and recursive
aliases refused by size before anything renders them, absurd integers and model sizes, huge values and keys
quoted clipped, special files, YAML tags. Each case: exit status 2, one line naming the file or ``--set``
and the key, no traceback, under an address-space cap and a timeout. The table is
``tests/reliability/hostile_more.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.reliability import hostile_cases as hc
from tests.reliability import hostile_more as hm


@pytest.mark.parametrize("case", hm.config_cases(), ids=lambda c: c.name)
def test_config(case: hc.Case, hostile_tokenizer_dir: Path) -> None:
    out = hc.run_case(case, hostile_tokenizer_dir)
    assert out.ok, out.detail


def test_bomb_is_a_bomb() -> None:
    """The alias bomb stands for 9**9 values: the refusal is about its size, not its syntax."""
    import yaml

    node = yaml.compose(hm._laughs(depth=3), Loader=yaml.SafeLoader)
    assert node is not None
    data = yaml.safe_load(hm._laughs(depth=3))
    assert len(data) == 3 and len(data[2]) == 9 and len(data[2][0]) == 9 and data[2][0][0][0] == "lol"


def test_values_below_the_bound_load() -> None:
    """Aliases as such are fine: a document whose expansion stays under the bound loads."""
    import yaml

    from gptrs.config import load_config
    from gptrs.config.io import MAX_YAML_NODES, Loader, check_expanded_size

    text = "data:\n  source: files\n  paths: &p [a.txt, b.txt]\nx: *p\n"
    assert yaml.load(text, Loader=Loader)["x"] == ["a.txt", "b.txt"]
    node = yaml.compose(hm._laughs(depth=5, width=9), Loader=Loader)  # 9**5 = 59049 < 100000
    check_expanded_size(node, MAX_YAML_NODES)
    with pytest.raises(yaml.YAMLError, match="expands to more than 1000 values"):
        check_expanded_size(node, 1000)
    assert load_config("small").model.heads > 0
