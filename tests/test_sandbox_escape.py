"""Escape suite: a hostile train.py tries to get out; every attempt must fail under every available backend.

Every run goes through ONE helper, `run_hostile` (tests/sandbox_support.py): a separate supervisor
process (holding a planted SECRET_API_KEY in its environment and a HOME with a planted ~/.ssh/id_rsa)
calls sandbox.launch on a workspace-like tree. Outcomes are checked on the host side wherever possible
(files that must not appear, listeners that must not be reached, markers that must not be printed).

SANDBOX_NEGATIVE_CONTROL=1 runs the whole suite with isolation switched off (backend "none"): it must
then fail. `test_negative_control_none_escapes` checks that in every normal run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid

import pytest

import escape_via_product
import sandbox_support as T
from sandbox.backends import available_backends

AV = available_backends()
NEGATIVE = os.environ.get("SANDBOX_NEGATIVE_CONTROL") == "1"
TAG = uuid.uuid4().hex[:10]


def _backend_params():
    out = []
    for b in ("bwrap", "landlock"):
        ok = AV[b]["available"]
        mark = () if ok else pytest.mark.skip(reason=f"backend {b} unavailable here: {AV[b]['why']}")
        out.append(pytest.param(b, marks=mark, id=b))
    return out


def _effective(backend: str) -> str:
    return "none" if NEGATIVE else backend


# ----------------------------------------------------------------------------- host-side bait
class Listener:
    """TCP + UDP on 127.0.0.1 and pathname Unix sockets in the host's /tmp and /run; records contacts."""

    def __init__(self):
        self.hits: list[str] = []
        self.socks = []
        self.dirs = []
        tcp = socket.socket()
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(16)
        self.tcp_port = tcp.getsockname()[1]
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        self.udp_port = udp.getsockname()[1]
        self.socks += [tcp, udp]
        self.unix = {}
        for base in ("/tmp", "/run"):
            try:
                d = tempfile.mkdtemp(prefix="sbx-host-", dir=base)
            except OSError:
                continue
            os.chmod(d, 0o755)
            path = os.path.join(d, "agent.sock")
            u = socket.socket(socket.AF_UNIX)
            u.bind(path)
            os.chmod(path, 0o777)
            u.listen(16)
            self.socks.append(u)
            self.dirs.append(d)
            self.unix[base] = path
        self._stop = False
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def add_unix(self, path: str, kind=socket.SOCK_STREAM) -> str:
        """Another host listener (stream) or receiver (datagram) at path; its contacts are recorded."""
        u = socket.socket(socket.AF_UNIX, kind)
        u.bind(path)
        if not path.startswith("\0"):
            os.chmod(path, 0o777)
        if kind == socket.SOCK_STREAM:
            u.listen(16)
        self.socks.append(u)
        return path

    def _loop(self):
        import select
        while not self._stop:
            r, _, _ = select.select(self.socks, [], [], 0.1)
            for s in r:
                try:
                    if s.type == socket.SOCK_DGRAM:
                        data, _ = s.recvfrom(4096)
                        kind = "udp" if s.family == socket.AF_INET else f"unixdgram:{s.getsockname()}"
                        self.hits.append(f"{kind}:{data[:40]!r}")
                    else:
                        c, _ = s.accept()
                        name = "tcp" if s.family == socket.AF_INET else f"unix:{s.getsockname()!r}"
                        self.hits.append(name)
                        try:
                            c.sendall(b"HOST-REACHED")
                        except OSError:
                            pass
                        c.close()
                except OSError:
                    pass

    def close(self):
        self._stop = True
        self._t.join(2)
        for s in self.socks:
            s.close()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def listener():
    ln = Listener()
    yield ln
    ln.close()


@pytest.fixture(scope="module")
def ipc():
    h = T.HostIPC(TAG)
    yield h
    h.close()


