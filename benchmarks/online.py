"""On-line vs off-line training throughput, and per-simulation orchestration overhead.

In one run and one process tree:
  (b) on-line: ``breed run`` with the local backend (real server, real clients, ZeroMQ);
  (a) off-line: the same model, same torch thread count, trained in this process for the same
      number of iterations on the same simulations' samples, all held in memory.
Each on-line run is paired with the off-line trainer measured right after it (same iterations),
and the modes are interleaved over ``--repeats`` rounds; per mode the min-max over the rounds of
the ratio on-line/off-line of trainer samples/s after the watermark is printed, with the fraction of
training iterations that waited for data, and the per-simulation overhead beyond the solve
(persistent clients). The trainer gets ``--threads`` torch threads. With shared cores the
clients and the receiver compete with it for every core, so the ratio also measures that
sharing; with ``training.cores: dedicated`` they run on the remaining cores only.

    python benchmarks/online.py                         # paper model, CPU, ~6 min
    python benchmarks/online.py --hidden 64 --layers 3 --device cuda --clients 8

Each ingest mode (``--ingest``) runs with each ``training.cores`` setting (``--cores``):
shared cores, and the trainer bound to cores of its own (breed.cores), and each step batch
(``--batch``: ``launcher.batch_steps``, 1 = one time step per message, ``auto`` = the
default, about 1 MiB per message; docs/PROTOCOL.md 6.1).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from minmax import span

from breed.config import validate
from breed.learning.reservoir import buffer_from_config
from breed.learning.trainer import Trainer
from breed.problems.heat2d_solver import solve


def run_config(args: argparse.Namespace) -> dict:
    return validate(
        {
            "seed": args.seed,
            "study": {"simulations": args.simulations},
            "solver": {"grid": args.grid, "steps": 100},
            "model": {"hidden": args.hidden, "layers": args.layers, "device": args.device},
            "training": {
                "validation_interval": 10**9,
                "checkpoint_interval": 10**9,
                "threads": args.threads,
                "progress": False,
                "max_iterations": args.max_iterations,
                "cores": args.cores[0],
            },
            "buffer": {"capacity": args.capacity, "watermark": 300},
            "launcher": {
                "max_jobs": args.clients,
                "persistent": True,
                "ping_interval": 0.2,
                "poll_interval": 0.2,
                "ingest": args.ingest[0],
            },
            "validation": {"size": 4},
        }
    )


def online(cfg: dict, workdir: Path) -> tuple[dict, list[dict]]:
    path = workdir / "online.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = workdir / "online"
    # one BLAS/OpenMP thread per client process: the clients share the cores left over
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "breed", "run", str(path), "--output", str(run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        sys.exit(f"on-line run failed: {proc.stderr.strip()}")
    summary = json.loads((run / "summary.json").read_text())
    with open(run / "samples.csv") as fh:
        return summary, list(csv.DictReader(fh))


def offline(cfg: dict, rows: list[dict], iterations: int) -> float:
    """Trainer samples/s with every sample of the same simulations already in memory."""
    torch.set_num_threads(cfg["training"]["threads"])
    sc = cfg["solver"]
    n = len(rows) * (sc["steps"] + 1)
    cfg = {**cfg, "buffer": {**cfg["buffer"], "capacity": n, "watermark": 1}}
    trainer = Trainer(cfg, seed=cfg["seed"])
    buffer = buffer_from_config(cfg, trainer.normalisation)
    for row in rows:
        params = np.array([float(row[f"T{k}"]) for k in range(5)])
        traj = solve(
            params,
            grid=sc["grid"],
            steps=sc["steps"],
            dt=sc["dt"],
            alpha=sc["alpha"],
            length=sc["length"],
        )
        for t in range(sc["steps"] + 1):
            buffer.put(params, t, traj[t].astype(np.float32).ravel(), int(row["sim_id"]))
    batch_size = cfg["model"]["batch_size"]
    for _ in range(20):  # warm-up (allocator, kernels, CUDA context)
        trainer.step(buffer.sample_batch(batch_size))
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iterations):
        trainer.step(buffer.sample_batch(batch_size))
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return iterations * batch_size / (time.perf_counter() - t0)


def orchestration_overhead(rows: list[dict], grid: int) -> tuple[float, float, float]:
    """(solve s, busy s per simulation, overhead s per simulation) for persistent clients."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    params = np.array([300.0, 100.0, 500.0, 200.0, 400.0])
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        solve(params, grid=grid)
        times.append(time.perf_counter() - t0)
    solve_s = float(np.median(times))
    per_sim = []
    by_job: dict[str, list[dict]] = {}
    for row in rows:
        by_job.setdefault(row["job_id"], []).append(row)
    for sims in by_job.values():
        if len(sims) < 2:
            continue
        first = min(float(r["assign_time"]) for r in sims)
        last = max(float(r["end_time"]) for r in sims)
        per_sim.append((last - first) / len(sims))
    busy = float(np.median(per_sim))
    return solve_s, busy, busy - solve_s


