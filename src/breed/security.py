"""Run secrets: the token file and the optional ZeroMQ CURVE key pair of the server.

Why both. The token (32 random bytes, ``DIR/token``, mode 0600) authenticates every message:
without it nothing reaches the buffer. It travels in clear on the wire, which is fine on a
trusted cluster network; on an untrusted one ``launcher.curve: true`` encrypts every connection
with CURVE (Curve25519): the server's key pair is generated per run (``DIR/curve/server.secret``,
0600), its public key goes to clients in ``BREED_CURVE_SERVERKEY`` and each client makes a
throw-away key pair. No ZAP handler is installed, so CURVE gives confidentiality and server
authentication; client authentication stays the token's job.

Job keys bind a client job's id to the job the launcher started: each job gets a random key in
its environment (``BREED_JOB_KEY``), the launcher tells the server its SHA-256 before submitting
the job, and the server refuses a REQUEST or ABORT naming that job id without the key. Without
them, anyone holding the run token could claim a healthy client's job id, go silent, and get
that client cancelled as "silent" (:class:`JobKeys`).

No secret is ever put on a command line (``ps`` shows those to every user) nor in a job
script: they go through files of mode 0600 and the environment of the client processes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

import zmq

TOKEN_FILE = "token"
CURVE_DIR = "curve"
ENV_CURVE = "BREED_CURVE_SERVERKEY"
ENV_JOB_KEY = "BREED_JOB_KEY"
ENV_ONCE = "BREED_ONCE"  # "1": the job runs one simulation (launcher.persistent: false)


def write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (never world-readable, not even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to an existing file


def new_token(run_dir: Path) -> str:
    """A fresh run token (64 hex digits) in ``DIR/token``; returns it."""
    token = secrets.token_hex(32)
    write_secret(run_dir / TOKEN_FILE, (token + "\n").encode())
    return token


def check_private(path: Path) -> None:
    """Refuse a secret file that other users can read (someone changed its mode)."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(
            f"{path} is readable by others (mode {mode:o}); run `chmod 600 {path}`"
        )


def curve_available() -> bool:
    return bool(zmq.has("curve"))


def ensure_curve_keys(run_dir: Path) -> bytes:
    """The run's server key pair (made once per run, kept across restarts); returns the public
    key (Z85)."""
    if not curve_available():
        raise ValueError("launcher.curve: this libzmq was built without CURVE support")
    public_path = run_dir / CURVE_DIR / "server.public"
    secret_path = run_dir / CURVE_DIR / "server.secret"
    if not (public_path.exists() and secret_path.exists()):
        public, secret = zmq.curve_keypair()
        write_secret(secret_path, secret)
        public_path.write_bytes(public)
    return public_path.read_bytes().strip()


def load_curve_secret(run_dir: Path) -> bytes:
    path = run_dir / CURVE_DIR / "server.secret"
    check_private(path)
    return path.read_bytes().strip()


def make_curve_server(sock: zmq.Socket, secret: bytes) -> None:
    """Before ``bind``: encrypt every connection to this socket with the run's key."""
    sock.curve_secretkey = secret
    sock.curve_publickey = zmq.curve_public(secret)
    sock.curve_server = True


def make_curve_client(sock: zmq.Socket, server_public: bytes | str) -> None:
    """Before ``connect``: encrypt to the server whose public key is given (a fresh key pair
    for this socket: clients are authenticated by the run token, not by key)."""
    if isinstance(server_public, str):
        server_public = server_public.encode()
    if len(server_public) != 40:
        raise ValueError(f"{ENV_CURVE} must be a 40-character Z85 CURVE public key")
    public, secret = zmq.curve_keypair()
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def curve_from_env() -> bytes | None:
    """The server's public key from ``BREED_CURVE_SERVERKEY``, or None (plain TCP)."""
    value = os.environ.get(ENV_CURVE, "").strip()
    return value.encode() if value else None


def new_job_key() -> str:
    return secrets.token_hex(16)


def job_key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class JobKeys:
    """The server's record of the launcher's jobs: job id -> digest of its key.

    Until a launcher has attached (sent its job keys at least once) nothing is enforced: a
    server run by hand has no launcher jobs to protect, and its clients carry no keys.
    """

    def __init__(self) -> None:
        self._digests: dict[str, str] = {}
        self.enforcing = False

    def register(self, digests: object) -> None:
        """Merge ``{job id: key digest}`` from a launcher ping (malformed entries ignored)."""
        if not isinstance(digests, dict):
            return
        self.enforcing = True
        for job, dig in digests.items():
            if isinstance(job, str) and isinstance(dig, str) and len(dig) == 64:
                self._digests[job] = dig

    def refusal(self, job_id: object, key: object) -> str | None:
        """Why a message naming ``job_id`` with ``key`` is refused, or None."""
        if job_id is None or not self.enforcing:
            return None
        want = self._digests.get(str(job_id))
        if want is None:
            return f"job id {job_id!r} is not a job this run's launcher started"
        if not isinstance(key, str) or not hmac.compare_digest(job_key_digest(key), want):
            return f"job id {job_id!r} without its job key ({ENV_JOB_KEY})"
        return None
