"""A client that breaks its problem once: the first attempt of simulation 0 sends field v
with one column too few. Used by tests/test_problems.py (the server must REJECT it at once):
it reports how long after its first bad step the error came."""

import sys
import time

import numpy as np

from breed.client import Client, ClientError

first_bad = None
with Client() as client:
    try:
        while (job := client.request()) is not None:
            bad = job.sim_id == 0 and job.attempt <= 1
            for t in range(job.steps + 1):
                u = np.full((24, 40), job.named["a"])
                v = np.zeros((24, 39 if bad else 40))
                if bad and first_bad is None:
                    first_bad = time.monotonic()
                client.send(t, {"u": u, "v": v})
            client.finish()
    except ClientError as exc:
        print(f"bad_shape_client: told after {time.monotonic() - first_bad:.3f} s", file=sys.stderr)
        print(f"bad_shape_client: {exc}", file=sys.stderr)
        sys.exit(3)
