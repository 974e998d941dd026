"""The team's scale set-up on one machine, for tests and benchmarks: a bucket and PostgreSQL for an MLflow server.

- :func:`start_gcs` — ``gcp-storage-emulator`` (in memory) on 127.0.0.1 (point ``STORAGE_EMULATOR_HOST`` at its url).
- :func:`start_postgres` — PostgreSQL 16 from the ``pgserver`` wheel, listening on 127.0.0.1 with a password
  (scram-sha-256) for role and database ``mlflow``, as the README's scale command connects to it.

The MLflow server on them is started by :func:`kaggleops.adapters.mlflow_server.serve_mlflow` (``--backend-store-uri
postgresql://… --artifacts-destination gs://…``).

Used by tests/test_server_mode.py, tests/test_sync.py, bench/bench_sync.py and bench/bench_server.py. Needs the
``dev`` extra (gcp-storage-emulator, pgserver, psycopg2-binary).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


@dataclass
class Service:
    """A started local service: its URL/URI and the process (or stop command) behind it."""

    url: str
    process: subprocess.Popen[bytes] | None = None
    stop_cmd: list[str] | None = None
    user: str | None = None
    remove: Path | None = None  # deleted once stopped

    def stop(self) -> None:
        if self.stop_cmd:
            subprocess.run(self.stop_cmd, check=False, capture_output=True, timeout=60, user=self.user)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.remove is not None:
            shutil.rmtree(self.remove, ignore_errors=True)


def free_port() -> int:
    """A port of 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen[bytes] | None, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((HOST, port)) == 0:
                return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} at start")
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on {HOST}:{port} within {timeout_s:.0f} s")


def start_gcs() -> Service:
    """gcp-storage-emulator in memory on a free port of 127.0.0.1; ``url`` is what STORAGE_EMULATOR_HOST takes."""
    port = free_port()
    exe = Path(sys.executable).parent / "gcp-storage-emulator"
    proc = subprocess.Popen([str(exe), "start", "--host", HOST, "--port", str(port), "--in-memory"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, "gcp-storage-emulator")
    except BaseException:
        Service("", proc).stop()
        raise
    return Service(f"http://{HOST}:{port}", proc)


def start_postgres(password: str, user: str = "mlflow", database: str = "mlflow",
                   more_databases: tuple[str, ...] = ()) -> Service:
    """PostgreSQL 16 (pgserver's binaries) on a free port of 127.0.0.1; ``url`` is the SQLAlchemy URI
    ``postgresql://USER:PASSWORD@127.0.0.1:PORT/DATABASE``; :meth:`Service.stop` stops it and deletes its data.
    ``more_databases``: other databases USER owns on the same server (e.g. an Optuna study storage).

    Run as root, the server runs as the system user ``pgserver`` (PostgreSQL refuses root), as pgserver itself does;
    its data folder is then a fresh one under /tmp, not under pytest's ``tmp_path``: every pytest session resets
    ``/tmp/pytest-of-<user>`` to mode 700, which would lock that user out of a running server's data."""
    import pgserver
    from pgserver.postgres_server import POSTGRES_BIN_PATH

    pgdata = Path(tempfile.mkdtemp(prefix="kops-pg-", dir="/tmp" if os.name == "posix" else None)) / "pgdata"
    init = pgserver.get_server(pgdata, cleanup_mode="stop")  # initdb (local trust), user/permission set-up
    init.psql(f"CREATE ROLE {user} LOGIN PASSWORD '{password}'; CREATE DATABASE {database} OWNER {user};")
    for other in more_databases:
        init.psql(f"CREATE DATABASE {other} OWNER {user};")
    system_user = init.system_user
    init.cleanup()
    (pgdata / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
    port = free_port()
    sockets = pgdata / "sock"
    sockets.mkdir(exist_ok=True)
    if system_user:
        shutil.chown(sockets, system_user)
        shutil.chown(pgdata / "pg_hba.conf", system_user)
    ctl = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata)]
    subprocess.run([*ctl, "-w", "-o", f"-h {HOST} -p {port} -k {sockets}", "-l", str(pgdata / "server.log"),
                    "start"], check=True, capture_output=True, timeout=120, user=system_user)
    service = Service(f"postgresql://{user}:{password}@{HOST}:{port}/{database}",
                      stop_cmd=[*ctl, "-w", "-m", "fast", "stop"], user=system_user, remove=pgdata.parent)
    try:
        _wait_port(port, None, "PostgreSQL")
    except BaseException:
        service.stop()
        raise
    return service