# ----------------------------------------------------------------------------- the hostile probe
PROBE = r'''
import ctypes, json, os, socket, struct, sys, glob
E = os.environ
T = json.loads(E["PROBE_TARGETS"])
R = {}

def attempt(name, fn):
    try:
        R[name] = "ESCAPED: " + repr(fn())[:300]
    except BaseException as e:
        R[name] = "blocked: %s: %s" % (type(e).__name__, str(e)[:200])

def tcp():
    s = socket.create_connection(("127.0.0.1", int(E["P_TCP"])), timeout=2)
    return s.recv(64)
attempt("tcp_localhost", tcp)

def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(3):
        s.sendto(b"HOSTILE-UDP", ("127.0.0.1", int(E["P_UDP"])))
    return "sent (reaching the host is checked there)"
attempt("udp", udp)

def dns():
    out = []
    try:
        out.append(socket.getaddrinfo("example.com", 80))
    except OSError as e:
        out.append("getaddrinfo failed: %s" % e)
    servers = [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")] if os.path.exists("/etc/resolv.conf") else []
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example\x03com\x00" + struct.pack(">HH", 1, 1)
    for ns in (servers or ["1.1.1.1"]) + ["1.1.1.1", "8.8.8.8"]:
        s = socket.socket(socket.AF_INET6 if ":" in ns else socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1)
        s.sendto(q, (ns, 53))
        try:
            return ("answer from", ns, s.recvfrom(512)[0][:8])
        except socket.timeout:
            pass
    if isinstance(out[0], list):
        return out[0][:1]
    raise OSError("no DNS answer (%s)" % out[0])
attempt("dns", dns)

def unix(path):
    def f():
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(2)
        s.connect(path)
        return s.recv(64)
    return f
attempt("unix_tmp", unix(E["P_UNIX_TMP"]))
attempt("unix_run", unix(E["P_UNIX_RUN"]))

def writer(path):
    def f():
        with open(path, "w") as fh:
            fh.write("pwned")
        return "wrote " + path
    return f
for name, path in T["write"].items():
    attempt(name, writer(path))

def append_data():
    with open(T["data_file"], "a") as fh:
        fh.write("pwned\n")
    return "appended"
attempt("modify_dataset", append_data)

def reader(path):
    def f():
        return open(path).read()
    return f
attempt("read_ssh_key", reader(T["ssh_key"]))
attempt("read_git_config", reader(T["git_config"]))
attempt("read_hidden_db", reader(T["db"]))

def listdir_git():
    return os.listdir(T["git_dir"])
attempt("list_git_dir", listdir_git)

def env_secret():
    hits = [k for k, v in os.environ.items() if "PLANTED" in v or k == "SECRET_API_KEY"]
    if hits:
        return hits
    raise PermissionError("no secret in own environment: %s" % sorted(os.environ))
attempt("env_secret", env_secret)

def proc_environ():
    found, denied = [], 0
    for p in glob.glob("/proc/[0-9]*/environ"):
        try:
            if E["P_SECRET_REVERSED"][::-1].encode() in open(p, "rb").read():
                found.append(p)
        except OSError:
            denied += 1
    if found:
        return found
    raise PermissionError("secret not found in any /proc/*/environ (%d unreadable)" % denied)
attempt("proc_environ", proc_environ)

libc = ctypes.CDLL(None, use_errno=True)
def remount():
    MS_REMOUNT, MS_BIND = 32, 4096
    if libc.mount(None, b"/", None, MS_REMOUNT | MS_BIND, None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    with open(T["after_remount"], "w") as fh:
        fh.write("pwned")
    return "remounted / rw and wrote " + T["after_remount"]
if E.get("P_HARMLESS") != "1":
    attempt("remount_rw", remount)

def sysctl():
    p = "/proc/sys/vm/swappiness"
    v = open(p).read()
    with open(p, "w") as fh:
        fh.write(v)  # same value back: harmless if it gets through
    return "wrote " + p
attempt("sysctl_write", sysctl)

def symlink_out():
    link = os.path.join(E["AR_RUN_DIR"], "evil_link")
    os.symlink(T["symlink_target"], link)
    with open(link, "w") as fh:
        fh.write("pwned")
    return "wrote through " + link
attempt("symlink_write_out", symlink_out)

def symlink_leak():
    os.symlink("/etc/hostname", os.path.join(E["AR_RUN_DIR"], "metrics.json"))
    return "left a symlink for the host to follow"
attempt("symlink_left_for_host", symlink_leak)

def hardlink():
    os.link(T["ssh_key"], os.path.join(E["AR_RUN_DIR"], "hl"))
    return "hardlinked the key into the run dir"
attempt("hardlink_secret", hardlink)

def kill_supervisor():
    target = int(E["P_SUPERVISOR"])
    os.kill(target, 0)  # signal 0: permission check only
    return "can signal the supervisor %d" % target
attempt("signal_supervisor", kill_supervisor)

def capabilities():
    st = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
    eff, bnd, nnp = int(st["CapEff"], 16), int(st["CapBnd"], 16), st.get("NoNewPrivs", "?").strip()
    if eff or nnp != "1":
        return "CapEff=%x CapBnd=%x NoNewPrivs=%s" % (eff, bnd, nnp)
    raise PermissionError("no effective capabilities, NoNewPrivs=1 (CapBnd=%x)" % bnd)
attempt("capabilities", capabilities)

# ---- host IPC that no file rule covers, and Unix sockets on visible host paths
IPC = json.loads(E["P_IPC"])
K = IPC["keys"]
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
libc.mq_receive.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p]
libc.mq_send.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint]

def ck(rc, what):
    if rc is None or rc < 0 or rc == ctypes.c_void_p(-1).value:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))
    return rc

def shm_read():
    sid = ck(libc.shmget(K["shm"], 0, 0), "shmget")
    addr = ck(libc.shmat(sid, None, 0o10000), "shmat")  # SHM_RDONLY
    return ctypes.string_at(addr, 40)
attempt("sysv_shm_read", shm_read)

def shm_write():
    sid = ck(libc.shmget(K["shm"], 0, 0), "shmget")
    addr = ck(libc.shmat(sid, None, 0), "shmat")
    ctypes.memmove(addr, b"PWNED\0", 6)
    return "rewrote the host's segment"
attempt("sysv_shm_write", shm_write)

def shm_scan():  # without knowing a key: ids are listed in /proc/sysvipc/shm
    ids = [int(l.split()[1]) for l in open("/proc/sysvipc/shm").read().splitlines()[1:] if l.split()]
    for i in ids:
        addr = libc.shmat(i, None, 0o10000)
        if addr not in (None, ctypes.c_void_p(-1).value):
            return "attached host segment id %d" % i
    raise PermissionError("no segment attachable (%d listed)" % len(ids))
attempt("sysv_shm_scan", shm_scan)

def msg_consume():
    q = ck(libc.msgget(K["msg"], 0), "msgget")
    buf = ctypes.create_string_buffer(8 + 256)
    n = ck(libc.msgrcv(q, buf, 256, 0, 0o4000), "msgrcv")  # IPC_NOWAIT
    return buf.raw[8:8 + n]
attempt("sysv_msg_consume", msg_consume)

def sem_op():
    sid = ck(libc.semget(K["sem"], 0, 0), "semget")
    op = struct.pack("=HhH", 0, 1, 0o4000)  # sem_num, sem_op=+1, IPC_NOWAIT
    ck(libc.semop(sid, ctypes.create_string_buffer(op, len(op)), 1), "semop")
    return "changed the host's semaphore %d" % sid
attempt("sysv_sem", sem_op)

def left_sysv():
    ck(libc.shmget(K["left_shm"], 4096, 0o1666), "shmget(IPC_CREAT)")
    ck(libc.msgget(K["left_msg"], 0o1666), "msgget(IPC_CREAT)")
    return "left a SysV segment and queue for the next run"
attempt("ipc_left_sysv", left_sysv)

def mq_consume():
    q = ck(libc.mq_open(IPC["mq"].encode(), os.O_RDWR | os.O_NONBLOCK, 0, None), "mq_open")
    buf = ctypes.create_string_buffer(8192)
    n = ck(libc.mq_receive(q, buf, 8192, None), "mq_receive")
    return buf.raw[:n]
attempt("posix_mq_consume", mq_consume)

def mq_left():
    ck(libc.mq_open(IPC["mq_left"].encode(), os.O_CREAT | os.O_RDWR, 0o666, None), "mq_open(O_CREAT)")
    return "left a POSIX message queue"
attempt("ipc_left_mq", mq_left)

attempt("devshm_read", reader(IPC["devshm"]))
attempt("devshm_write", writer(IPC["devshm"]))
attempt("devshm_left", writer(IPC["devshm_left"]))

def inotify_hidden():
    fd = ck(libc.inotify_init1(0), "inotify_init1")
    wd = ck(libc.inotify_add_watch(fd, T["git_dir"].encode(), 0xFFF), "inotify_add_watch")
    return "watching the hidden %s (wd %d)" % (T["git_dir"], wd)
attempt("inotify_hidden", inotify_hidden)

attempt("unix_readonly_path", unix(T["unix"]["ro"]))

def unix_hardlink():
    dst = os.path.join(E["AR_RUN_DIR"], "hl.sock")
    os.link(T["unix"]["hl"], dst)
    return unix(dst)()
attempt("unix_hardlink", unix_hardlink)

def unix_symlink():
    dst = os.path.join(E["AR_RUN_DIR"], "sl.sock")
    os.symlink(T["unix"]["sl"], dst)
    return unix(dst)()
attempt("unix_symlink", unix_symlink)

def unix_dotdot():  # a relative address that climbs out of the run dir
    here = os.getcwd()
    os.chdir(E["AR_RUN_DIR"])
    try:
        return unix(os.path.relpath(T["unix"]["dd"], E["AR_RUN_DIR"]))()
    finally:
        os.chdir(here)
attempt("unix_dotdot", unix_dotdot)

def unix_dgram():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(b"HOSTILE-DGRAM", T["unix"]["dgram"])
    return "sent a datagram to a host socket"
attempt("unix_dgram_send", unix_dgram)

def unix_abstract():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    s.connect("\0" + T["unix"]["abstract"])
    return s.recv(64)
attempt("unix_abstract", unix_abstract)

print("REPORT " + json.dumps(R), flush=True)
'''

