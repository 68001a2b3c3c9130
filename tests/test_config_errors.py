"""Every invalid configuration -> exit code 2 and one line naming the key, before anything
starts. Walks the run schema (src/breed/schemas/run.schema.yaml) so a new key is covered the day
it is added: per leaf a wrong type, values out of range, a value outside its enum; per object an
unknown key; plus the checks the schema cannot express (missing file, cross-field, runtime)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from breed.config import load_schema
from breed.launcher import runner

SCHEMA = load_schema()


def leaves(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[tuple[str, dict]]:
    for key, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object":
            yield from leaves(sub, (*path, key))
        else:
            yield ".".join((*path, key)), sub


def objects(schema: dict[str, Any], path: tuple[str, ...] = ()) -> Iterator[str]:
    yield ".".join(path)
    for key, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object":
            yield from objects(sub, (*path, key))


def bad_values(spec: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(what, value) pairs that the schema must refuse for this leaf."""
    types = spec.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    if "enum" in spec:
        yield "not in enum", "no-such-choice"
        yield "wrong type", 3.5
    if types:
        if "string" in types:
            yield "wrong type", 12345
        elif "array" in types:
            yield "wrong type", "not-a-list"
        else:
            yield "wrong type", "not-a-number" if "boolean" not in types else "yes"
    if "array" in types:
        items = spec.get("items", {})
        yield "wrong item type", ["x", "y"] if items.get("type") == "number" else [1, 2]
        if "minItems" in spec:
            yield "too few items", [1.0] * (spec["minItems"] - 1)
        if "maxItems" in spec:
            yield "too many items", [1.0] * (spec["maxItems"] + 1)
    integer = "integer" in types
    step = 1 if integer else 0.5
    if "minimum" in spec:
        yield "below minimum", spec["minimum"] - step
    if "exclusiveMinimum" in spec:
        yield "at exclusive minimum", spec["exclusiveMinimum"]
    if "maximum" in spec:
        yield "above maximum", spec["maximum"] + step
    if "exclusiveMaximum" in spec:
        yield "at exclusive maximum", spec["exclusiveMaximum"]


def nest(dotted: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return out


CASES = [(key, what, value) for key, spec in leaves(SCHEMA) for what, value in bad_values(spec)]


def expect_exit_2(tmp_path: Path, capsys, cfg: dict[str, Any], key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    code = runner.main([str(path), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2, (key, err)
    assert err.count("\n") == 1 and err.startswith("breed run: "), err
    assert re.search(rf"breed run: {re.escape(key)}(\.\d+)?[: ]", err), (key, err)
    assert not out.exists()  # nothing started, nothing written


def test_schema_walk_covers_every_leaf() -> None:
    covered = {key for key, _, _ in CASES}
    assert covered == {key for key, _ in leaves(SCHEMA)}  # each leaf has at least one case
    assert len(CASES) > 100


@pytest.mark.parametrize(("key", "what", "value"), CASES, ids=[f"{k}-{w}" for k, w, _ in CASES])
def test_invalid_leaf_value(tmp_path: Path, capsys, key: str, what: str, value: Any) -> None:
    expect_exit_2(tmp_path, capsys, nest(key, value), key)


@pytest.mark.parametrize("parent", list(objects(SCHEMA)))
def test_unknown_key(tmp_path: Path, capsys, parent: str) -> None:
    key = f"{parent}.no_such_key" if parent else "no_such_key"
    expect_exit_2(tmp_path, capsys, nest(key, 1), key)


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"validation": {"file": "/no/such/validation.npz"}}, "validation.file"),
        ({"solver": {"bounds": [500.0, 100.0]}}, "solver.bounds"),
        ({"buffer": {"capacity": 10, "watermark": 20}}, "buffer.watermark"),
        ({"launcher": {"host": "no-such-interface-or-host.invalid"}}, "launcher.host"),
        ({"launcher": {"max_message_bytes": 2048}}, "launcher.max_message_bytes"),
        ({"solver": {"ranks": 2}, "launcher": {"mpiexec": "no-such-mpiexec"}}, "launcher.mpiexec"),
        ({"launcher": {"server_ranks": 2, "mpiexec": "no-such-mpiexec"}}, "launcher.mpiexec"),
        ({"sampler": {"breed": {"r_start": 2}}}, "sampler.breed.r_start"),
        ({"model": {"device": "gpu"}}, "model.device"),
    ],
)
def test_checks_beyond_types(tmp_path: Path, capsys, cfg: dict, key: str) -> None:
    expect_exit_2(tmp_path, capsys, cfg, key)


def test_missing_or_broken_config_file(tmp_path: Path, capsys) -> None:
    assert runner.main([str(tmp_path / "none.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("model: {hidden: [")
    assert runner.main([str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert runner.main(["--resume", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_exit_code_2_through_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"launcher": {"max_jobs": 0}}))
    proc = subprocess.run(
        [sys.executable, "-m", "breed", "run", str(path), "--output", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "launcher.max_jobs" in proc.stderr and not (tmp_path / "run").exists()
