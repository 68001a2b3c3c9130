"""Run configuration: load YAML, validate against the JSON schema, fill defaults.

Errors are one line that names the key (``sampler.breed.sigma: -1 is less than or equal to the
minimum of 0``), raised as :class:`ConfigError`; the CLI turns them into exit code 2 before
anything starts.
"""

from __future__ import annotations

import copy
import math
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

RUN_SCHEMA = "run.schema.yaml"


class ConfigError(ValueError):
    """An invalid configuration; the message is one line naming the key."""


def load_schema(name: str = RUN_SCHEMA) -> dict[str, Any]:
    text = resources.files("breed").joinpath("schemas", name).read_text()
    return yaml.safe_load(text)


def _fill_defaults(schema: dict[str, Any], data: Any) -> Any:
    """Recursively insert schema defaults for missing object keys (before validation)."""
    if not isinstance(data, dict) or schema.get("type") != "object":
        return data
    for key, sub in schema.get("properties", {}).items():
        if key not in data and "default" in sub:
            data[key] = copy.deepcopy(sub["default"])
        if key in data:
            data[key] = _fill_defaults(sub, data[key])
    return data


def _path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        parts.append(extra[0] if extra else "?")
        return ".".join(parts)
    if error.validator == "required":
        parts.append(error.message.split("'")[1])
    return ".".join(parts) or "<root>"


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return "unknown key"
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {error.validator_value}"
    return error.message.replace("\n", " ")


def check_finite(data: Any, path: str = "") -> None:
    """Refuse NaN and infinities anywhere (YAML's ``.nan``/``.inf``): JSON Schema's bounds let
    them through (``nan > 0`` is False, but so is ``nan <= 0``), and a NaN timeout would turn a
    check off silently."""
    if isinstance(data, dict):
        for key, value in data.items():
            check_finite(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for k, value in enumerate(data):
            check_finite(value, f"{path}.{k}")
    elif isinstance(data, float) and not math.isfinite(data):
        raise ConfigError(f"{path or '<root>'}: {data} is not a finite number")


def validate(data: Any, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a validated deep copy of ``data`` with defaults filled in."""
    schema = schema or load_schema()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("<root>: a configuration must be a mapping of keys")
    check_finite(data)
    data = _fill_defaults(schema, copy.deepcopy(data))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        best = jsonschema.exceptions.best_match(errors) or errors[0]
        raise ConfigError(f"{_path(best)}: {_message(best)}")
    lo, hi = data["solver"]["bounds"]
    if not lo < hi:
        raise ConfigError(f"solver.bounds: lower bound {lo} must be below upper bound {hi}")
    from breed.problems import problem_of  # the problem's own checks, one line naming the key

    problem_of(data)
    buf = data["buffer"]
    if buf["watermark"] > buf["capacity"]:
        raise ConfigError(
            f"buffer.watermark: {buf['watermark']} exceeds buffer.capacity {buf['capacity']}"
        )
    vfile = data["validation"]["file"]
    if vfile is not None and not Path(vfile).is_file():
        raise ConfigError(f"validation.file: no such file {vfile!r}")
    from breed.learning.budget import check_budget  # the budget keys, related to each other

    check_budget(data)
    return data


MAX_CONFIG_BYTES = 1 << 20  # a run config is a page of YAML; more is not one


def read_text(path: Path, what: str = "config") -> str:
    """A small UTF-8 text file, or a one-line :class:`ConfigError` saying why it is not one
    (missing, a directory, unreadable, binary, another encoding, huge)."""
    try:
        if path.is_dir():
            raise ConfigError(f"{what}: {path} is a directory, not a file")
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{what}: no such file {str(path)!r}") from None
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{what}: {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; not a configuration"
        )
    if b"\0" in data:
        hint = " (UTF-16? save it as UTF-8)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError(f"{what}: {path} is a binary file, not YAML text{hint}")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what}: {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None


def parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{where} is not valid YAML{line}") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML file, apply dotted-key ``overrides`` and validate."""
    path = Path(path)
    raw = parse_yaml(read_text(path), f"config: {path}")
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {path} holds a {type(raw).__name__}, not a mapping of keys")
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return validate(raw)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["model.hidden=32", ...]`` (``--set``) -> ``{"model.hidden": 32}``, values as YAML."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(
                f"--set {item!r}: expected KEY=VALUE with a dotted KEY (the config file goes "
                "before --set)"
            )
        out[key] = parse_yaml(value, f"--set {key}: {value!r}")
    return out


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(cfg, "model.hidden", 32)`` -> ``cfg["model"]["hidden"] = 32``."""
    *parents, last = key.split(".")
    node = data
    for k, part in enumerate(parents):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {'.'.join(parents[: k + 1])} is not a mapping")
    node[last] = value


def dump_config(data: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