WRITE_CHECKS = ["write_home", "write_dataset", "write_git", "write_harness", "write_etc", "write_tmp", "write_code"]
UNIX_CHECKS = ["unix_tmp", "unix_run", "unix_readonly_path", "unix_hardlink", "unix_symlink", "unix_dotdot",
               "unix_dgram_send", "unix_abstract"]
IPC_CHECKS = ["sysv_shm_read", "sysv_shm_write", "sysv_shm_scan", "sysv_msg_consume", "sysv_sem", "ipc_left_sysv",
              "posix_mq_consume", "ipc_left_mq", "devshm_read", "devshm_write", "devshm_left", "inotify_hidden"]
CHECKS = (["tcp_localhost", "udp", "dns"] + UNIX_CHECKS + WRITE_CHECKS
          + ["modify_dataset", "read_ssh_key", "read_git_config", "read_hidden_db", "list_git_dir", "env_secret",
             "proc_environ", "remount_rw", "sysctl_write", "symlink_write_out", "symlink_left_for_host",
             "hardlink_secret", "signal_supervisor", "capabilities"] + IPC_CHECKS)
# Checks where only host-side evidence counts: the sandbox may give the child a private, throw-away
# HOME and /tmp (bwrap tmpfs), a private loopback (net namespace) or a private IPC namespace / /dev/shm
# where the write/send "succeeds".
HOST_ONLY = {"udp", "write_home", "write_tmp", "symlink_left_for_host", "unix_dgram_send", "sysv_shm_write",
             "sysv_msg_consume", "ipc_left_sysv", "posix_mq_consume", "ipc_left_mq", "devshm_write", "devshm_left"}
