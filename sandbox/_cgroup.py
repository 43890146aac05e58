"""Per-run cgroups: pids/memory limits, whole-tree kill, peak memory.

Works with cgroup v2 (pure or the hybrid `unified` mount) and v1 `pids`/`memory`
hierarchies, wherever this process may create directories (root, or a delegated
subtree). Leaves are created *under the caller's own cgroup* so outer limits
(a container's, a CI job's) keep applying. Everything is best effort: what could
not be set up is reported, and the caller falls back to rlimits and a watchdog.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

BASE = "autoresearch-sandbox"
CGROOT = Path("/sys/fs/cgroup")


def _mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fstype, options) for cgroup mounts."""
    out = []
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
                    out.append((parts[1], parts[2], set(parts[3].split(","))))
    except OSError:
        pass
    return out


def _own_paths() -> dict[str, str]:
    """controller-or-'' -> path of this process's cgroup in that hierarchy."""
    out = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                if ctrls == "":
                    out[""] = path
                for c in ctrls.split(","):
                    out[c] = path
    except OSError:
        pass
    return out


def _write(path: Path, value: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(value)
        return True
    except OSError:
        return False


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


@dataclass
class Hierarchy:
    kind: str          # "v2" | "pids" | "memory"
    base: Path         # .../<own cgroup>/autoresearch-sandbox


def discover() -> list[Hierarchy]:
    """Hierarchies where we can create our base directory (created if missing)."""
    own = _own_paths()
    found: list[Hierarchy] = []
    for mnt, fstype, opts in _mounts():
        if fstype == "cgroup2":
            kind, rel = "v2", own.get("", "/")
        elif "pids" in opts:
            kind, rel = "pids", own.get("pids", "/")
        elif "memory" in opts:
            kind, rel = "memory", own.get("memory", "/")
        else:
            continue
        if any(h.kind == kind for h in found):
            continue
        base = Path(mnt) / rel.lstrip("/") / BASE
        try:
            base.mkdir(exist_ok=True)
        except OSError:
            continue
        if not os.access(base, os.W_OK):
            continue
        if kind == "v2":
            # controllers for our leaves (fails harmlessly where the parent has processes)
            ctrls = (_read(base.parent / "cgroup.controllers") or "").split()
            want = [c for c in ("pids", "memory") if c in ctrls]
            if want:
                _write(base.parent / "cgroup.subtree_control", " ".join("+" + c for c in want))
                have = (_read(base / "cgroup.controllers") or "").split()
                if any(c in have for c in want):
                    _write(base / "cgroup.subtree_control", " ".join("+" + c for c in want if c in have))
        found.append(Hierarchy(kind, base))
    return found


def sweep_stale(hier: list[Hierarchy]) -> None:
    """Remove leaves left behind by supervisors that died (named <creator pid>-<n>)."""
    for h in hier:
        try:
            entries = list(h.base.iterdir())
        except OSError:
            continue
        for d in entries:
            if not d.is_dir():
                continue
            try:
                creator = int(d.name.split("-", 1)[0])
            except ValueError:
                continue
            if creator == os.getpid() or _pid_alive(creator):
                continue
            _kill_leaf(h.kind, d)
            try:
                d.rmdir()
            except OSError:
                pass


def _procs(leaf: Path) -> list[int]:
    txt = _read(leaf / "cgroup.procs") or ""
    return [int(x) for x in txt.split()]


def _kill_leaf(kind: str, leaf: Path, timeout: float = 5.0) -> None:
    if kind == "v2" and (leaf / "cgroup.kill").exists():
        _write(leaf / "cgroup.kill", "1")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = _procs(leaf)
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)


_counter = 0


@dataclass
class RunCgroups:
    leaves: dict[str, Path] = field(default_factory=dict)   # kind -> leaf dir
    pids_limited: bool = False
    memory_limited: bool = False
    can_kill: bool = False
    notes: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, max_processes: int | None, memory_bytes: int | None) -> "RunCgroups":
        global _counter
        rc = cls()
        if os.environ.get("SANDBOX_NO_CGROUP") == "1":
            rc.notes.append("cgroups disabled by SANDBOX_NO_CGROUP=1")
            return rc
        hier = discover()
        sweep_stale(hier)
        _counter += 1
        name = f"{os.getpid()}-{_counter}-{int(time.time() * 1000) % 10**8}"
        for h in hier:
            leaf = h.base / name
            try:
                leaf.mkdir()
            except OSError as e:
                rc.notes.append(f"cgroup {h.kind}: cannot create {leaf}: {e}")
                continue
            rc.leaves[h.kind] = leaf
            if h.kind == "v2":
                rc.can_kill = rc.can_kill or (leaf / "cgroup.kill").exists()
                if max_processes and (leaf / "pids.max").exists():
                    rc.pids_limited |= _write(leaf / "pids.max", str(int(max_processes)))
                if memory_bytes and (leaf / "memory.max").exists():
                    ok = _write(leaf / "memory.max", str(int(memory_bytes)))
                    if ok and (leaf / "memory.swap.max").exists():
                        _write(leaf / "memory.swap.max", "0")
                    rc.memory_limited |= ok
            elif h.kind == "pids":
                rc.can_kill = True
                if max_processes:
                    rc.pids_limited |= _write(leaf / "pids.max", str(int(max_processes)))
            elif h.kind == "memory":
                rc.can_kill = True
                if memory_bytes:
                    ok = _write(leaf / "memory.limit_in_bytes", str(int(memory_bytes)))
                    if ok and (leaf / "memory.memsw.limit_in_bytes").exists():
                        _write(leaf / "memory.memsw.limit_in_bytes", str(int(memory_bytes)))
                    rc.memory_limited |= ok
        return rc

    def procs_files(self) -> list[str]:
        return [str(leaf / "cgroup.procs") for leaf in self.leaves.values()]

    def describe(self) -> dict:
        return {"leaves": {k: str(v) for k, v in self.leaves.items()}, "pids_limited": self.pids_limited,
                "memory_limited": self.memory_limited, "tree_kill": self.can_kill, "notes": self.notes}

    def pids(self) -> list[int]:
        out: set[int] = set()
        for leaf in self.leaves.values():
            out.update(_procs(leaf))
        return sorted(out)

    def kill(self) -> None:
        for kind, leaf in self.leaves.items():
            _kill_leaf(kind, leaf)

    def memory_peak(self) -> int | None:
        if "v2" in self.leaves and (v := _read(self.leaves["v2"] / "memory.peak")):
            return int(v)
        if "memory" in self.leaves and (v := _read(self.leaves["memory"] / "memory.max_usage_in_bytes")):
            return int(v)
        return None

    def oom_kills(self) -> int:
        n = 0
        for kind, fname in (("v2", "memory.events"), ("memory", "memory.oom_control")):
            if kind in self.leaves:
                for line in (_read(self.leaves[kind] / fname) or "").splitlines():
                    k, _, v = line.partition(" ")
                    if k == "oom_kill":
                        n = max(n, int(v))
        return n

    def pids_max_hits(self) -> int:
        for kind in ("v2", "pids"):
            if kind in self.leaves:
                for line in (_read(self.leaves[kind] / "pids.events") or "").splitlines():
                    k, _, v = line.partition(" ")
                    if k == "max":
                        return int(v)
        return 0

    def cleanup(self) -> None:
        self.kill()
        for leaf in self.leaves.values():
            for _ in range(50):
                try:
                    leaf.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
