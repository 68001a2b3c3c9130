"""The conformance suite's reference client in Python (breed.client), as the C one in
clients/c/examples/conformance_client.c: every value sum(params) + t + field index."""

import os
import sys

import numpy as np

from breed.client import Client, ClientConfigError, ClientError


def main() -> int:
    with Client() as client:
        while (job := client.request()) is not None:
            base = sum(job.params)
            for t in range(job.steps + 1):
                client.send(t, [np.full(f.shape, base + t + k) for k, f in enumerate(job.fields)])
                if os.environ.get("BREED_CONFORMANCE_ABORT"):
                    client.abort("conformance: abort after step 0")
                    raise ClientError("aborted on request (BREED_CONFORMANCE_ABORT)")
            client.finish()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ClientConfigError as exc:
        print(f"python_client: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ClientError as exc:
        print(f"python_client: error: {exc}", file=sys.stderr)
        sys.exit(1)
