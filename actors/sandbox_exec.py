"""The sandbox launcher: started by the daemon in place of `sumo`, it confines itself and then
becomes SUMO (exec), so SUMO stays the daemon's own child, with the same pid and process group.

    python -I -S -c "...import sandbox_exec..." KEY=VALUE... -- sumo ARGS...

It needs nothing but the standard library and imports little of it: no json, no typing, the C
module under socket rather than socket, libc's signal() rather than the signal module (their
enum classes alone cost 5 ms). Run with -I -S, no site-packages and no environment to trust, it
starts in about 18 ms. (A
preexec_fn in the threaded daemon could deadlock; a Python helper kept beside SUMO would cost a
process per session.) In order:

1. a network namespace of its own (inside a user namespace when not root), with loopback up;
2. there, SUMO's summary listener and the daemon's TraCI client socket, both unconnected;
3. the caps (rlimits), no new privileges, no capabilities, Landlock;
4. the two sockets to the daemon over its inherited Unix socket (SCM_RIGHTS);
5. exec SUMO, which listens for TraCI inside the namespace.

The daemon accepts SUMO's summary stream on the listener and connects the client socket to
SUMO's TraCI port. Both sockets were made in SUMO's namespace, so they reach it, and nothing
else on this host or any other can: no TraCI takeover, and ports never collide.

With `probe=1` it checks instead what this kernel enforces and prints a JSON report.
"""

from __future__ import annotations

import _socket
import ctypes
import errno
import fcntl
import os
import resource
import struct
import sys

# typing and collections.abc cost a few ms of every SUMO's start: for the type checker only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from typing import Any

# landlock_create_ruleset, landlock_add_rule, landlock_restrict_self: the generic numbers,
# shared by x86_64, aarch64 and riscv64.
_GENERIC = (444, 445, 446)
_LANDLOCK_SYSCALLS = {"x86_64": _GENERIC, "aarch64": _GENERIC, "riscv64": _GENERIC}
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2

# Filesystem rights, by the ABI that introduced them.
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
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
_FS_ALL_LATEST = (1 << 16) - 1
# Rights that make sense on a file (a rule on a file may hold no others).
_FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
FS_READ = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
# The session dir: read and write files and dirs, but neither execute nor make special files
# (a symlink made there would not lead out anyway: Landlock checks where a path lands).
FS_READ_WRITE = (
    FS_READ_FILE | FS_READ_DIR | FS_WRITE_FILE | FS_TRUNCATE | FS_REMOVE_DIR | FS_REMOVE_FILE
    | FS_MAKE_DIR | FS_MAKE_REG | FS_REFER
)  # fmt: skip
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_MB = 1024 * 1024
# Linux's numbers on the architectures above.
_SIGPIPE = 13
_SIGXFSZ = 25
_SIG_DFL = 0


class SandboxError(Exception):
    """A step of the confinement failed; SUMO must not run unconfined because of it."""


class Spec:
    """What the daemon asks for, as `key=value` arguments (a list repeats its key):
    netns, landlock, probe (0/1); read, write (paths); memory_mb, max_file_mb, max_open_files,
    traci_port, summary_port, handover_fd (numbers)."""

    def __init__(self, args: Sequence[str]) -> None:
        lists: dict[str, list[str]] = {"read": [], "write": []}
        values: dict[str, str] = {}
        for arg in args:
            key, _, value = arg.partition("=")
            if key in lists:
                lists[key].append(value)
            else:
                values[key] = value
        self.read, self.write = lists["read"], lists["write"]
        self.netns = values.get("netns") == "1"
        self.landlock = values.get("landlock") == "1"
        self.probe = values.get("probe") == "1"
        self.memory_mb = int(values["memory_mb"])
        self.max_file_mb = int(values["max_file_mb"])
        self.max_open_files = int(values["max_open_files"])
        self.traci_port = int(values["traci_port"])
        self.summary_port = int(values.get("summary_port") or 0)
        self.handover_fd = int(values.get("handover_fd") or -1)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)}")
    return result


