"""Real servers the orchestration tests start on loopback: PostgreSQL (Debian's), Redis, and the
Dagster/Celery processes of the production deployment (deploy/)."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from neutts_assets_tests.helpers import free_port

PG_PASSWORD = "pg-sentinel-Jq4vL8"  # a password, so the deployment's password-from-env path is exercised


def wait_for(
    check: Callable[[], object],
    what: str,
    timeout: float = 120,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception:  # not up yet
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: " + (log.read_text()[-3000:] if log else ""))
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{what} not ready after {timeout}s: " + (log.read_text()[-3000:] if log and log.exists() else "")
            )
        time.sleep(0.3)


def _as_postgres(args: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextmanager
def postgres_server() -> Iterator[dict]:
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert bins, "PostgreSQL is required (scripts/install.sh installs Debian's postgresql)"
    bindir = Path(bins[-1]).parent
    # not under pytest's tmp_path: its parents are private to root, and the server runs as postgres
    root = Path(tempfile.mkdtemp(prefix="neutts-pg-"))
    pwfile = root / "pw"
    pwfile.write_text(PG_PASSWORD)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    data, log, port = root / "data", root / "server.log", free_port()
    subprocess.run(
        _as_postgres(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "dagster",
                "--pwfile",
                str(pwfile),
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        _as_postgres(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-t",
                "120",
                "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                "start",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        env = {**os.environ, "PGPASSWORD": PG_PASSWORD}
        subprocess.run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", "dagster"],
            check=True,
            env=env,
        )
        yield {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(port),
            "DAGSTER_PG_USER": "dagster",
            "DAGSTER_PG_PASSWORD": PG_PASSWORD,
            "DAGSTER_PG_DB": "dagster",
        }
    finally:
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            stdout=subprocess.DEVNULL,
        )
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    exe = shutil.which("redis-server")
    assert exe, "redis-server is required (scripts/install.sh installs it)"
    port = free_port()
    log = workdir / "redis.log"
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        wait_for(client.ping, "redis-server", 30, proc, log)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


class Processes:
    """Long-running children in their own process groups, stopped together at the end."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, args: list[str], env: dict, cwd: Path) -> tuple[subprocess.Popen, Path]:
        log = self.logdir / f"{name}.log"
        proc = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append((name, proc))
        return proc, log

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
