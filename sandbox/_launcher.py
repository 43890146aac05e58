"""In-sandbox launcher: the last stage before the untrusted program.

Self-contained on purpose (stdlib + ctypes only): the parent runs it as
``python -I -S -c <this source> <config json>`` with an empty environment, inside
bwrap or directly, so that it works whatever is (not) visible in the sandbox.

What it does:
  * becomes a child subreaper, not dumpable, and (outside bwrap) asks for SIGTERM
    when its parent dies;
  * forks the program with stdin=/dev/null and stdout/stderr on pipes; in the fork,
    before exec: new session, rlimits, capability drop (root), NO_NEW_PRIVS,
    Landlock, seccomp;
  * drains the pipes into run_dir/stdout.log and stderr.log, each capped
    (head kept, a bounded tail kept, the middle dropped and counted);
  * when the program exits, or on SIGTERM (after a grace period), SIGKILLs every
    remaining descendant (setsid'd, double-forked ones included: they reparent
    to us because we are a subreaper) and reaps them;
  * reports {"returncode": ...} as one JSON line on a status fd that only the
    parent holds; that pipe is also the lifeline: when the parent dies, its read end
    closes, we see POLLERR, and we stop the tree as on SIGTERM.
"""

import ctypes
import errno
import json
import os
import select
import signal
import struct
import sys
import time

# ---------------------------------------------------------------- prctl & co
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def prctl(opt, a=0, b=0, c=0, d=0):
    rc = _libc.prctl(opt, a, b, c, d)
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, "prctl(%d): %s" % (opt, os.strerror(e)))
    return rc


MACHINE = os.uname().machine

# ---------------------------------------------------------------- Landlock
SYS_landlock_create_ruleset = 444
SYS_landlock_add_rule = 445
SYS_landlock_restrict_self = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1  # ABI 4
NET_CONNECT_TCP = 2
SCOPE_ABSTRACT_UNIX_SOCKET = 1  # ABI 6
SCOPE_SIGNAL = 2

FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV


