"""A real ``redis-server`` for the scale-out tests: started on a free port with a generated config
in a temporary folder, stopped (and its files removed with the folder) afterwards."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REDIS_SERVER = "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_available() -> bool:
    return Path(REDIS_SERVER).exists() or shutil.which("redis-server") is not None


@dataclass
class RedisServer:
    folder: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, port: int = 0) -> None:
        """Start it on ``port`` (default: a free one; a restart passes the port it had)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        conf = self.folder / "redis.conf"
        conf.write_text(
            f"bind 127.0.0.1\nport {self.port}\nprotected-mode yes\ndir {self.folder}\n"
            'save ""\nappendonly no\nlogfile "redis.log"\ndaemonize no\nmaxclients 1000\n',
            encoding="utf-8",
        )
        binary = REDIS_SERVER if Path(REDIS_SERVER).exists() else str(shutil.which("redis-server"))
        self.proc = subprocess.Popen([binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.folder / 'redis.log').read_text(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING within 10 s")

    def restart_empty(self) -> None:
        """Redis restarted without persistence: the same address, nothing of the state."""
        self.stop()
        self.start(port=self.port)

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"FLUSHALL\r\n")
            assert s.recv(16).startswith(b"+OK")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


async def reconnect(*states: Any) -> None:
    """After a restart the pooled connections of each ``RedisState`` died with the server: the first command of
    each fails (as a tick would); make it here."""
    import redis.asyncio as aioredis

    for state in states:
        with contextlib.suppress(aioredis.ConnectionError):
            await state.redis.ping()


def reconnect_engines(*engines: Any) -> None:
    r""":func:`reconnect` for ``SharedEngine``\ s, on each one's own loop."""
    import redis

    for eng in engines:
        with contextlib.suppress(redis.ConnectionError):
            eng._run(eng.state.redis.ping())