# Documented gaps of the Landlock tier (see sandbox/README.md, backends.backend_gaps): expected to fail there.
LANDLOCK_GAPS = {
    "write_code": "Landlock cannot make a read-only hole in the writable run dir (the code snapshot lives there)",
    "devshm_read": "/dev/shm is the host's under Landlock (no mount namespace): POSIX shm is reachable by name",
    "devshm_write": "/dev/shm is the host's under Landlock (no mount namespace): POSIX shm is reachable by name",
    "devshm_left": "/dev/shm is the host's under Landlock (no mount namespace): files there outlive the run",
}
LANDLOCK_GAP_WORDS = {"write_code": "code snapshot", "devshm_read": "/dev/shm", "devshm_write": "/dev/shm",
                      "devshm_left": "/dev/shm"}


def _probe(tree: T.Tree, listener: Listener, ipc: T.HostIPC, backend: str, harmless: bool,
           route: str = "sandbox") -> tuple[T.HostileRun, dict]:
    if route == "product":
        escape_via_product.prepare_workspace(tree, backend)
    # host sockets on a path the run can see (the read-only dataset), one per way of reaching them
    socks = {k: str(tree.data / f"{k}.sock") for k in ("ro", "hl", "sl", "dd")}
    for path in socks.values():
        listener.add_unix(path)
    socks["dgram"] = listener.add_unix(str(tree.data / "dg.sock"), socket.SOCK_DGRAM)
    socks["abstract"] = f"sbx-abstract-{TAG}-{hashlib.sha1(str(tree.base).encode()).hexdigest()[:8]}"
    listener.add_unix("\0" + socks["abstract"])
    ipc.refill()
    targets = {
        "unix": socks,
        "write": {
            "write_home": str(tree.home / f"escape-{TAG}"),
            "write_dataset": str(tree.data / f"escape-{TAG}"),
            "write_git": str(tree.git / "hooks" / "post-commit"),
            "write_harness": str(tree.harness / f"escape-{TAG}.py"),
            "write_etc": f"/etc/sbx-escape-{TAG}",
            "write_tmp": f"/tmp/sbx-escape-{TAG}",
            "write_code": str(tree.code / f"escape-{TAG}"),
        },
        "data_file": str(tree.data / "train.jsonl"),
        "ssh_key": str(tree.home / ".ssh" / "id_rsa"),
        "git_config": str(tree.git / "config"),
        "git_dir": str(tree.git),
        "db": str(tree.db),
        "after_remount": str(tree.data / f"after-remount-{TAG}"),
        "symlink_target": str(tree.data / f"via-symlink-{TAG}"),
    }
    env = {"PROBE_TARGETS": json.dumps(targets), "P_TCP": str(listener.tcp_port), "P_UDP": str(listener.udp_port),
           "P_UNIX_TMP": listener.unix.get("/tmp", "/nonexistent"), "P_UNIX_RUN": listener.unix.get("/run", "/nx"),
           "P_SECRET_REVERSED": T.SECRET_MARKER[::-1], "P_HARMLESS": "1" if harmless else "0", **ipc.env()}
    data_hash = hashlib.sha256((tree.data / "train.jsonl").read_bytes()).hexdigest()
    hits_before = len(listener.hits)
    # the supervisor's pid is only known once started: the probe reads it from a file the test writes
    run = _run_with_supervisor_pid(tree, backend, env, route)
    time.sleep(0.3)  # let the listener thread record late datagrams
    hits = listener.hits[hits_before:]
    host = {}  # check name -> escaped? (host-side evidence)
    host["tcp_localhost"] = "tcp" in hits
    host["udp"] = any(h.startswith("udp") for h in hits)
    for check, base in (("unix_tmp", "/tmp"), ("unix_run", "/run")):
        host[check] = base in listener.unix and any(h.startswith("unix") and listener.unix[base] in h for h in hits)
    for check, key in (("unix_readonly_path", "ro"), ("unix_hardlink", "hl"), ("unix_symlink", "sl"),
                       ("unix_dotdot", "dd"), ("unix_dgram_send", "dgram"), ("unix_abstract", "abstract")):
        host[check] = any(h.startswith("unix") and socks[key] in h for h in hits)
    host.update(ipc.evidence())
    logs_ = run.stdout + run.stderr
    host["sysv_shm_read"] = ipc.markers["shm"] in logs_
    host["sysv_msg_consume"] = host["sysv_msg_consume"] or ipc.markers["msg"] in logs_
    host["posix_mq_consume"] = host["posix_mq_consume"] or ipc.markers["mq"] in logs_
    host["devshm_read"] = run.report.get("devshm_read", "").startswith("ESCAPED")
    for name, path in targets["write"].items():
        host[name] = os.path.exists(path)
    host["modify_dataset"] = hashlib.sha256((tree.data / "train.jsonl").read_bytes()).hexdigest() != data_hash
    logs = run.stdout + run.stderr
    host["read_ssh_key"] = T.KEY_MARKER in logs
    host["read_git_config"] = T.GIT_MARKER in logs
    host["read_hidden_db"] = T.DB_MARKER in logs
    host["env_secret"] = T.SECRET_MARKER in logs
    host["proc_environ"] = T.SECRET_MARKER in logs or run.report.get("proc_environ", "").startswith("ESCAPED")
    host["remount_rw"] = os.path.exists(targets["after_remount"])
    host["symlink_write_out"] = os.path.exists(targets["symlink_target"])
    host["symlink_left_for_host"] = os.path.islink(tree.run_dir / "metrics.json")
    hl = tree.run_dir / "hl"
    host["hardlink_secret"] = hl.exists() and T.KEY_MARKER in hl.read_text(errors="replace")
    return run, host


