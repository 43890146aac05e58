"""launch() and SandboxedProcess: start, watch (wall time, memory, processes), cancel, tree-kill, result."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from . import _cgroup, backends
from .policy import BACKEND_ORDER, SandboxPolicy, SandboxResult, SandboxUnavailable

try:
    import psutil  # type: ignore
except ImportError:  # pragma: no cover
    psutil = None

NOT_ISOLATED = ("NOT ISOLATED: sandbox backend 'none' - the experiment can read your files, use the network "
                "and write anywhere this user can; only limits and a clean environment apply")
WATCH_INTERVAL = 0.25


def _launcher_python() -> str:
    return os.path.normpath(os.path.abspath(sys.executable))


def launch(policy: SandboxPolicy, backend: str | None = None) -> "SandboxedProcess":
    """Start policy.argv in the sandbox; returns at once."""
    if backend is None:
        backend = backends.choose_backend(policy.min_backend)
    else:
        backends.check_backend(backend)
        if BACKEND_ORDER.index(backend) < BACKEND_ORDER.index(policy.min_backend):
            raise SandboxUnavailable(f"backend {backend!r} is weaker than min_backend {policy.min_backend!r}")
    proc = SandboxedProcess(policy, backend)
    proc._start()
    return proc


class SandboxedProcess:
    def __init__(self, policy: SandboxPolicy, backend: str) -> None:
        self.policy = policy
        self.backend = backend
        self.warnings: list[str] = []
        self.gaps: list[str] = backends.backend_gaps(backend, bool(policy.network))  # known at launch
        self.pid: int | None = None
        self._popen: subprocess.Popen | None = None
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._result: SandboxResult | None = None
        self._token = "sandbox-launcher:" + uuid.uuid4().hex
        self._t0 = 0.0
        self._pidfd: int | None = None

    # ------------------------------------------------------------------ public
    def poll(self) -> SandboxResult | None:
        return self._result if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> SandboxResult:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired(self.policy.argv, timeout)
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        """Kill the whole tree (SIGTERM, grace, SIGKILL); the result's status is 'cancelled'."""
        self._cancel.set()  # the monitor checks it at least every 50 ms

    # ------------------------------------------------------------------ setup
    def _prepare(self) -> tuple[list[str], dict, int]:
        pol, lim = self.policy, self.policy.limits
        for d in pol.child_dirs():
            d.mkdir(parents=True, exist_ok=True)
        gpu = backends.gpu_nodes(pol.gpu)
        self._gpu = gpu
        self._cg = _cgroup.RunCgroups.create(lim.max_processes, lim.memory_bytes)
        self.warnings += [f"cgroup: {n}" for n in self._cg.notes if "disabled" not in n]

        rl: dict[str, list[int]] = {"RLIMIT_CORE": [0, 0]}
        if lim.cpu_seconds:
            s = int(max(1, round(lim.cpu_seconds)))
            rl["RLIMIT_CPU"] = [s, s + 5]
        if lim.max_file_bytes:
            rl["RLIMIT_FSIZE"] = [int(lim.max_file_bytes)] * 2
        if lim.max_open_files:
            rl["RLIMIT_NOFILE"] = [int(lim.max_open_files)] * 2
        if lim.max_processes and os.getuid() != 0 and not self._cg.pids_limited:
            # RLIMIT_NPROC counts every process of the uid: leave room for what already runs
            n = int(lim.max_processes) + _count_user_tasks(os.getuid())
            rl["RLIMIT_NPROC"] = [n, n]
        if lim.memory_bytes and not self._cg.memory_limited:
            if not gpu:
                rl["RLIMIT_AS"] = [int(lim.memory_bytes)] * 2
            self.warnings.append("no memory cgroup: memory limit enforced by a PSS-of-tree watchdog"
                                 + ("" if gpu else " and RLIMIT_AS per process"))
        self._host_tmp = None
        tmpdir = None
        if not pol.short_tmpdir_ok():
            if self.backend == "bwrap":
                tmpdir = "/tmp"  # the sandbox's private, size-capped tmpfs
            else:
                import tempfile
                self._host_tmp = tempfile.mkdtemp(prefix="sbx-")
                tmpdir = self._host_tmp
        status_r, status_w = os.pipe()
        self._status_r = status_r
        py = _launcher_python()
        cfg = {
            "argv": list(pol.argv), "cwd": str(pol.cwd), "env": pol.child_env(gpu_on=bool(gpu), tmpdir=tmpdir),
            "rlimits": rl, "stdout_path": str(pol.run_dir / "stdout.log"),
            "stderr_path": str(pol.run_dir / "stderr.log"), "log_bytes": int(lim.log_bytes),
            "status_fd": status_w, "grace": float(lim.kill_grace_seconds),
            "drop_caps": self.backend != "none", "pdeathsig": self.backend != "bwrap",
            "expect_ppid": os.getpid(),
        }
        iso: dict = {"backend": self.backend, "network": bool(pol.network), "gpu_nodes": gpu,
                     "cgroups": self._cg.describe(), "rlimits": rl}
        if self.backend == "landlock":
            info = backends.probe_landlock()
            rules = backends.landlock_rules(pol, gpu, py)
            if self._host_tmp:
                rules.append([self._host_tmp, "rw"])
            cfg["landlock"] = {"rules": rules, "network": bool(pol.network)}
            if info.get("seccomp"):
                roots = [str(pol.run_dir)] + ([self._host_tmp] if self._host_tmp else [])
                cfg["seccomp"] = {"block_inet": not pol.network, "deny_ipc": True, "unix_broker": {"roots": roots}}
            iso.update(landlock_abi=info.get("abi"), seccomp=bool(info.get("seccomp")),
                       summary="landlock: reads limited to the host minus hidden paths/$HOME//tmp//run//dev, writes "
                       "only to the run dir and /dev/shm; TCP, signals and abstract Unix sockets scoped; capabilities "
                       "dropped; seccomp: " + ("no sockets but AF_UNIX, " if not pol.network else "")
                       + "deny-list of dangerous syscalls, no SysV IPC / POSIX mq / inotify, AF_UNIX stream only "
                       "with connect() brokered to the run dir")
            if gpu:
                self.warnings.append("GPU under Landlock is best effort (the NVIDIA driver writes /proc/<pid>/task/"
                                     "<tid>/comm, which Landlock denies); prefer bwrap")
        elif self.backend == "bwrap":
            # seccomp deny-list of dangerous syscalls inside bwrap too; network is the net namespace's job
            # plus the connect() broker: host sockets on the read-only host paths (outside /tmp /run /var/tmp
            # $HOME) stay reachable through a bind mount otherwise. SysV IPC and mq: the IPC namespace's job.
            if backends.probe_landlock().get("seccomp"):
                roots = [str(pol.run_dir)] + backends.bwrap_private_dirs()
                cfg["seccomp"] = {"block_inet": False, "unix_broker": {"roots": roots}}
            iso.update(bwrap=backends.probe_bwrap().get("path"), pid_namespace=True, net_namespace=not pol.network,
                       summary="bwrap: user/pid/ipc/uts/cgroup/mount namespaces" + ("" if pol.network else " + net")
                       + "; all capabilities dropped; read-only root; private /tmp /run /var/tmp /dev $HOME; "
                       "read-only /proc/sys; hidden paths masked; run dir the only writable host path; "
                       "seccomp deny-list (ptrace, mount, bpf, io_uring, keyctl, namespaces, ...); AF_UNIX stream only, "
                       "connect() brokered to the run dir and the private tmpfs")
        else:
            self.warnings.append(NOT_ISOLATED)
            iso["summary"] = "none: clean environment, rlimits, cgroup limits, tree kill, capped logs; NOT ISOLATED"
        if pol.network:
            self.warnings.append("network access is ON for this run")
        cmd = [py, "-I", "-S", "-c", backends.LAUNCHER_SRC, json.dumps(cfg), self._token]
        if self.backend == "bwrap":
            cmd = backends.bwrap_args(pol, backends.probe_bwrap()["path"], gpu, py) + ["--"] + cmd
        procs = self._cg.procs_files()
        if procs:
            # join the cgroups before exec: nothing the sandbox starts can be outside them
            script = " && ".join(f"echo $$ > {shlex.quote(p)}" for p in procs) + ' && exec "$@"'
            cmd = ["/bin/sh", "-c", script, "sh"] + cmd
        iso["gaps"] = list(self.gaps)
        self._iso = iso
        return cmd, cfg, status_w

    def _start(self) -> None:
        if self.backend == "none":
            import warnings as _w
            _w.warn(NOT_ISOLATED, RuntimeWarning, stacklevel=3)
        # Popen from the monitor thread: PDEATHSIG (bwrap --die-with-parent, the launcher's) fires when the
        # *thread* that forked exits, so fork from the thread that lives as long as the run.
        self._thread = threading.Thread(target=self._monitor, name=f"sandbox-{self.backend}", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._start_error is not None:
            raise self._start_error

    def _monitor(self) -> None:
        try:
            cmd, cfg, status_w = self._prepare()
            self._sandbox_log = open(self.policy.run_dir / "sandbox.log", "wb")
            self._t0 = time.monotonic()
            self._popen = subprocess.Popen(
                cmd, env={}, stdin=subprocess.DEVNULL, stdout=self._sandbox_log, stderr=self._sandbox_log,
                cwd="/", close_fds=True, pass_fds=(status_w,), start_new_session=True)
            os.close(status_w)
            self.pid = self._popen.pid
            try:
                self._pidfd = os.pidfd_open(self.pid)
            except (AttributeError, OSError):
                self._pidfd = None
        except BaseException as e:  # noqa: BLE001
            self._start_error = e
            cg = getattr(self, "_cg", None)
            if cg is not None:
                cg.cleanup()
            self._started.set()
            self._done.set()
            return
        self._started.set()
        try:
            self._watch()
        except BaseException as e:  # noqa: BLE001 - never leave a run unreported
            self._hard_kill()
            self._finish("error", f"sandbox monitor failed: {e!r}")

    # ------------------------------------------------------------------ watching
    def _watch(self) -> None:
        lim = self.policy.limits
        p = self._popen
        assert p is not None
        self._peak_rss = 0
        self._seen: dict[int, float] = {}
        watch_mem = bool(lim.memory_bytes) and not self._cg.memory_limited
        watch_pids = bool(lim.max_processes) and not self._cg.pids_limited
        next_sample = 0.0
        need_sample = (watch_mem or watch_pids or not self._cg.can_kill or self._cg.memory_peak() is None)
        status, reason = None, ""
        while True:
            if p.poll() is not None:
                break
            now = time.monotonic()
            if self._cancel.is_set():
                status, reason = "cancelled", "cancelled"
                break
            if lim.wall_seconds is not None and now - self._t0 > lim.wall_seconds:
                status, reason = "timeout", f"wall-clock limit of {lim.wall_seconds:g} s reached"
                break
            if need_sample and now >= next_sample:
                next_sample = now + WATCH_INTERVAL
                rss, n = self._sample_tree()
                if watch_mem and rss > lim.memory_bytes:
                    status, reason = "memory", f"tree memory (PSS) {rss} > memory limit {lim.memory_bytes} (watchdog)"
                    break
                if watch_pids and n > lim.max_processes + 3:  # + bwrap/launcher processes
                    status, reason = "error", f"{n} processes > limit {lim.max_processes} (watchdog)"
                    break
            self._sleep_until_exit(0.05)
        if status is not None:
            self._terminate()
        self._finish(status, reason)

    def _sleep_until_exit(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking at once when the sandbox process exits (pidfd) or on cancel."""
        if self._pidfd is not None:
            import select
            try:
                select.select([self._pidfd], [], [], seconds)
                return
            except (OSError, ValueError):
                pass
        self._cancel.wait(seconds)

    def _sample_tree(self) -> tuple[int, int]:
        if psutil is None or self._popen is None:
            return 0, 0
        try:
            root = psutil.Process(self._popen.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return 0, 0
        total = 0
        for pr in procs:
            try:
                total += _pss(pr.pid) or pr.memory_info().rss
                if pr.pid not in self._seen:
                    self._seen[pr.pid] = pr.create_time()
            except psutil.Error:
                pass
        self._peak_rss = max(self._peak_rss, total)
        return total, len(procs)

    def _launcher_pid(self) -> int | None:
        p = self._popen
        if p is None:
            return None
        if self.backend != "bwrap":
            return p.pid
        if psutil is None:
            return None
        try:
            for c in psutil.Process(p.pid).children(recursive=True):
                try:
                    cmd = c.cmdline()
                    # bwrap's own processes carry the launcher's argv after "--" too: match the launcher itself
                    if cmd and cmd[-1] == self._token and cmd[1:3] == ["-I", "-S"]:
                        return c.pid
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        return None

    def _terminate(self) -> None:
        """SIGTERM to the launcher (it forwards to the program, then SIGKILLs the tree after the grace),
        then the hard kill if anything is left."""
        p = self._popen
        lp = self._launcher_pid()
        if lp is not None:
            try:
                os.kill(lp, signal.SIGTERM)
            except OSError:
                pass
            try:
                p.wait(self.policy.limits.kill_grace_seconds + 1.5)
            except subprocess.TimeoutExpired:
                pass
        self._hard_kill()

    def _hard_kill(self) -> None:
        p = self._popen
        if p is None:
            return
        if self._cg.can_kill:
            self._cg.kill()
        if p.poll() is None and psutil is not None and self.backend != "bwrap":
            # no cgroup: kill descendants while the subreaper launcher still holds them, then the launcher
            for _ in range(3):
                try:
                    kids = psutil.Process(p.pid).children(recursive=True)
                except psutil.Error:
                    break
                for k in kids:
                    try:
                        k.kill()
                    except psutil.Error:
                        pass
        try:
            p.kill()  # bwrap: the namespace's init dies with it (--die-with-parent), killing the namespace
        except OSError:
            pass
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def _kill_leftovers(self) -> None:
        """Processes seen in the tree that outlived the launcher (only possible without cgroup/pid ns)."""
        if psutil is None:
            return
        for pid, ctime in self._seen.items():
            try:
                pr = psutil.Process(pid)
                if pr.create_time() == ctime:
                    pr.kill()
            except psutil.Error:
                pass

    # ------------------------------------------------------------------ result
    def _finish(self, status: str | None, reason: str) -> None:
        pol = self.policy
        p = self._popen
        assert p is not None
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            self._hard_kill()
        wall = time.monotonic() - self._t0
        report = self._read_status()
        peak = self._cg.memory_peak()
        peak_src = "cgroup (includes page cache)" if peak is not None else "sampled tree PSS (RSS where PSS is unreadable)"
        oom = self._cg.oom_kills()
        pids_hits = self._cg.pids_max_hits()
        self._cg.cleanup()
        self._kill_leftovers()
        if peak is None:
            peak = self._peak_rss or None
        returncode = report.get("returncode") if report else None
        if status is None:
            if report is None:
                status = "error"
                reason = f"sandbox failed before reporting (exit {p.returncode}): {self._sandbox_log_tail()}"
                returncode = p.returncode
            elif oom and returncode not in (0, None):
                status, reason = "memory", f"out of memory: the memory cgroup killed {oom} process(es)"
            else:
                status = "exited"
        warnings = list(self.warnings)
        if pids_hits:
            warnings.append(f"process limit {pol.limits.max_processes} reached {pids_hits} time(s) (fork refused)")
        if oom and status != "memory":
            warnings.append(f"the memory cgroup killed {oom} process(es)")
        trunc = {}
        if report:
            for k, v in report.get("logs", {}).items():
                trunc[k] = bool(v.get("truncated"))
                if v.get("truncated"):
                    warnings.append(f"{k} was {v['bytes']} bytes; capped at {pol.limits.log_bytes} (head and tail kept)")
        warnings += _sanitize_run_dir(pol.run_dir)
        if self._host_tmp:
            import shutil
            shutil.rmtree(self._host_tmp, ignore_errors=True)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        try:
            self._sandbox_log.close()
        except OSError:
            pass
        iso = dict(self._iso)
        iso["peak_memory_source"] = peak_src
        if report and isinstance(report.get("connect_broker"), dict):
            cb = report["connect_broker"]
            iso["connect_broker"] = cb
            if cb.get("denied"):
                warnings.append("refused connect() to Unix sockets outside the run dir: "
                                + ", ".join(str(d) for d in cb["denied"][:5]))
        self._result = SandboxResult(
            status=status, returncode=returncode, wall_seconds=round(wall, 3), peak_memory_bytes=peak,
            backend=self.backend, network=bool(pol.network), warnings=warnings,
            stdout_path=pol.run_dir / "stdout.log", stderr_path=pol.run_dir / "stderr.log",
            limits=pol.limits.to_dict(), isolation=iso, reason=reason, log_truncated=trunc, gaps=list(self.gaps))
        self._done.set()

    def _read_status(self) -> dict | None:
        try:
            os.set_blocking(self._status_r, False)
            data = b""
            while True:
                try:
                    chunk = os.read(self._status_r, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(self._status_r)
        line = data.decode(errors="replace").strip().splitlines()
        if not line:
            return None
        try:
            return json.loads(line[-1])
        except ValueError:
            return None

    def _sandbox_log_tail(self) -> str:
        try:
            self._sandbox_log.flush()
            with open(self.policy.run_dir / "sandbox.log", "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 2000))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""


def _pss(pid: int) -> int | None:
    """Proportional set size (shared pages split between sharers, so a tree's sum is not inflated)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _count_user_tasks(uid: int) -> int:
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                st = os.stat(f"/proc/{name}")
                if st.st_uid == uid:
                    n += len(os.listdir(f"/proc/{name}/task"))
            except OSError:
                pass
    return n


def _sanitize_run_dir(run_dir: Path, max_entries: int = 200_000) -> list[str]:
    """Remove symlinks in run_dir that point outside it, so that host code reading the run dir later
    (log tails, metrics.json) cannot be pointed at host files."""
    out = []
    root = os.path.realpath(run_dir)
    n = 0
    for dirpath, dirnames, filenames in os.walk(run_dir, followlinks=False):
        for name in dirnames + filenames:
            n += 1
            if n > max_entries:
                out.append(f"run dir has more than {max_entries} entries; symlink check stopped")
                return out
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                target = os.path.realpath(path)
                if not (target == root or target.startswith(root + os.sep)):
                    try:
                        text = os.readlink(path)
                        os.unlink(path)
                        out.append(f"removed symlink {path} -> {text} (points outside the run dir)")
                    except OSError as e:
                        out.append(f"symlink {path} points outside the run dir and could not be removed: {e}")
    return out
