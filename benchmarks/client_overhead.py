"""Per-step client overhead, C (libbreed_client) vs Python (breed.client), side by side.

    python benchmarks/client_overhead.py                  # 64^2 and 512^2, 3 runs each
    python benchmarks/client_overhead.py --grids 64 256 512 --runs 5 --build build/clients

Both clients are the conformance suite's reference clients (clients/c/examples/
conformance_client.c, tests/conformance/python_client.py): per step they fill one
``grid x grid`` float64 field with a constant and send it, so what is timed is the client
library (framing, copying, ZeroMQ), not a solver. The receiver is a sink in this process that
decodes every message with breed.protocol.decode (the server's own decoder) and answers FINISH;
steps/s is counted at the sink from the first STEP to the FINISH, so the last column is also
the ingest rate of one decoding receiver fed by that client. Each configuration runs
``--runs`` times; min-max is printed, with the machine load (``uptime``) before and after.
The C library is built with CMake into ``--build`` (a temporary directory by default).

The second table is the server's own ingest rate: breed's real receiver (both ingest modes),
simulation table and reservoir in this process, fed by ``--clients`` concurrent client
processes of each kind that loop request -> steps -> finish until the budget is done
(``--sims`` simulations); samples/s from the first assignment to the last simulation done.
No trainer runs, and the reservoir holds every sample, so the clients are never paused.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from breed.protocol import FinishMessage, Kind, StepMessage, decode, encode_control

ROOT = Path(__file__).resolve().parents[1]


class Sink(threading.Thread):
    """Hands out one simulation of a ``grid x grid`` field, then STOP; times the data."""

    def __init__(self, token: bytes, grid: int, steps: int) -> None:
        super().__init__(daemon=True)
        self.token, self.grid, self.steps = token, grid, steps
        self.ctx = zmq.Context()
        self.control, self.data = self.ctx.socket(zmq.ROUTER), self.ctx.socket(zmq.ROUTER)
        self.address = f"tcp://127.0.0.1:{self.control.bind_to_random_port('tcp://127.0.0.1')}"
        self.data_address = f"tcp://127.0.0.1:{self.data.bind_to_random_port('tcp://127.0.0.1')}"
        self.first = self.last = 0.0
        self.received = self.nbytes = 0
        self.done = threading.Event()
        self.assigned = self.stopped = False

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(self.data, zmq.POLLIN)
        while not (self.done.is_set() and self.stopped):
            for sock, _ in poller.poll(100):
                frames = sock.recv_multipart(copy=True)
                if sock is self.control:
                    self._control(frames)
                else:
                    self._data(frames)
        self.control.close(0)
        self.data.close(0)
        self.ctx.term()

    def _control(self, frames: list[bytes]) -> None:
        decode(frames[2:], self.token)
        if self.assigned:
            body, kind = {}, Kind.STOP
            self.stopped = True
        else:
            kind, self.assigned = Kind.ASSIGN, True
            body = {
                "sim_id": 0,
                "params": [1.0],
                "attempt": 0,
                "data": self.data_address,
                "name": "bench",
                "steps": self.steps,
                "parameters": [{"name": "a", "low": 0.0, "high": 2.0}],
                "fields": [{"name": "u", "shape": [self.grid, self.grid], "dtype": "float64"}],
                "settings": {},
            }
        self.control.send_multipart([frames[0], b"", *encode_control(kind, self.token, body)])

    def _data(self, frames: list[bytes]) -> None:
        msg = decode(frames[1:], self.token)
        if isinstance(msg, StepMessage):
            if self.received == 0:
                self.first = time.perf_counter()
            self.received += 1
            self.nbytes += msg.block.nbytes
        elif isinstance(msg, FinishMessage):
            self.last = time.perf_counter()
            self.data.send_multipart(
                [frames[0], *encode_control(Kind.PONG, self.token, {"sim_id": 0})]
            )
            self.done.set()


def once(cmd: list[str], grid: int, steps: int) -> tuple[float, float]:
    """(steps/s at the sink, MB/s) of one run of a client."""
    token = secrets.token_bytes(32)
    sink = Sink(token, grid, steps)
    sink.start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BREED_")},
        "BREED_SERVER": sink.address,
        "BREED_TOKEN": token.hex(),
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    sink.join(30)
    if proc.returncode != 0 or sink.received != steps + 1:
        raise SystemExit(
            f"client_overhead: error: {cmd[0]} exited {proc.returncode}: "
            f"{proc.stderr.strip()[:300]}"
        )
    seconds = sink.last - sink.first
    return (steps + 1) / seconds, sink.nbytes / seconds / 1e6


def server_ingest(
    cmd: list[str], grid: int, steps: int, sims: int, clients: int, ingest: str
) -> tuple[float, float]:
    """(samples/s, MB/s) of breed's receiver fed by ``clients`` processes running ``cmd``."""
    from breed.config import validate
    from breed.learning.reservoir import buffer_from_config
    from breed.problems import problem_of
    from breed.sampling import make_sampler
    from breed.server.receiver import Receiver, ReceiverOptions
    from breed.server.simtable import SimTable

    total = sims * (steps + 1)
    cfg = validate(
        {
            "problem": {
                "name": "bench",
                "parameters": [{"name": "a", "low": 0.0, "high": 2.0}],
                "fields": [{"name": "u", "shape": [grid, grid], "dtype": "float64"}],
                "steps": steps,
                "client": {"command": cmd},
            },
            "study": {"simulations": sims},
            "buffer": {"capacity": total + 1, "watermark": 1},
            "launcher": {"max_jobs": clients, "ingest": ingest},
        }
    )
    problem = problem_of(cfg)
    table = SimTable(sims, make_sampler(cfg), threading.Lock(), max_retries=0, problem=problem)
    token = secrets.token_bytes(32)
    rx = Receiver(
        token=token,
        host="127.0.0.1",
        table=table,
        buffer=buffer_from_config(cfg),
        problem=problem,
        status=lambda: {"finished": table.finished()},
        on_sim_done=lambda sim_id: None,
        on_launcher=lambda body: None,
        options=ReceiverOptions(simulation_timeout=600.0, ingest=ingest),
    )
    rx.start()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BREED_")},
        "BREED_SERVER": rx.control_address or "",
        "BREED_TOKEN": token.hex(),
    }
    try:
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for _ in range(clients)
        ]
        deadline = t0 + 600
        while not table.finished():
            if time.perf_counter() > deadline or all(p.poll() is not None for p in procs):
                break
            time.sleep(0.002)
        seconds = time.perf_counter() - t0
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            if proc.returncode != 0:
                raise SystemExit(f"client_overhead: error: {cmd[0]}: {err.decode()[:300]}")
        if table.done_count() != sims:
            raise SystemExit(f"client_overhead: error: {table.done_count()} of {sims} done")
    finally:
        rx.stop_event.set()
        rx.join(timeout=30)
    return total / seconds, total * grid * grid * 8 / seconds / 1e6