def _run_with_supervisor_pid(tree, backend, env, route="sandbox"):
    if route == "product":  # through run_experiment; the probe tries to signal the driver (the "server")
        return escape_via_product.run_hostile_via_product(tree, PROBE, dict(env, P_SUPERVISOR=str(os.getpid())))
    env = dict(env, P_SUPERVISOR=T.SUPERVISOR_PID)  # the driver substitutes its own pid
    return T.run_hostile(tree, PROBE, backend, env=env)


def _cleanup_host():
    for p in (f"/etc/sbx-escape-{TAG}", f"/tmp/sbx-escape-{TAG}"):
        try:
            os.unlink(p)
        except OSError:
            pass


def _probe_params():
    """Each backend twice: straight through sandbox.launch, and through the product's run_experiment."""
    return [pytest.param((p.values[0], route), marks=p.marks, id=f"{p.id}-{route}")
            for p in _backend_params() for route in ("sandbox", "product")]


@pytest.fixture(scope="module", params=_probe_params())
def probe(request, tmp_path_factory, listener, ipc):
    name, route = request.param
    backend = _effective(name)
    tree = T.Tree.make(tmp_path_factory.mktemp(f"probe-{name}-{route}"))
    try:
        run, host = _probe(tree, listener, ipc, backend, harmless=(backend == "none"), route=route)
    finally:
        _cleanup_host()
    yield name, run, host


