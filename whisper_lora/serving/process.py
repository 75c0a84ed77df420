"""Run a server command as a child process on a free loopback port (tests, benchmarks)."""

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(
    args: list[str], ready_path: str = "/health", timeout: float = 120.0, env=None, program: list[str] | None = None
) -> Iterator[str]:
    """Start ``python -m whisper_lora.cli ARGS --port P`` (or ``PROGRAM ARGS --port P``); yield its base URL once
    ``ready_path`` answers 200."""
    import httpx

    port = free_port()
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty server never blocks on a full pipe
    proc = subprocess.Popen(
        [*(program or [sys.executable, "-m", "whisper_lora.cli"]), *args, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"{' '.join(args)} exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                if httpx.get(url + ready_path, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{' '.join(args)} did not answer {ready_path} within {timeout} s")
            time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def server_pid(url_or_port: str | int) -> int:
    """The pid of the process started by ``running`` (``... --port P``) that answers ``url_or_port``."""
    port = str(url_or_port).rstrip("/").rsplit(":", 1)[-1].encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"--port" in args and args[args.index(b"--port") + 1 :][:1] == [port]:
            return int(pid)
    raise LookupError(f"no server process on port {port.decode()}")


def memory_bytes(pid: int, key: str = "VmRSS") -> int:
    """A field of ``/proc/<pid>/status`` in bytes: ``VmRSS`` (resident now) or ``VmHWM`` (peak resident)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)
