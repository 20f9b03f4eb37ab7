"""Run a command in a fresh process and measure it: wall seconds and the peak resident
memory of its whole process tree (the Python process plus the JVM it starts), polled
every 0.2 s. psutil is used when installed; otherwise Linux /proc."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

POLL_SECONDS = 0.2
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

try:  # optional: the /proc fallback covers Linux
    import psutil  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None


@dataclass
class Measurement:
    command: list[str]
    returncode: int
    started_at: float  # epoch seconds
    seconds: float
    peak_rss_bytes: int  # peak of the summed RSS of the tree, as polled
    peak_hwm_sum_bytes: int  # sum of each process's own high-water mark (an upper bound)
    cpu_seconds: float  # user + system CPU of every process of the tree, as last polled
    load_average: tuple[float, float, float]  # of the machine when the command started
    samples: list[tuple[float, int]] = field(default_factory=list)  # (epoch, tree RSS)
    log: str = ""

    def peak_between(self, start: float, end: float) -> int | None:
        """Peak tree RSS among the samples taken in [start, end] (epoch seconds)."""
        inside = [rss for t, rss in self.samples if start - POLL_SECONDS <= t <= end + POLL_SECONDS]
        return max(inside) if inside else None

    def summary(self) -> dict[str, object]:
        return {
            "command": self.command,
            "returncode": self.returncode,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 3),
            "peak_rss_bytes": self.peak_rss_bytes,
            "peak_hwm_sum_bytes": self.peak_hwm_sum_bytes,
            "cpu_seconds": round(self.cpu_seconds, 2),
            "load_average": self.load_average,
            "samples": len(self.samples),
            "log": self.log,
        }


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="utf-8", errors="replace") as handle:
                stat = handle.read()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    if psutil is not None:
        try:
            root = psutil.Process(pid)
            return [pid, *(p.pid for p in root.children(recursive=True))]
        except psutil.Error:
            return []
    children = _children_map()
    tree, stack = [], [pid]
    while stack:
        current = stack.pop()
        tree.append(current)
        stack.extend(children.get(current, ()))
    return tree


def memory_of(pid: int) -> tuple[int, int]:
    """(current RSS, high-water mark RSS) in bytes; zeros if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        return _kib(fields.get("VmRSS")), _kib(fields.get("VmHWM"))
    except OSError:
        pass
    if psutil is not None:
        try:
            rss = psutil.Process(pid).memory_info().rss
            return rss, rss
        except psutil.Error:
            pass
    return 0, 0


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        pass
    if psutil is not None:
        try:
            times = psutil.Process(pid).cpu_times()
            return times.user + times.system
        except psutil.Error:
            pass
    return 0.0


def _kib(text: str | None) -> int:
    return int(text.split()[0]) * 1024 if text else 0


def _pump(stream: IO[str], log_path: Path, echo: Callable[[str], None] | None) -> None:
    with log_path.open("w", encoding="utf-8") as log:
        for line in iter(stream.readline, ""):
            log.write(line)
            log.flush()
            if echo is not None:
                echo(line.rstrip("\n"))


def run_measured(
    command: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    echo: Callable[[str], None] | None = None,
) -> Measurement:
    """Run ``command``; stdout and stderr go to ``log_path`` (and to ``echo`` line by line)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started_at = time.time()
    started = time.perf_counter()
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=cwd,
        bufsize=1,
    )
    pump = threading.Thread(target=_pump, args=(child.stdout, log_path, echo), daemon=True)
    pump.start()
    samples: list[tuple[float, int]] = []
    hwm: dict[int, int] = {}
    cpu: dict[int, float] = {}
    load = os.getloadavg()
    while child.poll() is None:
        total = 0
        for pid in process_tree(child.pid):
            rss, high = memory_of(pid)
            total += rss
            hwm[pid] = max(hwm.get(pid, 0), high)
            cpu[pid] = max(cpu.get(pid, 0.0), cpu_seconds_of(pid))
        samples.append((time.time(), total))
        time.sleep(POLL_SECONDS)
    seconds = time.perf_counter() - started
    pump.join(timeout=10)
    return Measurement(
        command=command,
        returncode=child.returncode,
        started_at=started_at,
        seconds=seconds,
        peak_rss_bytes=max((rss for _, rss in samples), default=0),
        peak_hwm_sum_bytes=sum(hwm.values()),
        cpu_seconds=sum(cpu.values()),
        load_average=load,
        samples=samples,
        log=str(log_path),
    )


def warm_page_cache(folder: Path) -> int:
    """Read every landed file once, so no system pays for a cold disk cache alone."""
    total = 0
    for path in sorted(folder.rglob("*.json")):
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                total += len(chunk)
    return total