@pytest.mark.parametrize("check", CHECKS)
def test_escape_blocked(probe, check):
    backend, run, host = probe
    assert run.result is not None, f"driver failed: {run.driver_stderr[-2000:]}"
    assert run.result["status"] == "exited" and run.result["returncode"] == 0, (run.result, run.stderr[-2000:])
    assert run.report, f"probe printed no report: {run.stdout[-1000:]} {run.stderr[-2000:]}"
    probe_says = run.report.get(check, "not attempted")
    if backend == "landlock" and check in LANDLOCK_GAPS and not NEGATIVE:
        if probe_says.startswith("ESCAPED") or host.get(check):
            # a gap only counts as documented when the run itself lists it
            word = LANDLOCK_GAP_WORDS[check]
            assert any(word in g for g in run.result["isolation"]["gaps"]), (word, run.result["isolation"]["gaps"])
            pytest.xfail(f"known Landlock-tier gap: {LANDLOCK_GAPS[check]}")
    escaped = host.get(check, False) or (check not in HOST_ONLY and probe_says.startswith("ESCAPED"))
    assert not escaped, f"[{backend}] {check}: probe says {probe_says!r}; host evidence {host.get(check)}"


def test_result_reports_backend_and_no_network(probe):
    backend, run, _ = probe
    assert run.result["backend"] == _effective(backend)
    assert run.result["network"] is False
    assert run.result["isolation"]["backend"] == _effective(backend)
    gaps = run.result["isolation"]["gaps"]
    assert gaps and all(isinstance(g, str) for g in gaps)
    if "gaps" in run.result:  # straight through sandbox.launch: SandboxResult.gaps
        assert run.result["gaps"] == gaps
    if _effective(backend) == "none":
        assert any("NOT ISOLATED" in g for g in gaps)


def test_symlink_removed_and_reported(probe):
    backend, run, _ = probe
    if NEGATIVE:
        pytest.skip("negative control")
    assert any("evil_link" in w or "metrics.json" in w for w in run.result["warnings"]), run.result["warnings"]


