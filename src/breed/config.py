"""Run configuration: load YAML, validate against the JSON schema, fill defaults.

Errors are one line that names the key (``sampler.breed.sigma: -1 is less than or equal to the
minimum of 0``), raised as :class:`ConfigError`; the CLI turns them into exit code 2 before
anything starts.
"""

from __future__ import annotations

import copy
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


def validate(data: Any, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return a validated deep copy of ``data`` with defaults filled in."""
    schema = schema or load_schema()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("<root>: a configuration must be a mapping of keys")
    data = _fill_defaults(schema, copy.deepcopy(data))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        best = jsonschema.exceptions.best_match(errors) or errors[0]
        raise ConfigError(f"{_path(best)}: {_message(best)}")
    lo, hi = data["solver"]["bounds"]
    if not lo < hi:
        raise ConfigError(f"solver.bounds: lower bound {lo} must be below upper bound {hi}")
    buf = data["buffer"]
    if buf["watermark"] > buf["capacity"]:
        raise ConfigError(
            f"buffer.watermark: {buf['watermark']} exceeds buffer.capacity {buf['capacity']}")
    vfile = data["validation"]["file"]
    if vfile is not None and not Path(vfile).is_file():
        raise ConfigError(f"validation.file: no such file {vfile!r}")
    return data


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a YAML file, apply dotted-key ``overrides`` and validate."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config: no such file {str(path)!r}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config: {path} is not valid YAML{where}") from None
    raw = raw if raw is not None else {}
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return validate(raw)


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(cfg, "model.hidden", 32)`` -> ``cfg["model"]["hidden"] = 32``."""
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a mapping")
    node[last] = value


def dump_config(data: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
