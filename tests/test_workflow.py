"""The Snakemake study pipeline: lint, dry runs of every profile, the OAR profile scripts, the
Nix flake and the conda env against pyproject.toml, the figure registry against the workflow,
the cluster profiles on a machine without their scheduler, and (slow tier) the Burgers study end
to end; the tiny DAG and its report are in test_workflow_report.py.

Snakemake runs in a temporary copy of the workflow (Snakefile, workflow/, config/, profiles/
and the root links `slurm`, `oar`) without src/: the rules import breed as installed in the
environment, and results/ of the working tree never change what a dry run lists.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
QUICK_JOBS = {
    "validation_config": 1,
    "make_validation": 1,
    "run_config": 6,
    "breed_run": 6,
    "tables": 1,
    "summary": 1,
    "fig3a": 1,
    "fig4": 1,
    "fig6": 1,
    "all": 1,
}


def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow in ``dest``, laid out as at the repository root."""
    for name in ("Snakefile",):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("workflow", "config", "profiles"):
        shutil.copytree(
            ROOT / name,
            dest / name,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    for name in ("slurm", "oar"):
        os.symlink(os.readlink(ROOT / name), dest / name)
    return dest


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A copy of the workflow, laid out as at the repository root."""
    return copy_workflow(tmp_path)


def snakemake(
    workdir: Path, *args: str, timeout: float = 60, path: str | None = None
) -> subprocess.CompletedProcess:
    """Snakemake in ``workdir``, the venv's bin first on PATH (or ``path`` as PATH)."""
    search = path or f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "PATH": search}
    env.pop("SNAKEMAKE_PROFILE", None)
    return subprocess.run(
        [*SNAKEMAKE, *args], cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env
    )


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run."""
    table = output.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in table.splitlines()[3:] if line.strip()]
    return {name: int(count) for name, count in rows if name != "total"}


@pytest.mark.timeout(60)
def test_lint_is_clean(workdir: Path) -> None:
    proc = snakemake(workdir, "--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("profile", [None, "slurm", "oar"])
def test_dry_run_of_each_profile_lists_the_quick_study(workdir: Path, profile: str) -> None:
    args = ["--profile", profile] if profile else []
    proc = snakemake(workdir, *args, "--dry-run")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert job_counts(out) == QUICK_JOBS
    # profiles/default is applied automatically, the named profile is found by its name
    used = f"Using profiles {profile} and workflow" if profile else "Using workflow"
    assert f"{used} specific profile profiles/default" in out
    if profile:
        assert f"{profile}/backend.yaml" in out  # the profile's scheduler for breed run


@pytest.mark.timeout(60)
def test_dry_run_of_the_paper_lists_every_grid_point(workdir: Path) -> None:
    proc = snakemake(workdir, "--profile", "slurm", "--dry-run", "--config", "study=paper")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # models 9 x 2 x 3 seeds; sampling (12 Breed + 1 Random) x 3; mixing (8 + 1) x 3
    assert job_counts(out) == {
        "validation_config": 3,
        "make_validation": 3,
        "run_config": 120,
        "breed_run": 120,
        "tables": 3,
        "summary": 3,
        "fig3a": 1,
        "fig3b": 2,
        "fig4": 3,
        "fig6": 3,
        "all": 1,
    }
    assert "results/sampling/configs/breed-H16-L1-s0.0125-P10-N200-r0.5-0.9-3-seed2.yaml" in out


@pytest.mark.timeout(60)
def test_invalid_config_is_one_clear_error(workdir: Path) -> None:
    proc = snakemake(workdir, "--dry-run", "--config", "study=nope")
    assert proc.returncode != 0
    assert "study: 'nope' is not one of" in proc.stdout + proc.stderr


@pytest.mark.timeout(60)
def test_without_breed_installed_the_workflow_stops_with_the_set_up_command(workdir: Path) -> None:
    """The workflow never reaches into src/: an interpreter that cannot import breed (None in
    sys.modules makes the import fail as an absent package does) gets one line naming the fix."""
    run = (
        "import sys; sys.modules['breed'] = None; sys.argv[0] = 'snakemake'; "
        "from snakemake.cli import main; main()"
    )
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("SNAKEMAKE_PROFILE", None)
    proc = subprocess.run(
        [sys.executable, "-c", run, "--dry-run"],
        cwd=workdir,
        text=True,
        capture_output=True,
        timeout=50,
        env=env,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "profile" not in line]
    assert len(lines) == 1 and lines[0].startswith("cannot import breed ("), proc.stderr
    assert '.venv/bin/pip install -e ".[dev]"' in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- figures
def test_every_registered_figure_has_a_caption_tables_and_a_schema_name() -> None:
    """Adding a figure is an entry of breed.study.figures.FIGURES (plus its caption): the
    workflow makes its rule from it; the config schema's list of names must follow."""
    from breed import study as S
    from breed.study import figures as F

    for name in F.FIGURES:
        assert (ROOT / "workflow" / "report" / f"{name}.rst").is_file(), name
        assert set(F.figure_tables(name)) <= set(S.TABLES), name
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    study = schema["properties"]["studies"]["additionalProperties"]["properties"]
    assert study["figures"]["items"]["enum"] == list(F.FIGURES)