def measure_pair(cfg: dict, workdir: Path) -> dict:
    """One on-line run, then the off-line trainer for the same iterations on its simulations,
    measured right after it, so that both see the machine in the same state."""
    load = os.getloadavg()[0]
    summary, rows = online(cfg, workdir)
    off = offline(cfg, rows, summary["iterations"])
    solve_s, busy, overhead = orchestration_overhead(rows, cfg["solver"]["grid"])
    on = summary["samples_per_s"]
    return {
        "load": load,
        "iterations": summary["iterations"],
        "online_samples_per_s": on,
        "offline_samples_per_s": off,
        "ratio": on / off,
        "waiting_fraction": summary["waiting_fraction"],
        "solve_ms": solve_s * 1e3,
        "busy_ms_per_sim": busy * 1e3,
        "overhead_ms_per_sim": overhead * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--simulations", type=int, default=60)
    ap.add_argument("--grid", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=16)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the trainer")
    ap.add_argument("--clients", type=int, default=1, help="m, client processes")
    ap.add_argument("--capacity", type=int, default=2000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-iterations", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--ingest", default="thread,process", help="server ingest modes to measure, comma-separated"
    )
    ap.add_argument(
        "--cores",
        default="shared,dedicated",
        help="training.cores settings to measure, comma-separated (breed.cores)",
    )
    ap.add_argument(
        "--batch",
        default="1,auto",
        help="launcher.batch_steps settings to measure, comma-separated (auto: the default)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds over every mode (interleaved); each mode's min-max over them is printed",
    )
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args()
    args.ingest = args.ingest.split(",")
    args.cores = args.cores.split(",")
    batches = [None if b == "auto" else int(b) for b in args.batch.split(",")]
    configs = {}
    for ingest in args.ingest:
        for binding in args.cores:
            for batch in batches:
                cfg = run_config(args)
                cfg["launcher"]["ingest"] = ingest
                cfg["launcher"]["batch_steps"] = batch
                cfg["training"]["cores"] = binding
                configs[f"{ingest}/{binding}/{'auto' if batch is None else batch}"] = cfg
    pairs: dict[str, list[dict]] = {mode: [] for mode in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):  # rounds interleave the modes: drift hits them all
            for mode, cfg in configs.items():
                workdir = Path(tmp) / f"{rep}" / mode
                workdir.mkdir(parents=True)
                pairs[mode].append(measure_pair(cfg, workdir))
    print(
        f"device {Trainer(cfg).device}, model H={args.hidden} L={args.layers}, M={args.grid}, "
        f"S={args.simulations}, m={args.clients}, trainer threads={args.threads}; "
        f"{args.repeats} round(s), min-max over them; each on-line run paired with the "
        "off-line trainer measured right after it for the same iterations"
    )
    loads = [p["load"] for runs in pairs.values() for p in runs]
    print(f"  1-min load before the runs: {span(loads, '.2f')}")
    for mode, runs in pairs.items():
        col = {key: [p[key] for p in runs] for key in runs[0]}
        print(
            f"  {mode:22s}: ratio on/off {span(col['ratio'], '.3f'):11s}"
            f"  on-line/s {span(col['online_samples_per_s'], '.0f'):11s}"
            f"  off-line/s {span(col['offline_samples_per_s'], '.0f'):11s}"
            f"  iterations {span(col['iterations'], 'd'):9s}"
            f"  waited {span([100 * w for w in col['waiting_fraction']], '.2f')} %"
            f"  per-sim overhead {span(col['overhead_ms_per_sim'], '.1f')} ms"
            f" (solve {np.median(col['solve_ms']):.1f} ms)"
        )
    if args.json:
        args.json.write_text(json.dumps({"repeats": args.repeats, "modes": pairs}, indent=2))


if __name__ == "__main__":
    main()
