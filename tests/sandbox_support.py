"""Test support: a workspace-like tree and a *separate supervisor process* that calls sandbox.launch.

`run_hostile(script_text, backend, **policy_overrides)` is the single entry the escape suite uses.
It mirrors the product: a detached supervisor (plain Python, its own environment holding a planted
SECRET_API_KEY and a HOME with a planted ~/.ssh/id_rsa) launches `python train.py` from a code
snapshot inside the run dir, with a read-only dataset and harness and a hidden workspace .git.
To route the suite through the product's run path later, replace `HostileRun.launch` only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECRET_MARKER = "sk-PLANTED-" + uuid.uuid4().hex[:12]
KEY_MARKER = "PLANTED-SSH-KEY-" + uuid.uuid4().hex[:12]
GIT_MARKER = "PLANTED-GIT-" + uuid.uuid4().hex[:12]
DB_MARKER = "PLANTED-DB-" + uuid.uuid4().hex[:12]
SUPERVISOR_PID = "__SUPERVISOR_PID__"  # an env value the driver replaces with its own pid

DRIVER = r"""
import json, sys, os
sys.path.insert(0, sys.argv[1])
import warnings; warnings.simplefilter("ignore")
from pathlib import Path
from sandbox import Limits, SandboxPolicy, launch
spec = json.loads(sys.argv[2])
spec["env"] = {k: (str(os.getpid()) if v == "__SUPERVISOR_PID__" else v) for k, v in spec["env"].items()}
pol = SandboxPolicy(argv=spec["argv"], cwd=Path(spec["cwd"]), run_dir=Path(spec["run_dir"]),
                    read_only=[Path(p) for p in spec["read_only"]], hidden=[Path(p) for p in spec["hidden"]],
                    env=spec["env"], network=spec["network"], limits=Limits(**spec["limits"]),
                    gpu=spec["gpu"], min_backend=spec["min_backend"])
