"""Multi-rank server: `mpiexec -n 2 breed server` trains with DDP (gloo) end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_run import breed, read_samples, write_config


@pytest.mark.mpi
@pytest.mark.timeout(240)
def test_two_rank_server_uneven_shards(tmp_path: Path) -> None:
    # 5 simulations over 2 ranks: rank 1 owns 2, rank 0 owns 3, so rank 1 runs dry first and
    # must keep joining the collectives (zero-weight steps) instead of deadlocking rank 0.
    cfg = write_config(
        tmp_path,
        study={"simulations": 5},
        launcher={"max_jobs": 2, "server_ranks": 2, "ping_interval": 0.2, "poll_interval": 0.2},
    )
    run = tmp_path / "run"
    proc = breed("run", str(cfg), "--output", str(run), timeout=200)
    assert proc.returncode == 0, proc.stderr + (run / "logs" / "server.log").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["sims_done"] == 5
    received = [b["received"] for b in summary["buffers"]]
    assert received == [3 * 11, 2 * 11], received  # sim_id % R decides the owner rank
    assert summary["samples_trained"] >= sum(received)
    rows = read_samples(run)
    assert len(rows) == 5 and {r["status"] for r in rows} == {"done"}
    server = json.loads((run / "server.json").read_text())
    assert len(server["data"]) == 2 and server["ranks"] == 2