def _syscall(number: int, *args: Any) -> int:
    _libc.syscall.restype = ctypes.c_long
    return int(_libc.syscall(ctypes.c_long(number), *args))


def _prctl(option: int, arg: int) -> int:
    return int(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), 0, 0, 0))


# ---- Landlock -----------------------------------------------------------------------------------


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (or it is disabled at boot)."""
    numbers = _LANDLOCK_SYSCALLS.get(os.uname().machine)
    if numbers is None:
        return 0
    abi = _syscall(numbers[0], None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(abi, 0)


def _handled_fs(abi: int) -> int:
    return _FS_BY_ABI.get(abi, _FS_ALL_LATEST)


def landlock_restrict(
    abi: int,
    *,
    read: Iterable[str],
    write: Iterable[str],
    bind_ports: Iterable[int] = (),
    connect_ports: Iterable[int] = (),
) -> None:
    """Confine this process and what it execs: only `read` (read, execute) and `write` (read,
    write, no execute) paths; with ABI >= 4 TCP bind and connect only on the given ports; with
    ABI >= 6 no signals to, and no abstract Unix sockets of, processes outside the sandbox."""
    create, add_rule, restrict = _LANDLOCK_SYSCALLS[os.uname().machine]
    handled_fs = _handled_fs(abi)
    attr = _RulesetAttr(handled_fs, 0, 0)
    # The struct grew with the ABI: an older kernel takes only the fields it knows.
    size = 8
    if abi >= 4:
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP
        size = 16
    if abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24
    ruleset = _check(
        _syscall(create, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)),
        "landlock_create_ruleset",
    )
    try:
        for paths, access in ((read, FS_READ), (write, FS_READ_WRITE)):
            for path in paths:
                _add_path_rule(add_rule, ruleset, path, access & handled_fs)
        if abi >= 4:
            for ports, access in ((bind_ports, NET_BIND_TCP), (connect_ports, NET_CONNECT_TCP)):
                for port in ports:
                    rule = _NetPortAttr(access, port)
                    result = _syscall(
                        add_rule, ruleset, _RULE_NET_PORT, ctypes.byref(rule), ctypes.c_uint32(0)
                    )
                    _check(result, f"landlock_add_rule (port {port})")
        _check(_prctl(_PR_SET_NO_NEW_PRIVS, 1), "prctl(PR_SET_NO_NEW_PRIVS)")
        _check(_syscall(restrict, ruleset, ctypes.c_uint32(0)), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def _add_path_rule(add_rule: int, ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # e.g. no /lib32 here: nothing to allow
    except OSError as exc:
        raise SandboxError(f"landlock: cannot open {path}: {exc.strerror}") from None
    try:
        if not os.path.isdir(f"/proc/self/fd/{fd}"):
            access &= _FS_FILE_RIGHTS
        rule = _PathBeneathAttr(access, fd)
        _check(
            _syscall(add_rule, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), ctypes.c_uint32(0)),
            f"landlock_add_rule ({path})",
        )
    finally:
        os.close(fd)


# ---- namespaces, capabilities, caps --------------------------------------------------------------


def enter_network_namespace() -> None:
    """A network namespace of our own with only loopback, up. As root that is all; otherwise a
    user namespace comes first (it grants the right to make the other), with this uid and gid
    mapped to themselves so that SUMO's files belong to the daemon's user as before."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0 and _libc.unshare(ctypes.c_int(_CLONE_NEWNET)) == 0:
        _loopback_up()
        return
    _check(_libc.unshare(ctypes.c_int(_CLONE_NEWUSER | _CLONE_NEWNET)), "unshare")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {uid} 1")
    _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _loopback_up()


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as fh:
            fh.write(text)
    except OSError as exc:
        raise SandboxError(f"{path}: {exc.strerror}") from None