# ----------------------------------------------------------------------------- negative control
@pytest.mark.parametrize("route", ["sandbox", "product"])
def test_negative_control_none_escapes(tmp_path, listener, ipc, route):
    """With isolation off (backend 'none') the same probe DOES get out: the suite can fail."""
    tree = T.Tree.make(tmp_path / "neg")
    try:
        run, host = _probe(tree, listener, ipc, "none", harmless=True, route=route)
    finally:
        _cleanup_host()
    assert run.result and run.result["status"] == "exited", (run.result, run.driver_stderr[-2000:])
    assert "NOT ISOLATED" in " ".join(run.result["warnings"])
    must_escape = ["tcp_localhost", "udp", "unix_tmp", "write_home", "write_dataset", "write_git", "write_harness",
                   "write_tmp", "modify_dataset", "read_ssh_key", "read_git_config", "proc_environ",
                   "unix_readonly_path", "unix_symlink", "unix_dotdot", "unix_dgram_send", "unix_abstract",
                   "sysv_shm_read", "sysv_shm_write", "sysv_msg_consume", "ipc_left_sysv", "posix_mq_consume",
                   "ipc_left_mq", "devshm_read", "devshm_left"]
    if os.getuid() == 0:
        must_escape.append("write_etc")
    not_escaped = [c for c in must_escape if not host.get(c)]
    not_escaped += [c for c in ("inotify_hidden", "sysv_sem", "sysv_shm_scan")
                    if not run.report.get(c, "").startswith("ESCAPED")]
    assert not not_escaped, f"negative control did not escape on {not_escaped}: {run.report}"
    # the clean environment still holds without isolation
    assert not host["env_secret"]


# ----------------------------------------------------------------------------- limits and tree kill
FORK_BOMB = r'''
import os, sys, time
print("bomb", flush=True)
n = 0
while True:
    try:
        os.fork()
        n += 1
    except OSError:
        time.sleep(0.01)
'''


@pytest.mark.parametrize("backend", _backend_params())
def test_fork_bomb_contained(tmp_path, backend):
    backend = _effective(backend)
    marker = f"BOMB-{uuid.uuid4().hex[:8]}"
    from sandbox._cgroup import RunCgroups
    probe_cg = RunCgroups.create(64, None)
    limited = probe_cg.pids_limited or os.getuid() != 0
    probe_cg.cleanup()
    if not limited:
        pytest.skip("no pids cgroup and running as root: a fork bomb would only be stopped by the watchdog")
    tree = T.Tree.make(tmp_path / "t")
    try:
        run = T.run_hostile(tree, FORK_BOMB, backend, args=(marker,),
                            limits={"wall_seconds": 3.0, "max_processes": 64})
        assert run.result is not None, run.driver_stderr[-2000:]
        assert run.result["status"] in ("timeout", "error"), run.result
        left = T.wait_gone(marker, 5)
        assert not left, f"fork bomb processes survived: {left}"
    finally:
        T.kill_marked(marker)


MEMORY_HOG = r'''
import sys
chunks = []
for i in range(32):
    chunks.append(b"\x01" * (64 << 20))   # touched pages
    print("allocated", (i + 1) * 64, "MiB", flush=True)
print("HOG-SUCCEEDED", flush=True)
'''


@pytest.mark.parametrize("backend", _backend_params())
def test_memory_hog_stopped(tmp_path, backend):
    backend = _effective(backend)
    tree = T.Tree.make(tmp_path / "t")
    run = T.run_hostile(tree, MEMORY_HOG, backend, limits={"wall_seconds": 30.0, "memory_bytes": 300 << 20})
    assert run.result is not None, run.driver_stderr[-2000:]
    assert "HOG-SUCCEEDED" not in run.stdout
    assert run.result["status"] in ("memory", "exited"), run.result
    assert run.result["status"] == "memory" or run.result["returncode"] != 0
    if run.result["peak_memory_bytes"]:
        assert run.result["peak_memory_bytes"] < 600 << 20


