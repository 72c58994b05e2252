"""The bench's subprocesses: ``python -m taskflow <component>``, each with its
own log file, stopped gracefully and, whatever happens, never left behind; and
py-spy recording a worker (``--pyspy S``)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1


def _load_libc() -> Any:
    # Loaded in the parent: the child, between fork and exec, only makes the call.
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _load_libc()


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel SIGTERMs it when the bench
    dies, so even a SIGKILLed bench leaves no workers behind."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """One ``python -m taskflow <component>`` process, output to a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "taskflow", *args],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if _LIBC is not None else None,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    async def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (a graceful stop), then SIGKILL after ``timeout``."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.alive():
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_pyspy() -> Path | None:
    """py-spy on the PATH or beside this interpreter (the virtualenv's bin)."""
    executable = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return Path(executable) if Path(executable).exists() else None


def record_profile(
    executable: Path, pid: int, seconds: float, logs: Path, phase: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """py-spy sampling one process for ``seconds``; returns it and its output file."""
    out = logs / f"pyspy-{phase}-{pid}.txt"
    with (logs / f"pyspy-{phase}-{pid}.log").open("ab") as log_file:
        process = subprocess.Popen(  # noqa: S603 - py-spy on our own worker
            [
                str(executable),
                "record",
                *("--pid", str(pid)),
                *("--duration", str(max(1, round(seconds)))),
                *("--rate", "200"),
                *("--format", "raw"),
                "--nonblocking",
                *("--output", str(out)),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return process, out