proc = launch(pol, backend=spec["backend"])
print(json.dumps({"started": proc.pid, "backend": proc.backend}), flush=True)
res = proc.wait()
print(json.dumps(res.to_dict()), flush=True)
"""


@dataclass
class Tree:
    base: Path
    home: Path
    ws: Path
    git: Path
    db: Path
    data: Path
    harness: Path
    run_dir: Path
    code: Path

    @classmethod
    def make(cls, base: Path) -> "Tree":
        base.mkdir(parents=True, exist_ok=True)
        home, ws, data, harness = base / "home", base / "ws", base / "data", base / "harness"
        run_dir = ws / ".autoresearch" / "runs" / "1"
        code = run_dir / "code"
        git = ws / ".git"
        db = ws / ".autoresearch" / "db.sqlite"
        for d in (home / ".ssh", git / "hooks", data, harness, code):
            d.mkdir(parents=True, exist_ok=True)
        (home / ".ssh" / "id_rsa").write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{KEY_MARKER}\n")
        (git / "config").write_text(f"[core]\n\t# {GIT_MARKER}\n")
        db.write_text(DB_MARKER)
        (data / "train.jsonl").write_text('{"filename": "a.png"}\n')
        (harness / "eval.py").write_text("# frozen harness\n")
        for d in (base, home, ws, data, harness, run_dir.parent, run_dir, code):
            os.chmod(d, 0o755)
        return cls(base, home, ws, git, db, data, harness, run_dir, code)


@dataclass
class HostileRun:
    tree: Tree
    result: dict | None
    driver_rc: int | None
    driver_stderr: str
    stdout: str = ""
    stderr: str = ""
    report: dict = field(default_factory=dict)

    @property
    def status(self) -> str | None:
        return self.result["status"] if self.result else None


def spec_for(tree: Tree, script_text: str, backend: str | None, args=(), **over) -> dict:
    (tree.code / "train.py").write_text(script_text)
    limits = {"wall_seconds": 60.0, "kill_grace_seconds": 0.5}
    limits.update(over.pop("limits", {}))
    spec = {
        "argv": [os.path.normpath(sys.executable), "train.py", *args],
        "cwd": str(tree.code), "run_dir": str(tree.run_dir),
        "read_only": [str(tree.code), str(tree.data), str(tree.harness)],
        "hidden": [str(tree.git), str(tree.db)],
        "env": {"AR_RUN_DIR": str(tree.run_dir)}, "network": False, "limits": limits, "gpu": False,
        "min_backend": "none", "backend": backend,
    }
    env = over.pop("env", {})
    spec["env"].update(env)
    spec.update(over)
    return spec


def driver_env(tree: Tree) -> dict:
    env = dict(os.environ)
    env.update({"SECRET_API_KEY": SECRET_MARKER, "HOME": str(tree.home), "PYTHONWARNINGS": "ignore"})
    return env


def start_driver(tree: Tree, spec: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(ROOT), json.dumps(spec)], env=driver_env(tree),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_hostile(tree: Tree, script_text: str, backend: str | None, args=(), timeout: float | None = None,
                **policy_overrides) -> HostileRun:
    spec = spec_for(tree, script_text, backend, args, **policy_overrides)
    if timeout is None:
        timeout = (spec["limits"].get("wall_seconds") or 120) + 60
    p = start_driver(tree, spec)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    lines = [ln for ln in out.splitlines() if ln.strip()]
    result = json.loads(lines[-1]) if len(lines) >= 2 else None
    run = HostileRun(tree, result, p.returncode, err)
    run.stdout = _read(tree.run_dir / "stdout.log")
    run.stderr = _read(tree.run_dir / "stderr.log")
    for ln in reversed(run.stdout.splitlines()):
        if ln.startswith("REPORT "):
            run.report = json.loads(ln[7:])
            break
    return run


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""


def processes_with(marker: str) -> list[int]:
    """PIDs whose command line contains marker (scans /proc; no psutil needed)."""
    out = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    out.append(int(name))
        except OSError:
            pass
    return out


def wait_gone(marker: str, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = processes_with(marker)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def kill_marked(marker: str) -> None:
    for pid in processes_with(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# ----------------------------------------------------------------------------- host IPC bait (escape suite)
class HostIPC:
    """SysV shared memory / message queue / semaphore set, a POSIX message queue and a /dev/shm file that a
    host process (this test process) owns, each holding a marker, plus the names a probe may try to leave
    behind. `refill()` before each probe, `evidence()` after: which of them the probe reached."""

    IPC_CREAT, IPC_RMID, IPC_NOWAIT, IPC_STAT = 0o1000, 0, 0o4000, 2

    def __init__(self, tag: str):
        import ctypes
        self.ct = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.shmat.restype = ctypes.c_void_p
        self.libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        self.libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
        self.libc.mq_send.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint]
        self.libc.mq_receive.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p]
        base = int(tag[:6], 16) << 4
        self.keys = {"shm": base + 1, "msg": base + 2, "sem": base + 3, "left_shm": base + 4, "left_msg": base + 5}
        self.markers = {k: f"PLANTED-{k.upper()}-{tag}" for k in ("shm", "msg", "mq", "devshm")}
        self.mq_name = f"/sbx-host-{tag}"
        self.mq_left = f"/sbx-left-{tag}"
        self.devshm = f"/dev/shm/sbx-host-{tag}"
        self.devshm_left = f"/dev/shm/sbx-left-{tag}"
        self.shmid = self._check(self.libc.shmget(self.keys["shm"], 4096, self.IPC_CREAT | 0o666), "shmget")
        self.msqid = self._check(self.libc.msgget(self.keys["msg"], self.IPC_CREAT | 0o666), "msgget")
        self.semid = self._check(self.libc.semget(self.keys["sem"], 1, self.IPC_CREAT | 0o666), "semget")
        self.shm = self.libc.shmat(self.shmid, None, 0)
        self.mqd = self._check(self.libc.mq_open(self.mq_name.encode(), os.O_CREAT | os.O_RDWR | os.O_NONBLOCK,
                                                 0o666, None), "mq_open")

    def _check(self, rc, what):
        if rc < 0:
            e = self.ct.get_errno()
            raise OSError(e, f"{what}: {os.strerror(e)}")
        return rc

    def env(self) -> dict:
        return {"P_IPC": json.dumps({"keys": self.keys, "mq": self.mq_name, "mq_left": self.mq_left,
                                     "devshm": self.devshm, "devshm_left": self.devshm_left})}

    def refill(self) -> None:
        m = self.markers
        data = (m["shm"] + "\0").encode()
        self.ct.memmove(self.shm, data, len(data))
        self._drain_msg()
        buf = self.ct.create_string_buffer(struct_pack_msg(m["msg"]))
        self._check(self.libc.msgsnd(self.msqid, buf, len(m["msg"]), self.IPC_NOWAIT), "msgsnd")
        self._drain_mq()
        self._check(self.libc.mq_send(self.mqd, m["mq"].encode(), len(m["mq"]), 0), "mq_send")
        Path(self.devshm).write_text(m["devshm"])
        os.chmod(self.devshm, 0o666)

    def _drain_msg(self) -> int:
        n = 0
        buf = self.ct.create_string_buffer(8 + 256)
        while self.libc.msgrcv(self.msqid, buf, 256, 0, self.IPC_NOWAIT) >= 0:
            n += 1
        return n

    def _drain_mq(self) -> int:
        n = 0
        buf = self.ct.create_string_buffer(8192)
        while self.libc.mq_receive(self.mqd, buf, 8192, None) >= 0:
            n += 1
        return n

    def evidence(self) -> dict:
        """Host-side evidence, by check name: True = the probe got through."""
        out = {}
        m = self.markers
        out["sysv_shm_write"] = self.ct.string_at(self.shm, len(m["shm"])) != m["shm"].encode()
        out["sysv_msg_consume"] = self._drain_msg() == 0
        out["posix_mq_consume"] = self._drain_mq() == 0
        left = []
        for k, fn in (("left_shm", self.libc.shmget), ("left_msg", self.libc.msgget)):
            rc = fn(self.keys[k], 0, 0)
            if rc >= 0:
                left.append(k)
                (self.libc.shmctl if k == "left_shm" else self.libc.msgctl)(rc, self.IPC_RMID, None)
        out["ipc_left_sysv"] = bool(left)
        q = self.libc.mq_open(self.mq_left.encode(), os.O_RDONLY, 0, None)
        out["ipc_left_mq"] = q >= 0
        if q >= 0:
            os.close(q)
            self.libc.mq_unlink(self.mq_left.encode())
        out["devshm_left"] = os.path.exists(self.devshm_left)
        if out["devshm_left"]:
            os.unlink(self.devshm_left)
        try:
            out["devshm_write"] = Path(self.devshm).read_text() != m["devshm"]
        except OSError:
            out["devshm_write"] = True
        return out

    def close(self) -> None:
        self.libc.shmdt(self.ct.c_void_p(self.shm))
        self.libc.shmctl(self.shmid, self.IPC_RMID, None)
        self.libc.msgctl(self.msqid, self.IPC_RMID, None)
        self.libc.semctl(self.semid, 0, self.IPC_RMID)
        os.close(self.mqd)
        self.libc.mq_unlink(self.mq_name.encode())
        for p in (self.devshm, self.devshm_left):
            try:
                os.unlink(p)
            except OSError:
                pass


def struct_pack_msg(text: str) -> bytes:
    """struct msgbuf {long mtype; char mtext[]}, mtype 1."""
    import struct
    return struct.pack("=q", 1) + text.encode()