SETSID_ESCAPE = r'''
import os, signal, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        while True:
            time.sleep(0.2)
    os._exit(0)
print("started grandchild", flush=True)
while True:
    time.sleep(0.2)
'''


@pytest.mark.parametrize("backend", _backend_params())
def test_setsid_grandchild_dies_on_timeout(tmp_path, backend):
    backend = _effective(backend)
    marker = f"SETSID-{uuid.uuid4().hex[:8]}"
    tree = T.Tree.make(tmp_path / "t")
    try:
        run = T.run_hostile(tree, SETSID_ESCAPE, backend, args=(marker,), limits={"wall_seconds": 1.5})
        assert run.result is not None, run.driver_stderr[-2000:]
        assert run.result["status"] == "timeout", run.result
        assert not T.wait_gone(marker, 3), "setsid'd double-forked grandchild outlived the timeout"
    finally:
        T.kill_marked(marker)


@pytest.mark.parametrize("backend", _backend_params())
def test_grandchild_dies_when_supervisor_is_killed(tmp_path, backend):
    backend = _effective(backend)
    marker = f"ORPHAN-{uuid.uuid4().hex[:8]}"
    tree = T.Tree.make(tmp_path / "t")
    spec = T.spec_for(tree, SETSID_ESCAPE, backend, args=(marker,), limits={"wall_seconds": 60.0})
    drv = T.start_driver(tree, spec)
    try:
        deadline = time.monotonic() + 20
        while len(T.processes_with(marker)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(T.processes_with(marker)) >= 2, drv.stderr.read() if drv.poll() is not None else "not started"
        drv.send_signal(signal.SIGKILL)
        drv.wait(5)
        left = T.wait_gone(marker, 8)
        assert not left, f"processes outlived their SIGKILLed supervisor: {left}"
    finally:
        drv.kill()
        drv.communicate()
        T.kill_marked(marker)


LOG_FLOOD = r'''
import sys
chunk = b"x" * (8 << 20)
out = sys.stdout.buffer
for i in range(128):              # 1 GiB
    out.write(chunk)
out.write(b"\nEND-OF-FLOOD\n")
out.flush()
sys.stderr.write("stderr still works\n")
'''


@pytest.mark.parametrize("backend", _backend_params())
def test_log_flood_capped(tmp_path, backend):
    backend = _effective(backend)
    tree = T.Tree.make(tmp_path / "t")
    t0 = time.monotonic()
    run = T.run_hostile(tree, LOG_FLOOD, backend, limits={"wall_seconds": 60.0, "log_bytes": 1 << 20})
    took = time.monotonic() - t0
    assert run.result is not None, run.driver_stderr[-2000:]
    assert run.result["status"] == "exited" and run.result["returncode"] == 0, run.result
    size = (tree.run_dir / "stdout.log").stat().st_size
    assert size <= (1 << 20) + 512, size
    assert run.result["log_truncated"]["stdout"] is True
    assert "END-OF-FLOOD" in run.stdout  # the tail is kept
    assert "stderr still works" in run.stderr
    assert took < 45


SLEEPER = "import time\nprint('sleeping', flush=True)\ntime.sleep(120)\n"


@pytest.mark.parametrize("backend", _backend_params())
def test_cancel_kills_tree(tmp_path, backend):
    from sandbox import Limits, SandboxPolicy, launch

    backend = _effective(backend)
    marker = f"CANCEL-{uuid.uuid4().hex[:8]}"
    tree = T.Tree.make(tmp_path / "t")
    (tree.code / "train.py").write_text(SETSID_ESCAPE)
    pol = SandboxPolicy(argv=[os.path.normpath(os.sys.executable), "train.py", marker], cwd=tree.code,
                        run_dir=tree.run_dir, read_only=[tree.code], gpu=False,
                        limits=Limits(wall_seconds=60, kill_grace_seconds=0.5))
    proc = launch(pol, backend=backend)
    try:
        deadline = time.monotonic() + 20
        while len(T.processes_with(marker)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        t0 = time.monotonic()
        proc.cancel()
        res = proc.wait(15)
        assert res.status == "cancelled"
        assert time.monotonic() - t0 < 6
        assert not T.wait_gone(marker, 3)
    finally:
        T.kill_marked(marker)