def _loopback_up() -> None:
    # The ioctl `ip link set lo up` makes: no `ip` binary needed.
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        ifreq = "16sH22x"  # struct ifreq: the name, then the flags
        req = fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, struct.pack(ifreq, b"lo", 0))
        flags = struct.unpack(ifreq, req)[1] | _IFF_UP
        fcntl.ioctl(sock.fileno(), _SIOCSIFFLAGS, struct.pack(ifreq, b"lo", flags))
    except OSError as exc:
        raise SandboxError(f"loopback up: {exc.strerror}") from None
    finally:
        sock.close()


def drop_capabilities() -> None:
    """Empty the bounding set, so a SUMO run as root execs with no capabilities at all: no
    reading past file modes, no raw sockets, no reboot. (Not root: exec clears them anyway.)"""
    if os.geteuid() != 0:
        return
    try:
        with open("/proc/sys/kernel/cap_last_cap") as fh:
            last = int(fh.read())
    except (OSError, ValueError):
        last = 40
    for cap in range(last + 1):
        if _prctl(_PR_CAPBSET_DROP, cap) != 0 and ctypes.get_errno() != errno.EINVAL:
            raise SandboxError(f"prctl(PR_CAPBSET_DROP, {cap}): {os.strerror(ctypes.get_errno())}")


def set_caps(memory_mb: int, max_file_mb: int, max_open_files: int) -> None:
    """SUMO's caps. Over the address-space cap its allocations fail (std::bad_alloc), over the
    file-size cap the kernel sends SIGXFSZ, over the open-files cap opens fail (EMFILE)."""
    limits = (
        (resource.RLIMIT_AS, memory_mb * _MB),
        (resource.RLIMIT_FSIZE, max_file_mb * _MB),
        (resource.RLIMIT_NOFILE, max_open_files),
        # A core of a SUMO that hit its caps would be large and land in the session dir.
        (resource.RLIMIT_CORE, 0),
    )
    for which, value in limits:
        try:
            _soft, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(which, (value, value))
        except (OSError, ValueError) as exc:
            raise SandboxError(f"setrlimit({which}, {value}): {exc}") from None


def _restore_signals() -> None:
    # Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across exec: SUMO
    # must die of SIGXFSZ at its file-size cap (and of SIGPIPE), as it would started from a shell.
    for sig in (_SIGPIPE, _SIGXFSZ):
        _libc.signal(ctypes.c_int(sig), ctypes.c_void_p(_SIG_DFL))


# ---- the launch ---------------------------------------------------------------------------------


def _netns_sockets(traci_port: int) -> tuple[_socket.socket, _socket.socket]:
    """SUMO's summary listener and the daemon's TraCI client, made inside the namespace."""
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    client.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
    # A fixed source port, never the TraCI port: a connect to a port nobody listens on yet
    # could otherwise join the socket to itself.
    client.bind(("127.0.0.1", 0))
    if traci_port in (listener.getsockname()[1], client.getsockname()[1]):
        listener.close()
        client.close()
        return _netns_sockets(traci_port)
    return listener, client


def _confine(spec: Spec, abi: int, traci_port: int, summary_port: int) -> None:
    set_caps(spec.memory_mb, spec.max_file_mb, spec.max_open_files)
    drop_capabilities()
    _check(_prctl(_PR_SET_NO_NEW_PRIVS, 1), "prctl(PR_SET_NO_NEW_PRIVS)")
    if spec.landlock:
        if abi < 1:
            raise SandboxError("landlock: not available on this kernel")
        landlock_restrict(
            abi,
            read=spec.read,
            write=[".", *spec.write],
            bind_ports=[traci_port],
            connect_ports=[summary_port],
        )