def build(where: Path) -> Path:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for cmd in (
        [
            "cmake",
            "-S",
            str(ROOT / "clients"),
            "-B",
            str(where),
            "-DBREED_FORTRAN=OFF",
            "-DCMAKE_BUILD_TYPE=Release",
        ],
        ["cmake", "--build", str(where), "-j2", "--target", "breed_c_client"],
    ):
        subprocess.run(cmd, check=True, capture_output=True, env=env)
    return where / "c" / "breed_c_client"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--build", type=Path, default=None, help="CMake build dir (default: temp)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients (ingest table)")
    ap.add_argument("--sims", type=int, default=16, help="simulations (ingest table)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        c_client = build(args.build or Path(tmp) / "build")
        clients = {
            "C": [str(c_client)],
            "Python": [sys.executable, str(ROOT / "tests/conformance/python_client.py")],
        }
        print(f"load before: {uptime()}")
        print(
            "| grid | steps | C steps/s (min-max) | Python steps/s (min-max) | C/Python | "
            "C MB/s at the sink |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for grid in args.grids:
            steps = max(50, min(5000, int(2e8 / (grid * grid * 8))))  # ~200 MB per run
            rates = {
                name: [once(cmd, grid, steps) for _ in range(args.runs)]
                for name, cmd in clients.items()
            }
            c = [r for r, _ in rates["C"]]
            py = [r for r, _ in rates["Python"]]
            mb = [m for _, m in rates["C"]]
            print(
                f"| {grid}² | {steps + 1} | {min(c):,.0f}–{max(c):,.0f} | "
                f"{min(py):,.0f}–{max(py):,.0f} | {sorted(c)[len(c) // 2] / sorted(py)[len(py) // 2]:.2f} | "
                f"{min(mb):,.0f}–{max(mb):,.0f} |",
                flush=True,
            )
        print(f"\nserver ingest, {args.clients} concurrent clients, {args.sims} simulations:")
        print("| grid | steps | ingest | C samples/s | Python samples/s | C/Python | C MB/s |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for grid in args.grids:
            steps = max(10, min(200, int(4e8 / (args.sims * grid * grid * 8))))
            for ingest in ("thread", "process"):
                rates = {
                    name: [
                        server_ingest(cmd, grid, steps, args.sims, args.clients, ingest)
                        for _ in range(args.runs)
                    ]
                    for name, cmd in clients.items()
                }
                c = [r for r, _ in rates["C"]]
                py = [r for r, _ in rates["Python"]]
                mb = [m for _, m in rates["C"]]
                print(
                    f"| {grid}² | {steps + 1} | {ingest} | {min(c):,.0f}–{max(c):,.0f} | "
                    f"{min(py):,.0f}–{max(py):,.0f} | "
                    f"{sorted(c)[len(c) // 2] / sorted(py)[len(py) // 2]:.2f} | "
                    f"{min(mb):,.0f}–{max(mb):,.0f} |",
                    flush=True,
                )
        print(f"load after: {uptime()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
