"""Study grids (paper Section 4.1, Table 1) and the tidy tables drawn from their runs.

Pure functions used by the Snakemake workflow (``workflow/``): a study in ``config/config.yaml``
is a ``base`` run configuration, a ``grid`` (full product) and a ``vary`` mapping (one key at a
time around the base, the centre), repeated over ``seeds``. A seed fixes the model
initialisation and the initial uniform design, so the Random and Breed runs of one seed and one
model are paired; seed noise is large (25-50 % of the final error), hence medians over seeds and
paired Random/Breed ratios (geometric mean) in the summary.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from breed.config import ConfigError, load_schema, set_dotted, validate
from breed.rundir import PER_SAMPLE

# Parameter columns of the tables, named as in the paper (Table 1).
PARAMS: dict[str, str] = {
    "model.hidden": "H",
    "model.layers": "L",
    "sampler.breed.sigma": "sigma",
    "sampler.breed.period": "P",
    "sampler.breed.window": "N",
    "sampler.breed.r_start": "r_s",
    "sampler.breed.r_end": "r_e",
    "sampler.breed.r_ramp": "r_c",
}
BREED_KEYS = [k for k in PARAMS if k.startswith("sampler.breed.")]
METHODS = {"uniform": "random", "breed": "breed"}  # the paper calls uniform sampling "Random"


class StudyError(ValueError):
    """An invalid study declaration; the message is one line naming the study and key."""


@dataclass(frozen=True)
class RunSpec:
    """One grid point and seed: its readable id and its (validated) run configuration."""

    study: str
    run_id: str
    config: dict[str, Any]
    params: dict[str, Any]
    reference: bool  # the study's reference configuration (Fig. 4 and Fig. 6)

    @property
    def seed(self) -> int:
        return int(self.config["seed"])


def get_dotted(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        node = node[part]
    return node


def deep_merge(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win; nested mappings merge key by key."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = deep_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def selected_studies(config: dict[str, Any], name: str | None = None) -> list[str]:
    """Study names behind ``config['study']`` (a study or a set such as ``paper``)."""
    name = config["study"] if name is None else name
    sets = config.get("study_sets", {})
    names = sets.get(name, [name])
    for study in names:
        if study not in config["studies"]:
            known = sorted([*config["studies"], *sets])
            raise StudyError(f"study: {study!r} is not one of {known}")
    return list(names)


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def method_of(config: dict[str, Any]) -> str:
    name = config["sampler"]["name"]
    return METHODS.get(name, name)


def make_run_id(config: dict[str, Any], extra_keys: Sequence[str] = ()) -> str:
    """``breed-H16-L1-s5-P200-N200-r0.5-0.9-3-seed0``: readable from the parameters."""
    parts = [method_of(config), f"H{config['model']['hidden']}", f"L{config['model']['layers']}"]
    if config["sampler"]["name"] == "breed":
        b = config["sampler"]["breed"]
        parts += [
            f"s{_fmt(b['sigma'])}",
            f"P{b['period']}",
            f"N{b['window']}",
            f"r{_fmt(b['r_start'])}-{_fmt(b['r_end'])}-{_fmt(b['r_ramp'])}",
        ]
    for key in extra_keys:
        value = get_dotted(config, key)
        parts.append(f"{key.rsplit('.', 1)[-1].replace('_', '')}{_fmt(value)}")
    parts.append(f"seed{config['seed']}")
    return "-".join(parts).replace("/", "_").replace(" ", "")


def pair_id(config: dict[str, Any], extra_keys: Sequence[str] = ()) -> str:
    """What a Random and a Breed run must share to be paired (besides the seed): the model."""
    parts = [f"H{config['model']['hidden']}", f"L{config['model']['layers']}"]
    parts += [
        f"{k.rsplit('.', 1)[-1].replace('_', '')}{_fmt(get_dotted(config, k))}"
        for k in extra_keys
        if not k.startswith("sampler.")
    ]
    return "-".join(parts)


def run_threads(config: dict[str, Any]) -> int:
    """Cores one ``breed run`` job uses where it runs: the trainer, plus its clients when the
    launcher starts them as local processes (slurm/oar clients run in their own jobs)."""
    trainer = config["training"]["threads"] or 1
    launcher = config["launcher"]
    if launcher["backend"] == "local":
        return trainer + launcher["max_jobs"] * config["solver"]["ranks"]
    return trainer


def _points(mapping: dict[str, list[Any]], product: bool) -> list[dict[str, Any]]:
    if not mapping:
        return [{}]
    if product:
        keys = list(mapping)
        return [
            dict(zip(keys, values, strict=True))
            for values in itertools.product(*(mapping[k] for k in keys))
        ]
    return [{}] + [{key: value} for key, values in mapping.items() for value in values]


@functools.cache
def _run_schema() -> dict[str, Any]:
    return load_schema()  # parsed once: a paper study validates ~100 run configs


def _resolve(study: str, raw: dict[str, Any]) -> dict[str, Any]:
    try:
        cfg = validate(raw, _run_schema())
    except ConfigError as exc:
        raise StudyError(f"studies.{study}: {exc}") from None
    if not cfg["training"]["per_sample_log"]:
        raise StudyError(
            f"studies.{study}: training.per_sample_log must stay true "
            f"(the pipeline reads {PER_SAMPLE} for Fig. 6)"
        )
    if cfg["sampler"]["name"] != "breed":  # Breed settings do not apply: do not split runs
        cfg["sampler"]["breed"] = validate({}, _run_schema())["sampler"]["breed"]
    return cfg


def expand_study(config: dict[str, Any], name: str) -> list[RunSpec]:
    """Every run of study ``name``: base x grid x one-at-a-time vary x seeds, deduplicated."""
    if name not in config["studies"]:
        raise StudyError(f"study: {name!r} is not one of {sorted(config['studies'])}")
    st = config["studies"][name]
    grid, vary = st.get("grid", {}), st.get("vary", {})
    for key in [*grid, *vary]:
        if key.split(".")[0] in ("seed", "output", "validation", "solver", "problem"):
            raise StudyError(
                f"studies.{name}: {key} cannot vary within a study "
                "(one problem, validation set and seed list per study)"
            )
    base = deep_merge(config.get("common", {}), st.get("base", {}))
    base.setdefault("launcher", {})["backend"] = config.get("launcher_backend", "local")
    extra = [k for k in [*grid, *vary] if k not in PARAMS and k != "sampler.name"]
    reference = st.get("reference") or {}
    for key in reference:
        try:
            get_dotted(_resolve(name, copy.deepcopy(base)), key)
        except (KeyError, TypeError):
            raise StudyError(f"studies.{name}.reference: {key} is not a run-config key") from None
    specs: dict[str, RunSpec] = {}
    for seed in st.get("seeds") or config.get("seeds") or [0]:
        for g in _points(grid, product=True):
            for v in _points(vary, product=False):
                raw = copy.deepcopy(base)
                for key, value in {**g, **v}.items():
                    set_dotted(raw, key, value)
                raw["seed"] = seed
                cfg = _resolve(name, raw)
                run_id = make_run_id(cfg, extra)
                is_ref = not v and all(get_dotted(cfg, k) == x for k, x in reference.items())
                params = {
                    "study": name,
                    "run_id": run_id,
                    "config_id": run_id.rsplit("-", 1)[0],
                    "pair_id": pair_id(cfg, extra),
                    "seed": seed,
                    "method": method_of(cfg),
                    "centre": not v,
                }
                for key, col in PARAMS.items():
                    value = get_dotted(cfg, key)
                    params[col] = (
                        None if key in BREED_KEYS and params["method"] != "breed" else value
                    )
                for key in extra:
                    params[key] = get_dotted(cfg, key)
                old = specs.get(run_id)
                if old is not None and old.config != cfg:
                    raise StudyError(f"studies.{name}: two different runs share the id {run_id}")
                if old is None or is_ref:
                    specs[run_id] = RunSpec(name, run_id, cfg, params, is_ref)
    return list(specs.values())


def study_figures(config: dict[str, Any], name: str) -> list[str]:
    """Figures drawn for a study: as declared, else what its shape supports."""
    st = config["studies"][name]
    if st.get("figures") is not None:
        return list(st["figures"])
    figures = ["fig3b"] if st.get("vary") else ["fig3a"]
    methods = {s.params["method"] for s in expand_study(config, name)}
    if {"random", "breed"} <= methods:
        figures += ["fig4", "fig6"]
    return figures


def run_resources(config: dict[str, Any], name: str) -> dict[str, int]:
    """mem_mb, runtime (minutes) and gpu of one run job of study ``name``."""
    default = {"mem_mb": 4000, "runtime": 240, "gpu": 0}
    default.update(config.get("resources", {}).get("run", {}))
    own = config["studies"][name].get("resources") or {}
    default.update({k: v for k, v in own.items() if v is not None})
    return default


def run_config(spec: RunSpec, validation_file: str, run_dir: str) -> dict[str, Any]:
    """The resolved configuration written to ``results/<study>/configs/<run-id>.yaml``."""
    cfg = copy.deepcopy(spec.config)
    cfg["output"] = run_dir
    cfg["validation"]["file"] = validation_file
    return cfg


def validation_config(config: dict[str, Any], name: str) -> dict[str, Any]:
    """Run configuration ``breed make-validation --config`` reads: the study's problem (and
    the heat preset's solver), the validation keys, and the launcher that runs a non-heat
    problem's own clients over the validation design."""
    st = config["studies"][name]
    base = deep_merge(config.get("common", {}), st.get("base", {}))
    base.setdefault("launcher", {})["backend"] = config.get("launcher_backend", "local")
    return _resolve(
        name, {k: base[k] for k in ("problem", "solver", "validation", "launcher") if k in base}
    )


__all__ = [
    "PARAMS",
    "BREED_KEYS",
    "METHODS",
    "StudyError",
    "RunSpec",
    "get_dotted",
    "deep_merge",
    "selected_studies",
    "method_of",
    "make_run_id",
    "pair_id",
    "run_threads",
    "expand_study",
    "study_figures",
    "run_resources",
    "run_config",
    "validation_config",
]