# --------------------------------------------------------------------------- OAR profile
def load_script(name: str):
    spec = importlib.util.spec_from_file_location(
        name.replace("-", "_"), ROOT / "profiles" / "oar" / name
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OARSUB_OUTPUT = """\
[ADMISSION RULE] Set default walltime to 7200.
[ADMISSION RULE] Modify resource description with type constraints
OAR_JOB_ID=4242
"""


def test_oarsub_output_is_parsed_after_admission_rules() -> None:
    submit = load_script("oar-submit.py")
    assert submit.parse_job_id(OARSUB_OUTPUT) == "4242"
    with pytest.raises(ValueError, match="no OAR_JOB_ID"):
        submit.parse_job_id("[ADMISSION RULE] Error: bad resource request\n")


def test_oarsub_command_from_job_properties() -> None:
    submit = load_script("oar-submit.py")
    props = {
        "rule": "breed_run",
        "threads": 3,
        "resources": {
            "runtime": 90,
            "mem_mb": 2000,
            "oar_queue": "besteffort",
            "oar_extra": "-t idempotent",
        },
    }
    argv = submit.oarsub_argv(props, "/w/.snakemake/tmp/job.sh", "/w", "/w/logs")
    assert argv[0] == "oarsub" and argv[-1] == "/w/.snakemake/tmp/job.sh"
    assert "/nodes=1/core=3,walltime=1:30:00" in argv
    assert argv[argv.index("--queue") + 1] == "besteffort"
    assert argv[argv.index("--directory") + 1] == "/w"
    assert ["-t", "idempotent"] == argv[-3:-1]
    assert submit.walltime(5) == "0:05:00"


@pytest.mark.parametrize(
    "text, status",
    [
        ('{"4242": {"state": "Running", "exit_code": null}}', "running"),
        ('{"4242": {"state": "Waiting"}}', "running"),
        ('{"4242": {"state": "Terminated", "exit_code": 0}}', "success"),
        ('{"4242": {"state": "Terminated", "exit_code": 256}}', "failed"),
        ('{"4242": {"state": "Error", "exit_code": null}}', "failed"),
        ("Job_Id: 4242\n    state = Terminated\n    exit_code = 0 (0,0,0)\n", "success"),
        ("Job_Id: 4242\n    state = Terminated\n    exit_code = 256 (1,0,0)\n", "failed"),
        ("Job_Id: 4242\n    state = Finishing\n", "running"),
    ],
)
def test_oarstat_states(text: str, status: str) -> None:
    assert load_script("oar-status.py").parse_status(text) == status


def fake_bin(tmp_path: Path, name: str, body: str) -> None:
    """FAKE scheduler command (a boundary we do not own): records its argv, prints ``body``.
    The real OAR daemons are exercised by the oar-marked tests of the cluster CI."""
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/{name}.argv\ncat <<'EOF'\n{body}EOF\n")
    path.chmod(0o755)


@pytest.mark.timeout(30)
def test_submit_and_status_scripts_against_fake_oar_commands(tmp_path: Path) -> None:
    fake_bin(tmp_path, "oarsub", OARSUB_OUTPUT)
    fake_bin(tmp_path, "oarstat", '{"4242": {"state": "Terminated", "exit_code": 0}}\n')
    jobscript = tmp_path / "job.sh"
    props = {"rule": "tables", "threads": 1, "resources": {"runtime": 30}}
    jobscript.write_text(f"#!/bin/sh\n# properties = {json.dumps(props)}\necho hi\n")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    oar = ROOT / "profiles" / "oar"
    out = subprocess.run(
        [oar / "oar-submit.py", jobscript],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=20,
    )
    assert (out.returncode, out.stdout.strip()) == (0, "4242"), out.stderr
    assert "/nodes=1/core=1,walltime=0:30:00" in (tmp_path / "oarsub.argv").read_text()
    out = subprocess.run(
        [oar / "oar-status.py", "4242"], capture_output=True, text=True, env=env, timeout=20
    )
    assert (out.returncode, out.stdout.strip()) == (0, "success"), out.stderr


# --------------------------------------------------------------------------- schedulers absent
def path_without(shadow: Path, *commands: str) -> str:
    """The venv's bin and this PATH with ``commands`` hidden: a folder holding one of them
    is replaced by a shadow folder under ``shadow`` linking everything else it holds (Debian's
    slurm-client puts sbatch in /usr/bin, next to bash and which)."""
    dirs = [str(Path(sys.executable).parent), *os.environ["PATH"].split(os.pathsep)]
    out = []
    for k, d in enumerate(dict.fromkeys(x for x in dirs if x)):
        if not any(Path(d, c).exists() for c in commands):
            out.append(d)
            continue
        copy = shadow / f"path{k}"
        copy.mkdir(parents=True)
        for entry in Path(d).iterdir():
            if entry.name not in commands:
                (copy / entry.name).symlink_to(entry)
        out.append(str(copy))
    return os.pathsep.join(out)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("profile, command", [("slurm", "sbatch"), ("oar", "oarsub")])
def test_a_cluster_profile_without_its_scheduler_fails_at_once_in_one_line(
    workdir: Path, tmp_path: Path, profile: str, command: str
) -> None:
    """Before any job (a dry run of the same DAG is the floor: ~2 s idle, ~7 s on the loaded
    CI machine), not at the first submission (40 s, or a traceback under OAR)."""
    t0 = time.monotonic()
    proc = snakemake(
        workdir,
        "--profile",
        profile,
        "--config",
        "study=tiny",
        timeout=100,
        path=path_without(tmp_path, command),
    )
    elapsed = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    lines = [line for line in out.splitlines() if f"{command} not found" in line]
    assert lines == [
        f"{command} not found on PATH: {profile} jobs cannot be submitted from this machine "
        f"(run on a {profile} submit host, or without the {profile} profile/backend)"
    ], out
    assert "Traceback" not in out and "Error" not in out
    assert not (workdir / "results").exists()  # no job ran, not even the local ones
    assert elapsed < 30, elapsed


@pytest.mark.timeout(30)
def test_oar_submit_script_without_oarsub_is_one_line(tmp_path: Path) -> None:
    jobscript = tmp_path / "job.sh"
    props = {"rule": "tables", "threads": 1, "resources": {"runtime": 30}}
    jobscript.write_text(f"#!/bin/sh\n# properties = {json.dumps(props)}\necho hi\n")
    env = {**os.environ, "PATH": path_without(tmp_path, "oarsub")}
    out = subprocess.run(
        [sys.executable, ROOT / "profiles" / "oar" / "oar-submit.py", jobscript],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=20,
    )
    assert out.returncode == 2
    assert out.stderr == "oar-submit.py: oarsub not found on PATH (not an OAR submit host?)\n"


# --------------------------------------------------------------------------- environments
def pyproject_names() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for deps in project["optional-dependencies"].values():
        specs += [d for d in deps if not d.startswith(project["name"] + "[")]
    return {re.split(r"[<>=!~;\[ ]", s, maxsplit=1)[0].lower().replace("_", "-") for s in specs}


def nix(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("nix-instantiate")
    if exe is None:
        pytest.skip("nix-instantiate not installed (Debian: apt-get install nix-bin)")
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(60)
def test_flake_parses() -> None:
    proc = nix("--parse", "flake.nix")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.timeout(60)
def test_flake_maps_every_pyproject_dependency() -> None:
    expr = "((import ./flake.nix).outputs { self = {}; nixpkgs = {}; }).lib"
    proc = nix("--eval", "--strict", "--json", "-E", expr)
    assert proc.returncode == 0, proc.stderr
    lib = json.loads(proc.stdout)
    assert lib["unmapped"] == []
    assert set(lib["pypiNames"]) == pyproject_names()
    assert set(lib["groups"]["runtime"]) == {
        re.split(r"[<>=!~;\[ ]", s, maxsplit=1)[0].lower()
        for s in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }


@pytest.mark.timeout(60)
def test_flake_reports_a_new_unmapped_dependency(tmp_path: Path) -> None:
    shutil.copy2(ROOT / "flake.nix", tmp_path / "flake.nix")
    text = (ROOT / "pyproject.toml").read_text()
    (tmp_path / "pyproject.toml").write_text(
        text.replace("dependencies = [\n", 'dependencies = [\n  "Some_New.Package>=1",\n', 1)
    )
    expr = f"((import {tmp_path}/flake.nix).outputs {{ self = {{}}; nixpkgs = {{}}; }}).lib"
    proc = nix("--eval", "--strict", "--json", "-E", expr)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["unmapped"] == ["some-new-package"]


CONDA_ONLY = {"python", "pip"}  # what pip cannot install: the interpreter and pip itself


def conda_env_problems(env: dict, root: Path) -> list[str]:
    """What breaks the conda env's contract: conda brings only python (as pyproject.toml's
    requires-python) and pip; pip installs the checkout at ``root``, editable, with extras of
    pyproject.toml, and nothing else. Conda runs pip in the folder of Snakemake's copy of the
    env file, ``<working directory>/.snakemake/conda``."""
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    problems = []
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = [d for d in env["dependencies"] if isinstance(d, dict)]
    for spec in conda:
        name, _, version = spec.partition(" ")
        if name not in CONDA_ONLY:
            problems.append(f"conda lists {name}: breed's dependencies belong in pyproject.toml")
        if name == "python" and version.replace(" ", "") != project["requires-python"]:
            problems.append(f"python {version} is not requires-python {project['requires-python']}")
    if {spec.partition(" ")[0] for spec in conda} != CONDA_ONLY:
        problems.append(f"conda must list exactly {sorted(CONDA_ONLY)}")
    reqs = [r for d in pip for r in d.get("pip", [])]
    match = re.fullmatch(r"-e\s+(\S+?)(?:\[([\w,-]+)\])?", reqs[0]) if len(reqs) == 1 else None
    if match is None:
        return [*problems, f"pip must install only the checkout, editable (-e PATH), not {reqs}"]
    path, extras = match.group(1), (match.group(2) or "").split(",")
    if (root / ".snakemake" / "conda" / path).resolve() != root.resolve():
        problems.append(f"-e {path} from .snakemake/conda is not the repository root")
    unknown = [e for e in extras if e and e not in project["optional-dependencies"]]
    if unknown:
        problems.append(f"extras {unknown} are not in pyproject.toml")
    return problems


def test_conda_env_installs_the_checkout_and_lists_no_dependency_of_its_own() -> None:
    env = yaml.safe_load((ROOT / "workflow" / "envs" / "breed.yaml").read_text())
    assert conda_env_problems(env, ROOT) == []


@pytest.mark.parametrize(
    "dependencies, problem",
    [
        (
            ["python >=3.11", "pip", "numpy >=1.26", {"pip": ["-e ../..[mpich]"]}],
            "conda lists numpy",
        ),
        (["python >=3.10", "pip", {"pip": ["-e ../.."]}], "not requires-python"),
        (["python >=3.11", {"pip": ["-e ../.."]}], "exactly ['pip', 'python']"),
        (["python >=3.11", "pip", {"pip": ["-e .."]}], "is not the repository root"),
        (["python >=3.11", "pip", {"pip": ["-e ../..[gpu]"]}], "extras ['gpu']"),
        (["python >=3.11", "pip", {"pip": ["-e ../..", "torch"]}], "only the checkout"),
        (["python >=3.11", "pip"], "only the checkout"),
    ],
)
def test_conda_env_contract_catches_a_second_dependency_list(
    dependencies: list, problem: str
) -> None:
    problems = conda_env_problems({"dependencies": dependencies}, ROOT)
    assert any(problem in p for p in problems), problems


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_study_of_another_problem_runs_end_to_end(workdir: Path) -> None:
    """The burgers study at a quarter of its budget (S=30, 400 iterations, the same DAG): its
    validation set made by the Burgers client, both methods at equal iterations, tables and
    figures in the problem's own parameters."""
    import pandas as pd

    from breed.learning.validation import load_validation

    config = workdir / "config" / "config.yaml"
    cfg = yaml.safe_load(config.read_text())
    base = cfg["studies"]["burgers"]["base"]
    base["study"]["simulations"] = 30
    base["buffer"] = {"watermark": 60, "capacity": 400}
    base["training"]["iterations"] = 400
    base["validation"]["size"] = 12
    base["sampler"]["breed"].update(period=10, window=10)
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = snakemake(workdir, "--cores", "2", "--config", "study=burgers", timeout=540)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    res = workdir / "results" / "burgers"
    assert load_validation(res / "validation.npz").problem["name"] == "burgers1d"
    assert not list(res.glob("validation.npz.collect*"))
    for fig in ("fig3a", "fig4", "fig6"):
        assert (res / "figures" / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"
    runs = pd.read_csv(res / "tables" / "runs.csv")
    assert len(runs) == 4 and set(runs["iterations"]) == {400}  # equal training budgets
    inputs = pd.read_csv(res / "tables" / "inputs.csv")
    assert list(inputs.columns[:6]) == ["sim_id", "nu", "a", "b", "source", "generation"]
    assert set(inputs["statistic"]) == {"std(nu..b in the unit box)"}
    assert len(inputs) == 4 * 30 and inputs["nu"].between(0.02, 0.3).all()
    ratios = (res / "tables" / "ratios.csv").read_text().splitlines()
    assert ratios[0].startswith("study,config_id,pair_id,reference,metric,pairs,")
    assert ratios[1].startswith(
        "burgers,breed-H64-L2-s0.05-P10-N10-r0.5-0.9-3,H64-L2,True,val_mse,2,"
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_oar_profile_backend_reaches_the_run_configs(workdir: Path) -> None:
    """A local rule under the oar profile: the profile's backend merges with --config."""
    target = "results/tiny/configs/random-H16-L1-seed0.yaml"
    proc = snakemake(
        workdir, "--profile", "oar", "--config", "study=tiny", "--", target, timeout=100
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_cfg = yaml.safe_load((workdir / target).read_text())
    assert run_cfg["launcher"]["backend"] == "oar"
    assert run_cfg["study"]["simulations"] == 30  # study=tiny kept