def landlock_abi():
    v = _libc.syscall(SYS_landlock_create_ruleset, None, ctypes.c_size_t(0),
                      ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return int(v) if v > 0 else 0


def _fs_rights_for_abi(abi):
    r = (1 << 13) - 1
    if abi >= 2:
        r |= FS_REFER
    if abi >= 3:
        r |= FS_TRUNCATE
    if abi >= 5:
        r |= FS_IOCTL_DEV
    return r


def apply_landlock(spec):
    """spec: {"rules": [[path, "ro"|"rw"|"dev"], ...], "network": bool}."""
    abi = landlock_abi()
    if abi < 1:
        raise OSError(errno.ENOSYS, "Landlock unavailable")
    handled_fs = _fs_rights_for_abi(abi)
    handled_net = (NET_BIND_TCP | NET_CONNECT_TCP) if (abi >= 4 and not spec.get("network")) else 0
    scoped = (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0
    if abi >= 6:
        attr = struct.pack("QQQ", handled_fs, handled_net, scoped)
    elif abi >= 4:
        attr = struct.pack("QQ", handled_fs, handled_net)
    else:
        attr = struct.pack("Q", handled_fs)
    buf = ctypes.create_string_buffer(attr, len(attr))
    rfd = _libc.syscall(SYS_landlock_create_ruleset, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if rfd < 0:
        e = ctypes.get_errno()
        raise OSError(e, "landlock_create_ruleset: " + os.strerror(e))
    rx = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
    rights_of = {
        "ro": rx,
        "rw": handled_fs,
        "dev": FS_READ_FILE | FS_WRITE_FILE | FS_TRUNCATE,
        "gpu": FS_READ_FILE | FS_WRITE_FILE | FS_IOCTL_DEV,
        "dironly": FS_READ_DIR,
    }
    for path, kind in spec["rules"]:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            import stat as _stat
            st = os.fstat(fd)
            rights = rights_of[kind] & handled_fs
            if not _stat.S_ISDIR(st.st_mode):
                rights &= FILE_RIGHTS
            if not rights:
                continue
            rule = struct.pack("=Qi", rights, fd)  # struct landlock_path_beneath_attr is packed
            rbuf = ctypes.create_string_buffer(rule, len(rule))
            if _libc.syscall(SYS_landlock_add_rule, ctypes.c_int(rfd), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
                             rbuf, ctypes.c_uint32(0)) < 0:
                e = ctypes.get_errno()
                raise OSError(e, "landlock_add_rule(%s): %s" % (path, os.strerror(e)))
        finally:
            os.close(fd)
    if _libc.syscall(SYS_landlock_restrict_self, ctypes.c_int(rfd), ctypes.c_uint32(0)) < 0:
        e = ctypes.get_errno()
        raise OSError(e, "landlock_restrict_self: " + os.strerror(e))
    os.close(rfd)
    return abi


# ---------------------------------------------------------------- seccomp (own classic BPF, no libseccomp)
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# name: (x86_64, aarch64)
SYSCALLS = {
    "socket": (41, 198), "clone": (56, 220), "clone3": (435, 435), "ptrace": (101, 117),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "unshare": (272, 97), "setns": (308, 268), "bpf": (321, 280), "keyctl": (250, 219),
    "add_key": (248, 217), "request_key": (249, 218), "perf_event_open": (298, 241),
    "userfaultfd": (323, 282), "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "swapon": (167, 224), "swapoff": (168, 225), "reboot": (169, 142),
    "open_by_handle_at": (304, 265), "name_to_handle_at": (303, 264),
    "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "move_mount": (429, 429), "open_tree": (428, 428), "mount_setattr": (442, 442),
    "iopl": (172, None), "ioperm": (173, None), "acct": (163, 89), "quotactl": (179, 60),
    "settimeofday": (164, 170), "clock_settime": (227, 112), "clock_adjtime": (305, 266),
    "adjtimex": (159, 171), "syslog": (103, 116), "vhangup": (153, 58), "lookup_dcookie": (212, 18),
    # SysV IPC (separate syscalls on both arches; no ipc() multiplexer on x86_64/aarch64)
    "shmget": (29, 194), "shmat": (30, 196), "shmctl": (31, 195), "shmdt": (67, 197),
    "semget": (64, 190), "semop": (65, 193), "semctl": (66, 191), "semtimedop": (220, 192),
    "msgget": (68, 186), "msgsnd": (69, 189), "msgrcv": (70, 188), "msgctl": (71, 187),
    # POSIX message queues
    "mq_open": (240, 180), "mq_unlink": (241, 181), "mq_timedsend": (242, 182),
    "mq_timedreceive": (243, 183), "mq_notify": (244, 184), "mq_getsetattr": (245, 185),
    # file-name watching
    "inotify_init": (253, None), "inotify_init1": (294, 26), "inotify_add_watch": (254, 27),
    "fanotify_init": (300, 262), "fanotify_mark": (301, 263),
    # AF_UNIX policy
    "socketpair": (53, 199), "connect": (42, 203),
    # broker helpers
    "seccomp": (317, 277), "pidfd_open": (434, 434), "pidfd_getfd": (438, 438), "openat2": (437, 437),
}
DENY_ALWAYS = [
    "ptrace", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "bpf", "keyctl",
    "add_key", "request_key", "perf_event_open", "userfaultfd", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "swapon", "swapoff", "reboot",
    "open_by_handle_at", "name_to_handle_at", "process_vm_readv", "process_vm_writev",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "fsopen", "fsconfig", "fsmount",
    "fspick", "move_mount", "open_tree", "mount_setattr", "iopl", "ioperm", "acct", "quotactl",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "syslog", "vhangup",
    "lookup_dcookie",
]
# host IPC that no filesystem rule covers: SysV shm/msg/sem (keys are global without an IPC namespace),
# POSIX message queues, and inotify/fanotify (watching names in folders one may not list)
DENY_IPC = [
    "shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semctl", "semtimedop",
    "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive",
    "mq_notify", "mq_getsetattr", "inotify_init", "inotify_init1", "inotify_add_watch", "fanotify_init",
    "fanotify_mark",
]
CLONE_NS_FLAGS = 0x7E020000  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
AF_UNSPEC, AF_UNIX, AF_INET, AF_INET6 = 0, 1, 2, 10
SOCK_STREAM = 1
SOCK_SEQPACKET = 5
SOCK_TYPE_MASK = 0xF
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_USER_NOTIF = 0x7FC00000
RET_ALLOW = 0x7FFF0000
LD_W_ABS = 0x20
ALU_AND_K = 0x54
JEQ_K = 0x15
JGE_K = 0x35
JSET_K = 0x45
RET_K = 0x06
SECCOMP_SET_MODE_FILTER_OP = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5


def seccomp_supported():
    return MACHINE in AUDIT_ARCH


def _nr():
    col = 0 if MACHINE == "x86_64" else 1
    return {k: v[col] for k, v in SYSCALLS.items() if v[col] is not None}


def build_seccomp(block_inet, deny_ipc=False, unix_broker=False):
    """Classic BPF. block_inet: socket() only for AF_UNIX. deny_ipc: DENY_IPC -> EPERM.
    unix_broker: AF_UNIX only as SOCK_STREAM/SOCK_SEQPACKET (datagram sockets could sendto() any
    path; socketpair(SOCK_DGRAM) too), and every connect() goes to the launcher (RET_USER_NOTIF),
    which reads the address and connects on the program's behalf only inside the allowed roots."""
    nr = _nr()
    prog = []

    def ins(code, jt, jf, k):
        prog.append((code, jt, jf, k))

    eperm = RET_ERRNO | errno.EPERM
    ins(LD_W_ABS, 0, 0, 4)  # arch
    ins(JEQ_K, 1, 0, AUDIT_ARCH[MACHINE])
    ins(RET_K, 0, 0, RET_KILL_PROCESS)
    ins(LD_W_ABS, 0, 0, 0)  # nr
    if MACHINE == "x86_64":
        ins(JGE_K, 0, 1, 0x40000000)  # x32 ABI
        ins(RET_K, 0, 0, eperm)
    for name in DENY_ALWAYS + (DENY_IPC if deny_ipc else []):
        if name in nr:
            ins(JEQ_K, 0, 1, nr[name])
            ins(RET_K, 0, 0, eperm)
    ins(JEQ_K, 0, 1, nr["clone3"])  # args not inspectable: ENOSYS makes libc fall back to clone
    ins(RET_K, 0, 0, RET_ERRNO | errno.ENOSYS)
    ins(JEQ_K, 0, 3, nr["clone"])
    ins(LD_W_ABS, 0, 0, 16)  # args[0] low 32 bits (flags)
    ins(JSET_K, 0, 1, CLONE_NS_FLAGS)
    ins(RET_K, 0, 0, eperm)
    if unix_broker:
        ins(LD_W_ABS, 0, 0, 0)
        ins(JEQ_K, 0, 1, nr["connect"])
        ins(RET_K, 0, 0, RET_USER_NOTIF)
        ins(JEQ_K, 0, 5, nr["socketpair"])
        ins(LD_W_ABS, 0, 0, 24)  # args[1] low 32 bits: type | SOCK_CLOEXEC | SOCK_NONBLOCK
        ins(ALU_AND_K, 0, 0, SOCK_TYPE_MASK)
        ins(JEQ_K, 2, 0, SOCK_STREAM)
        ins(JEQ_K, 1, 0, SOCK_SEQPACKET)
        ins(RET_K, 0, 0, eperm)
    if block_inet or unix_broker:
        ins(LD_W_ABS, 0, 0, 0)
        ins(JEQ_K, 0, 8 if unix_broker else 3, nr["socket"])
        ins(LD_W_ABS, 0, 0, 16)  # domain
        ins(JEQ_K, 1, 0, AF_UNIX)
        ins(RET_K, 0, 0, eperm if block_inet else RET_ALLOW)
        if unix_broker:
            ins(LD_W_ABS, 0, 0, 24)  # type
            ins(ALU_AND_K, 0, 0, SOCK_TYPE_MASK)
            ins(JEQ_K, 2, 0, SOCK_STREAM)
            ins(JEQ_K, 1, 0, SOCK_SEQPACKET)
            ins(RET_K, 0, 0, eperm)
    ins(RET_K, 0, 0, RET_ALLOW)
    return prog


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def apply_seccomp(block_inet, deny_ipc=False, unix_broker=False):
    """Install the filter; with unix_broker, returns the user-notification listener fd (else None)."""
    prog = build_seccomp(block_inet, deny_ipc, unix_broker)
    raw = b"".join(struct.pack("HBBI", *p) for p in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    if not unix_broker:
        rc = _libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0)
        if rc < 0:
            e = ctypes.get_errno()
            raise OSError(e, "seccomp: " + os.strerror(e))
        return None
    sys_seccomp = _nr()["seccomp"]
    for flags in (SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
                  SECCOMP_FILTER_FLAG_NEW_LISTENER):  # WAIT_KILLABLE_RECV: Linux >= 5.19
        fd = _libc.syscall(ctypes.c_long(sys_seccomp), ctypes.c_uint(SECCOMP_SET_MODE_FILTER_OP),
                           ctypes.c_uint(flags), ctypes.byref(fprog))
        if fd >= 0:
            return int(fd)
        e = ctypes.get_errno()
        if e != errno.EINVAL:
            break
    raise OSError(e, "seccomp (listener): " + os.strerror(e))


# ---------------------------------------------------------------- connect() broker
SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100      # _IOWR('!', 0, struct seccomp_notif)       (80 bytes)
SECCOMP_IOCTL_NOTIF_SEND = 0xC0182101      # _IOWR('!', 1, struct seccomp_notif_resp)  (24 bytes)
SECCOMP_IOCTL_NOTIF_ID_VALID = 0x40082102  # _IOW('!', 2, __u64)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08


class ConnectBroker:
    """Answers the program's connect() calls (seccomp user notification). The launcher copies the
    address out of the caller's memory once, decides on that copy, and connects the caller's own socket
    (pidfd_getfd) itself, so a racing thread cannot swap the address after the check. Pathname AF_UNIX
    addresses are allowed only beneath `roots` (the run dir and the run's TMPDIR), resolved without
    following any symlink; abstract AF_UNIX addresses are refused (the launcher is outside the Landlock
    scope, so it cannot tell whose they are); other families (inet when the network is on) are connected
    as asked on the same copied address."""

    def __init__(self, fd, roots):
        import threading
        self.fd = fd
        self.roots = []
        for r in roots:  # as configured (TMPDIR uses that spelling) and resolved
            for v in (os.path.normpath(r), os.path.realpath(r)):
                if v not in self.roots:
                    self.roots.append(v)
        self.allowed = 0
        self.denied = []
        self.lock = threading.Lock()
        self._threading = threading
        self.slots = threading.BoundedSemaphore(64)  # connects in flight (a blocked one holds a thread)
        _libc.connect.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        _libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]

    def receive(self):
        """Called when the listener is readable: take one notification, answer it in a thread
        (a connect may block on a full backlog; the log drain must go on)."""
        buf = ctypes.create_string_buffer(80)
        if _libc.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_RECV, buf) < 0:
            return  # ENOENT: the caller died or was interrupted
        raw = buf.raw
        if not self.slots.acquire(blocking=False):
            self._reply(struct.unpack_from("=Q", raw, 0)[0], -1, errno.EAGAIN)
            return
        t = self._threading.Thread(target=self._handle, args=(raw,), daemon=True)
        t.start()

    def _valid(self, nid):
        v = ctypes.c_uint64(nid)
        return _libc.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_ID_VALID, ctypes.byref(v)) == 0

    def _reply(self, nid, val, err):
        resp = ctypes.create_string_buffer(struct.pack("=QqiI", nid, val, -err if err else 0, 0), 24)
        _libc.ioctl(self.fd, SECCOMP_IOCTL_NOTIF_SEND, resp)

    def _deny(self, what):
        with self.lock:
            if len(self.denied) < 20:
                self.denied.append(what)
            else:
                self.denied[-1] = "... (more)"

    def _handle(self, raw):
        nid, pid = struct.unpack_from("=QI", raw, 0)
        args = struct.unpack_from("=6Q", raw, 32)
        sockfd, addr_ptr, addrlen = ctypes.c_int32(args[0] & 0xFFFFFFFF).value, args[1], args[2] & 0xFFFFFFFF
        val, err, opened = 0, 0, []
        try:
            val, err = self._decide_and_connect(nid, pid, sockfd, addr_ptr, addrlen, opened)
        except OSError as e:
            val, err = -1, e.errno or errno.EPERM
        except Exception:  # noqa: BLE001 - never leave the caller hanging
            val, err = -1, errno.EPERM
        finally:
            for fd in opened:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.slots.release()
        self._reply(nid, val, err)

    def _decide_and_connect(self, nid, pid, sockfd, addr_ptr, addrlen, opened):
        if addrlen < 2 or addrlen > 128:
            return -1, errno.EINVAL
        pidfd = _libc.syscall(ctypes.c_long(_nr()["pidfd_open"]), ctypes.c_int(pid), ctypes.c_uint(0))
        if pidfd < 0:
            return -1, errno.ESRCH
        opened.append(pidfd)
        try:
            mem = os.open("/proc/%d/mem" % pid, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1, errno.EFAULT
        opened.append(mem)
        try:
            addr = os.pread(mem, addrlen, addr_ptr)
        except OSError:
            return -1, errno.EFAULT
        cwd = None
        family = struct.unpack_from("=H", addr + b"\0\0", 0)[0]
        if family == AF_UNIX:
            try:
                cwd = os.readlink("/proc/%d/cwd" % pid)
            except OSError:
                cwd = None
        if not self._valid(nid):  # the pid is still the caller: the memory (and cwd) we read were its own
            return -1, errno.ESRCH
        target = _libc.syscall(ctypes.c_long(_nr()["pidfd_getfd"]), ctypes.c_int(pidfd), ctypes.c_int(sockfd),
                               ctypes.c_uint(0))
        if target < 0:
            return -1, errno.EBADF
        opened.append(target)
        if family not in (AF_UNIX, AF_UNSPEC, AF_INET, AF_INET6):
            # e.g. netlink: a connect() done with the launcher's capabilities could join groups the program may not
            self._deny("address family %d" % family)
            return -1, errno.EPERM
        if family == AF_UNIX:
            path = addr[2:]
            if not path:
                return -1, errno.EINVAL
            if path[:1] == b"\0":
                self._deny("abstract:@" + path[1:].split(b"\0")[0].decode("utf-8", "replace")[:80])
                return -1, errno.EPERM
            path = os.fsdecode(path.split(b"\0")[0])
            if not path.startswith("/"):
                if cwd is None:
                    return -1, errno.EPERM
                path = os.path.join(cwd, path)
            path = os.path.normpath(path)
            root = next((r for r in self.roots if path == r or path.startswith(r.rstrip("/") + "/")), None)
            if root is None:
                self._deny(path[:200])
                return -1, errno.EPERM
            opath = self._open_beneath(root, os.path.relpath(path, root))
            if opath < 0:
                e = -opath
                if e in (errno.ELOOP, errno.EXDEV):
                    self._deny(path[:200] + (" (symlink)" if e == errno.ELOOP else " (other mount)"))
                    return -1, errno.EPERM
                return -1, e
            opened.append(opath)
            import stat as _stat
            if not _stat.S_ISSOCK(os.fstat(opath).st_mode):
                return -1, errno.ECONNREFUSED
            addr = struct.pack("=H", AF_UNIX) + ("/proc/self/fd/%d" % opath).encode() + b"\0"
        rc = _libc.connect(target, addr, len(addr))
        if rc < 0:
            return -1, ctypes.get_errno()
        with self.lock:
            self.allowed += 1
        return 0, 0

    def _open_beneath(self, root, rel):
        """O_PATH fd of root/rel, never following a symlink, never leaving root and never crossing a mount
        point (under bwrap the read-only host binds sit inside the private /tmp); -errno on failure."""
        try:
            rootfd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            return -(e.errno or errno.ENOENT)
        try:
            how = struct.pack("=QQQ", os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW, 0,
                              RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)
            hbuf = ctypes.create_string_buffer(how, len(how))
            fd = _libc.syscall(ctypes.c_long(_nr()["openat2"]), ctypes.c_int(rootfd), os.fsencode(rel), hbuf,
                               ctypes.c_size_t(len(how)))
            if fd < 0:
                return -ctypes.get_errno()
            return int(fd)
        finally:
            os.close(rootfd)

    def report(self):
        with self.lock:
            return {"allowed": self.allowed, "denied": list(self.denied)}


# ---------------------------------------------------------------- capabilities
class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_capabilities():
    """Drop every capability for good (for a uid-0 caller). Errors are ignored where
    the caps are already gone (e.g. inside bwrap --cap-drop ALL)."""
    try:
        last = int(open("/proc/sys/kernel/cap_last_cap").read())
    except (OSError, ValueError):
        last = 40
    try:  # NOROOT|NOROOT_LOCKED|NO_SETUID_FIXUP(+LOCKED)|KEEP_CAPS_LOCKED|NO_CAP_AMBIENT_RAISE(+LOCKED)
        prctl(PR_SET_SECUREBITS, 0xEF)
    except OSError:
        pass
    for cap in range(last + 1):
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError:
            break
    try:
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass
    hdr = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    if _libc.syscall(126 if MACHINE == "x86_64" else 91, ctypes.byref(hdr), ctypes.byref(data)) < 0:  # capset
        e = ctypes.get_errno()
        raise OSError(e, "capset: " + os.strerror(e))


# ---------------------------------------------------------------- process tree
def descendants(root):
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                data = f.read()
        except OSError:
            continue
        try:
            ppid = int(data[data.rindex(b")") + 2:].split()[1])
        except (ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for c in kids.get(todo.pop(), ()):
            out.append(c)
            todo.append(c)
    return out


# ---------------------------------------------------------------- capped logs
class CappedLog:
    def __init__(self, path, cap):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        self.cap = max(int(cap), 1024)
        self.tail_cap = min(self.cap // 4, 1 << 20)
        self.head_cap = self.cap - self.tail_cap
        self.head = 0
        self.total = 0
        self.tail = bytearray()

    def write(self, data):
        self.total += len(data)
        if self.head < self.head_cap:
            n = min(len(data), self.head_cap - self.head)
            os.write(self.fd, data[:n])
            self.head += n
            data = data[n:]
        if data:
            self.tail += data
            if len(self.tail) > 2 * self.tail_cap:
                del self.tail[:-self.tail_cap]

    def close(self):
        tail = bytes(self.tail[-self.tail_cap:]) if self.tail else b""
        dropped = self.total - self.head - len(tail)
        if dropped > 0:
            os.write(self.fd, ("\n[sandbox: log capped at %d bytes: %d bytes omitted here, last %d bytes follow]\n"
                               % (self.cap, dropped, len(tail))).encode())
        if tail:
            os.write(self.fd, tail)
        os.close(self.fd)
        return {"bytes": self.total, "truncated": dropped > 0}


# ---------------------------------------------------------------- child setup
def child_exec(cfg, out_w, err_w, broker_sock=None):
    import resource
    os.setsid()
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    if broker_sock is not None:
        os.dup2(broker_sock, 3, inheritable=False)
        broker_sock = 3
        os.closerange(4, 65536)
    else:
        os.closerange(3, 65536)
    os.chdir(cfg["cwd"])
    for name, (soft, hard) in cfg.get("rlimits", {}).items():
        res = getattr(resource, name)
        try:
            resource.setrlimit(res, (soft, hard))
        except (ValueError, OSError):
            cur = resource.getrlimit(res)
            resource.setrlimit(res, (min(soft, cur[1]) if cur[1] >= 0 else soft, cur[1]))
    if cfg.get("drop_caps") and os.geteuid() == 0:
        drop_capabilities()
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    if cfg.get("landlock"):
        apply_landlock(cfg["landlock"])
    sc = cfg.get("seccomp")
    if sc:
        lfd = apply_seccomp(sc.get("block_inet", False), sc.get("deny_ipc", False), broker_sock is not None)
        if lfd is not None:  # hand the listener to the launcher, keep no copy
            import socket
            s = socket.socket(fileno=broker_sock)
            socket.send_fds(s, [b"L"], [lfd])
            s.close()
            os.close(lfd)
    argv = cfg["argv"]
    os.execvpe(argv[0], argv, cfg["env"])


# ---------------------------------------------------------------- main
def main():
    cfg = json.loads(sys.argv[1])
    try:
        prctl(PR_SET_DUMPABLE, 0)
    except OSError:
        pass
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    if cfg.get("pdeathsig"):
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if cfg.get("expect_ppid") and os.getppid() != cfg["expect_ppid"]:
            os._exit(125)  # parent already gone
    status_fd = cfg["status_fd"]
    os.set_inheritable(status_fd, False)

    term = []
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)

    def on_term(signum, frame):
        term.append(signum)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, on_term)

    logs = {}
    fds = {}
    pipes = []
    for name in ("stdout", "stderr"):
        logs[name] = CappedLog(cfg[name + "_path"], cfg["log_bytes"])
        r, w = os.pipe2(os.O_CLOEXEC)
        fds[r] = name
        pipes.append(w)

    sc = cfg.get("seccomp") or {}
    broker_pair = None
    if sc.get("unix_broker") is not None:
        import socket
        broker_pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        try:
            signal.set_wakeup_fd(-1)
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
                signal.signal(s, signal.SIG_DFL)
            child_exec(cfg, pipes[0], pipes[1], broker_pair[1].fileno() if broker_pair else None)
        except BaseException as e:  # noqa: BLE001
            try:
                os.write(2, ("sandbox launcher: cannot start %r: %s\n" % (cfg["argv"][:1], e)).encode())
            except OSError:
                pass
        os._exit(127)

    for w in pipes:
        os.close(w)
    broker = None
    if broker_pair is not None:
        import socket
        broker_pair[1].close()
        try:  # the child sends the listener right before exec; EOF if it failed before that
            _, fds_in, _, _ = socket.recv_fds(broker_pair[0], 16, 1)
        except OSError:
            fds_in = []
        broker_pair[0].close()
        if fds_in:
            broker = ConnectBroker(fds_in[0], sc["unix_broker"].get("roots", []))
    main_status = None
    killed_after_exit = False
    term_deadline = None
    n_killed = 0
    grace = float(cfg.get("grace", 2.0))
    eof_deadline = None

    def kill_all():
        n = 0
        for _ in range(200):
            pids = descendants(os.getpid())
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                    n += 1
                except OSError:
                    pass
            reap()
            time.sleep(0.005)
        return n

    def reap():
        nonlocal main_status
        while True:
            try:
                p, st = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if p == 0:
                return True
            if p == pid and main_status is None:
                main_status = st

    # Lifeline: the caller holds the only read end of the status pipe. When the caller dies (even by
    # SIGKILL, even before any PDEATHSIG was armed) our write end reports POLLERR: stop everything.
    poller = select.poll()
    poller.register(wake_r, select.POLLIN)
    poller.register(status_fd, 0)
    for fd in fds:
        poller.register(fd, select.POLLIN)
    if broker is not None:
        poller.register(broker.fd, select.POLLIN)
    while True:
        try:
            events = poller.poll(100)
        except InterruptedError:
            events = []
        ready = []
        for fd, ev in events:
            if fd == status_fd:
                if ev & (select.POLLERR | select.POLLHUP) and not term:
                    term.append("caller gone")
                    poller.unregister(status_fd)
                continue
            if broker is not None and fd == broker.fd:
                if ev & select.POLLIN:
                    broker.receive()
                elif ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    poller.unregister(fd)  # no process is left under the filter
                continue
            ready.append(fd)
        for fd in ready:
            if fd == wake_r:
                try:
                    os.read(wake_r, 4096)
                except OSError:
                    pass
                continue
            try:
                data = os.read(fd, 1 << 20)
            except OSError:
                data = b""
            if data:
                logs[fds[fd]].write(data)
            else:
                poller.unregister(fd)
                os.close(fd)
                del fds[fd]
        has_children = reap()
        now = time.monotonic()
        if term and term_deadline is None:
            term_deadline = now + grace
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        if term_deadline is not None and now >= term_deadline and main_status is None:
            n_killed += kill_all()
        if main_status is not None and not killed_after_exit:
            n_killed += kill_all()
            killed_after_exit = True
            eof_deadline = time.monotonic() + 5.0
            has_children = reap()
        if main_status is not None and not has_children:
            if not fds:
                break
            if eof_deadline is not None and time.monotonic() > eof_deadline:
                for fd in list(fds):
                    poller.unregister(fd)
                    os.close(fd)
                    del fds[fd]
                break
    report = {"returncode": os.waitstatus_to_exitcode(main_status),
              "killed_descendants": n_killed,
              "terminated": bool(term),
              "logs": {k: v.close() for k, v in logs.items()}}
    if broker is not None:
        report["connect_broker"] = broker.report()
    try:
        os.write(status_fd, (json.dumps(report) + "\n").encode())
    except OSError:
        pass
    os._exit(0)


if __name__ == "__main__":
    main()