def launch(spec: Spec, argv: list[str]) -> None:
    traci_port = spec.traci_port
    abi = landlock_abi()
    if spec.netns:
        enter_network_namespace()
        listener, client = _netns_sockets(traci_port)
        summary_port = listener.getsockname()[1]
        argv = [*argv, "--summary-output", f"127.0.0.1:{summary_port}"]
        _confine(spec, abi, traci_port, summary_port)
        handover = _socket.socket(fileno=spec.handover_fd)
        try:
            fds = struct.pack("2i", listener.fileno(), client.fileno())
            handover.sendmsg([b"ready"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        except OSError as exc:
            raise SandboxError(f"handing the sockets over: {exc.strerror}") from None
        handover.close()
        listener.close()
        client.close()
    else:
        _confine(spec, abi, traci_port, spec.summary_port)
    _restore_signals()
    try:
        os.execv(argv[0], argv)
    except OSError as exc:
        print(f"Error: sandbox: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr, flush=True)
        os._exit(127)


# ---- the probe ----------------------------------------------------------------------------------


def probe(spec: Spec, argv: list[str]) -> dict[str, Any]:
    """What this kernel enforces, each part tried for real, in a child that ends by running
    `argv` (SUMO's --version) confined as a session's SUMO would be."""
    report: dict[str, Any] = {"landlock_abi": landlock_abi(), "netns": False}
    errors: dict[str, str] = {}
    try:
        enter_network_namespace()
        listener, client = _netns_sockets(spec.traci_port)
        try:
            client.connect(listener.getsockname())
        finally:
            listener.close()
            client.close()
        report["netns"] = True
    except (SandboxError, OSError) as exc:
        errors["netns"] = str(exc)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _probe_child(spec, argv, report["landlock_abi"], write_fd)
    os.close(write_fd)
    import json  # the probe's only: a session's start does without

    with os.fdopen(read_fd) as fh:
        child = json.loads(fh.read() or '{"errors": {}}')
    _, status = os.waitpid(pid, 0)
    errors.update(child.pop("errors"))
    report.update(child)
    report["sumo_runs"] = os.waitstatus_to_exitcode(status) == 0
    if not report["sumo_runs"]:
        errors.setdefault(
            "sumo", f"{argv[0]} did not run confined (exit {os.waitstatus_to_exitcode(status)})"
        )
    report["errors"] = errors
    return report


def _probe_child(spec: Spec, argv: list[str], abi: int, out_fd: int) -> None:
    result: dict[str, Any] = {"fs": False, "net": False, "scopes": False, "rlimits": False}
    errors: dict[str, str] = {}
    devnull = os.open("/dev/null", os.O_WRONLY)  # before Landlock closes the way to it
    port = spec.traci_port
    try:
        _confine(spec, abi, port, port + 1)
        result["rlimits"] = True
        if spec.landlock:
            result["fs"] = _denied(lambda: os.listdir("/"))
            result["net"] = abi >= 4 and _denied(lambda: _bind(port + 2))
            result["scopes"] = abi >= 6
    except SandboxError as exc:
        errors["confine"] = str(exc)
    result["errors"] = errors
    import json

    os.write(out_fd, json.dumps(result).encode())
    os.close(out_fd)
    if errors:
        os._exit(1)  # never run SUMO less confined than asked, not even its --version
    _restore_signals()
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        os.execv(argv[0], argv)
    except OSError:
        os._exit(127)


def _denied(attempt: Callable[[], object]) -> bool:
    try:
        attempt()
    except PermissionError:
        return True
    return False


def _bind(port: int) -> None:
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
    finally:
        sock.close()


def main(args: Sequence[str]) -> int:
    if "--" not in args:
        print("usage: sandbox_exec KEY=VALUE... -- PROGRAM ARGS...", file=sys.stderr)
        return 2
    split = args.index("--")
    spec, argv = Spec(args[:split]), list(args[split + 1 :])
    if spec.probe:
        import json

        print(json.dumps(probe(spec, argv)), flush=True)
        return 0
    try:
        launch(spec, argv)
    except SandboxError as exc:
        # SUMO's own error format, so the session's error shows it; it never runs unconfined.
        print(f"Error: sandbox: {exc}", file=sys.stderr, flush=True)
        return 1
    return 127  # launch() only returns by exec


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
