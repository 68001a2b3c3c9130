"""The server's side of the liveness pings: a silent launcher triggers one checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from breed.server.server import Server


def test_silent_launcher_checkpoints_once_then_recovers() -> None:
    saved: list[int] = []
    state = SimpleNamespace(
        cfg={"launcher": {"ping_timeout": 1.0}},
        run_dir=Path("run"),
        last_ping=None,
        launcher_lost=False,
        save_checkpoint=lambda: saved.append(1),
    )
    Server.watch_launcher(state)  # started by hand, never pinged: nothing to watch
    assert saved == [] and not state.launcher_lost
    state.last_ping = time.monotonic() - 5.0
    Server.watch_launcher(state)
    Server.watch_launcher(state)
    assert saved == [1] and state.launcher_lost  # once per silence, not every iteration
    state.last_ping = time.monotonic()
    Server.watch_launcher(state)
    assert not state.launcher_lost
