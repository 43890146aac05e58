"""What a sandboxed run may do (SandboxPolicy, Limits) and what happened (SandboxResult)."""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

BACKEND_ORDER = ("none", "landlock", "bwrap")  # weakest first

# Parent variables that may reach the child. Everything else (API keys, tokens, ...) is dropped.
ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "TZ")
# Extra variables passed through only when GPU devices are passed in.
GPU_ENV_ALLOWLIST = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES",
                     "NVIDIA_DRIVER_CAPABILITIES", "LD_LIBRARY_PATH")


class SandboxUnavailable(RuntimeError):
    """The requested (or minimum) isolation cannot be had here. The message says why and how to fix it."""


@dataclass(frozen=True)
class Limits:
    wall_seconds: float | None = 300.0
    cpu_seconds: float | None = None          # RLIMIT_CPU per process (hard = soft + 5 s)
    memory_bytes: int | None = None           # whole tree: memory cgroup, else RSS watchdog (+RLIMIT_AS w/o GPU)
    max_processes: int | None = 512           # whole tree: pids cgroup, else RLIMIT_NPROC (non-root) + watchdog
    max_file_bytes: int | None = 16 * 2**30   # RLIMIT_FSIZE
    max_open_files: int | None = 4096         # RLIMIT_NOFILE
    log_bytes: int = 20 * 2**20               # cap of stdout.log and of stderr.log each
    tmpfs_bytes: int = 256 * 2**20            # size of the private /tmp, /run, /var/tmp (bwrap)
    kill_grace_seconds: float = 2.0           # SIGTERM -> SIGKILL grace on timeout/cancel

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SandboxPolicy:
    argv: Sequence[str]
    cwd: Path
    run_dir: Path
    read_only: Sequence[Path] = ()
    hidden: Sequence[Path] = ()
    # folders shown empty: only what read_only / run_dir grant beneath them appears (bwrap: an empty
    # tmpfs with the grants bound back; landlock: not granted, like hidden; none: not enforced)
    masked: Sequence[Path] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    network: bool = False
    limits: Limits = field(default_factory=Limits)
    gpu: bool | Sequence[int] | None = None   # None = auto, False = none, [0, 1] = those devices
    min_backend: str = "none"

    def __post_init__(self) -> None:
        if isinstance(self.argv, (str, bytes)) or not self.argv:
            raise ValueError("SandboxPolicy.argv must be a non-empty list of strings, never a shell string")
        self.argv = [str(a) for a in self.argv]
        self.cwd = Path(os.path.abspath(self.cwd))
        self.run_dir = Path(os.path.abspath(self.run_dir))
        self.read_only = [Path(os.path.abspath(p)) for p in self.read_only]
        self.hidden = [Path(os.path.abspath(p)) for p in self.hidden]
        self.masked = [Path(os.path.abspath(p)) for p in self.masked]
        self.env = {str(k): str(v) for k, v in dict(self.env).items()}
        if self.min_backend not in BACKEND_ORDER:
            raise ValueError(f"min_backend must be one of {BACKEND_ORDER}, not {self.min_backend!r}")

    # -- derived -------------------------------------------------------------
    def interpreter_paths(self) -> list[Path]:
        """sys.prefix / sys.base_prefix of this interpreter (normpath, not realpath: a venv must keep
        its own path) plus the directory of argv[0] when it is an absolute path."""
        out = []
        for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
            out.append(Path(os.path.normpath(p)))
        exe = self.argv[0]
        if os.path.isabs(exe):
            out.append(Path(os.path.normpath(os.path.dirname(exe))))
            real = os.path.realpath(exe)
            out.append(Path(os.path.dirname(os.path.dirname(real))))
        seen, uniq = set(), []
        for p in out:
            if str(p) not in seen and str(p) != "/":
                seen.add(str(p))
                uniq.append(p)
        return uniq

    def child_env(self, gpu_on: bool = False, tmpdir: str | None = None) -> dict[str, str]:
        rd = self.run_dir
        env: dict[str, str] = {}
        allow = ENV_ALLOWLIST + (GPU_ENV_ALLOWLIST if gpu_on else ())
        for k in allow:
            if k in os.environ:
                env[k] = os.environ[k]
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.setdefault("LANG", "C.UTF-8")
        exe_dir = os.path.dirname(self.argv[0]) if os.path.isabs(self.argv[0]) else None
        if exe_dir and exe_dir not in env["PATH"].split(":"):
            env["PATH"] = exe_dir + ":" + env["PATH"]
        env.update({
            "HOME": str(rd / ".home"),
            "TMPDIR": tmpdir or str(rd / "tmp"),
            "XDG_CACHE_HOME": str(rd / ".cache"),
            "TORCHINDUCTOR_CACHE_DIR": str(rd / ".cache" / "torchinductor"),
            "TRITON_CACHE_DIR": str(rd / ".cache" / "triton"),
            "MPLCONFIGDIR": str(rd / ".cache" / "matplotlib"),
        })
        env.update(self.env)
        return env

    def short_tmpdir_ok(self) -> bool:
        """AF_UNIX socket paths are limited to 107 bytes and multiprocessing puts its listener sockets in
        TMPDIR/pymp-XXXXXXXX/listener-XXXXXXXX: a run dir deeper than ~70 characters needs another TMPDIR."""
        return len(str(self.run_dir / "tmp")) <= 70

    def child_dirs(self) -> list[Path]:
        rd = self.run_dir
        return [rd, rd / ".home", rd / "tmp", rd / ".cache"]


@dataclass
class SandboxResult:
    status: str                      # exited | timeout | cancelled | memory | error
    returncode: int | None
    wall_seconds: float
    peak_memory_bytes: int | None
    backend: str
    network: bool
    warnings: list[str]
    stdout_path: Path
    stderr_path: Path
    limits: dict[str, Any]
    isolation: dict[str, Any]
    reason: str = ""                 # why it ended when not a plain exit (timeout, limit, launcher error)
    log_truncated: dict[str, bool] = field(default_factory=dict)
    gaps: list[str] = field(default_factory=list)  # isolation gaps that remain for this backend (backends.backend_gaps)

    @property
    def ok(self) -> bool:
        return self.status == "exited" and self.returncode == 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stdout_path"] = str(self.stdout_path)
        d["stderr_path"] = str(self.stderr_path)
        return d
