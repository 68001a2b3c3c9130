"""Config validation: defaults filled, every error one line naming the key."""

from __future__ import annotations

import pytest
import yaml

from breed.config import ConfigError, load_config, validate


def test_defaults_are_the_paper_setup() -> None:
    cfg = validate({})
    assert cfg["study"]["simulations"] == 800
    assert cfg["solver"]["grid"] == 64 and cfg["solver"]["steps"] == 100
    assert cfg["model"]["batch_size"] == 128 and cfg["model"]["lr"] == 1e-3
    assert cfg["buffer"]["watermark"] == 300
    assert cfg["launcher"]["max_jobs"] == 10


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"model": {"hiden": 3}}, "model.hiden"),
        ({"sampler": {"breed": {"sigma": -1}}}, "sampler.breed.sigma"),
        ({"launcher": {"backend": "pbs"}}, "launcher.backend"),
        ({"solver": {"grid": "big"}}, "solver.grid"),
        ({"study": {"simulations": 0}}, "study.simulations"),
        ({"bogus": 1}, "bogus"),
        ({"solver": {"bounds": [500, 100]}}, "solver.bounds"),
        ({"buffer": {"capacity": 10, "watermark": 20}}, "buffer.watermark"),
        ({"validation": {"file": "/nonexistent/val.npz"}}, "validation.file"),
    ],
)
def test_errors_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(data)
    msg = str(err.value)
    assert msg.startswith(f"{key}:"), msg
    assert "\n" not in msg


def test_load_config_overrides_and_bad_yaml(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"hidden": 32}}))
    cfg = load_config(path, {"model.layers": 3})
    assert (cfg["model"]["hidden"], cfg["model"]["layers"]) == (32, 3)
    path.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")
