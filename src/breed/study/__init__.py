"""Studies (paper Section 4.1, Table 1): grids of runs (``grid``), the tidy tables read from
their run directories (``tables``) and the paper's figures (``figures``). The names below are
the package's API, used by the Snakemake workflow.

They are imported on first use (PEP 562), so ``breed show`` (``breed.study.show``) does not
pay for pandas and scipy, which only the tables need."""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = ("breed.study.grid", "breed.study.tables")


def _names() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in _MODULES:
        out.update(dict.fromkeys(importlib.import_module(name).__all__, name))
    return out


def __getattr__(name: str) -> Any:
    if name == "__all__":
        return list(_names())
    owner = _names().get(name)
    if owner is None:
        raise AttributeError(f"module 'breed.study' has no attribute {name!r}")
    return getattr(importlib.import_module(owner), name)
