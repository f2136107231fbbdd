"""The sandbox's syscall filters, assembled as classic BPF here (standard library only, no libseccomp).

Two filters, both deny-lists anchored on Docker's default seccomp profile (moby profiles/seccomp/
default.json: what it refuses to an unprivileged container), with EPERM:
- `sandbox_filter()`: every process of a worker, given to bubblewrap as `--seccomp FD` (bytes). Denies
  the kernel keyrings (add_key, request_key, keyctl: the sandbox would otherwise reach the harness's
  session keyring), ptrace and process_vm_*, kcmp, pidfd_getfd, mount and the new mount API, unshare,
  setns and namespace flags to clone (clone3 gets ENOSYS, so libc falls back to clone, whose flags a
  filter can read), bpf, perf_event_open, userfaultfd, io_uring, kernel modules and kexec, POSIX message
  queues (they would outlive a job: the IPC namespace is the worker's, not the job's), NUMA placement,
  clock and quota changes, reboot, swap, acct, syslog and other legacy calls. prlimit64, setpriority,
  ioprio_set and sched_set{affinity,scheduler,param,attr} are allowed on the calling process only
  (pid 0, or PRIO_PROCESS/IOPRIO_WHO_PROCESS with who 0): no process can change another's limits,
  priority or CPUs. Foreign ABIs (another arch, x32) are killed.
- `candidate_filter(server_pid)`: stacked on top in each candidate process C (inherited by its
  children): no signal to the server or to every process at once (kill(-1)), no pidfd signals. The
  zygote is PID 1 of the namespace, which the kernel already shields.
Only 32-bit argument words are compared: the kernel reads these arguments (int, pid_t) as 32 bits.
"""
from __future__ import annotations

import errno
import platform
import struct

# syscall numbers per architecture: (x86_64, the generic table used by aarch64); None = not there
_NR = {
    "acct": (163, 89), "add_key": (248, 217), "bpf": (321, 280), "clock_adjtime": (305, 266),
    "clock_settime": (227, 112), "create_module": (174, None), "delete_module": (176, 106),
    "finit_module": (313, 273), "fanotify_init": (300, 262), "fsconfig": (431, 431), "fsmount": (432, 432),
    "fsopen": (430, 430), "fspick": (433, 433), "get_kernel_syms": (177, None), "init_module": (175, 105),
    "io_uring_enter": (426, 426), "io_uring_register": (427, 427), "io_uring_setup": (425, 425),
    "ioperm": (173, None), "iopl": (172, None), "kcmp": (312, 272), "kexec_file_load": (320, 294),
    "kexec_load": (246, 104), "keyctl": (250, 219), "lookup_dcookie": (212, 18), "mbind": (237, 235),
    "memfd_secret": (447, 447), "migrate_pages": (256, 238), "mount": (165, 40), "mount_setattr": (442, 442),
    "move_mount": (429, 429), "move_pages": (279, 239), "mq_getsetattr": (245, 185), "mq_notify": (244, 184),
    "mq_open": (240, 180), "mq_timedreceive": (243, 183), "mq_timedsend": (242, 182), "mq_unlink": (241, 181),
    "name_to_handle_at": (303, 264), "nfsservctl": (180, 42), "open_by_handle_at": (304, 265),
    "open_tree": (428, 428), "perf_event_open": (298, 241), "pidfd_getfd": (438, 438), "pivot_root": (155, 41),
    "process_madvise": (440, 440), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "ptrace": (101, 117), "query_module": (178, None), "quotactl": (179, 60), "quotactl_fd": (443, 443),
    "reboot": (169, 142), "request_key": (249, 218), "set_mempolicy": (238, 237),
    "set_mempolicy_home_node": (450, 450), "setns": (308, 268), "settimeofday": (164, 170),
    "swapoff": (168, 225), "swapon": (167, 224), "syslog": (103, 116), "sysfs": (139, None),
    "_sysctl": (156, None), "umount2": (166, 39), "unshare": (272, 97), "uselib": (134, None),
    "userfaultfd": (323, 282), "ustat": (136, None), "vhangup": (153, 58),
    # allowed with conditions
    "clone": (56, 220), "clone3": (435, 435), "prlimit64": (302, 261), "setpriority": (141, 140),
    "ioprio_set": (251, 30), "sched_setaffinity": (203, 122), "sched_setscheduler": (144, 119),
    "sched_setparam": (142, 118), "sched_setattr": (314, 274),
    # the candidate filter
    "kill": (62, 129), "tkill": (200, 130), "tgkill": (234, 131), "rt_sigqueueinfo": (129, 138),
    "rt_tgsigqueueinfo": (297, 240), "pidfd_open": (434, 434), "pidfd_send_signal": (424, 424),
}
DENIED = tuple(name for name in _NR if name not in {
    "clone", "clone3", "prlimit64", "setpriority", "ioprio_set", "sched_setaffinity", "sched_setscheduler",
    "sched_setparam", "sched_setattr", "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "pidfd_open", "pidfd_send_signal"})
SELF_ONLY = ("prlimit64", "sched_setaffinity", "sched_setscheduler", "sched_setparam", "sched_setattr")
_ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}      # AUDIT_ARCH_*
_NEW_NAMESPACES = 0x7E020000    # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET

# classic BPF opcodes and seccomp return values
_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
ALLOW, KILL = 0x7FFF0000, 0x80000000


def _errno(code: int) -> int:
    return 0x00050000 | code


class UnsupportedArch(RuntimeError):
    """No syscall table for this machine: the filter cannot be built."""


def _arch() -> tuple[int, int]:
    machine = platform.machine()
    if machine not in _ARCHES:
        raise UnsupportedArch(f"no seccomp syscall table for {machine!r} (known: {', '.join(_ARCHES)})")
    return _ARCHES[machine]


def _arg(i: int) -> int:
    """Offset of the low 32-bit word of argument i in struct seccomp_data (little-endian)."""
    return 16 + 8 * i


def _assemble(rules: list[tuple[int, list[tuple]]], column: int, audit_arch: int) -> bytes:
    """rules: [(syscall nr, body)], body a list of (code, jt, jf, k) ending in a return; each rule is
    `A = nr; if A != nr skip body`. Relative jumps stay short because bodies are short."""
    prog = [(_LD, 0, 0, 4), (_JEQ, 1, 0, audit_arch), (_RET, 0, 0, KILL), (_LD, 0, 0, 0)]
    if column == 0:                                     # x32 ABI numbers on x86_64
        prog += [(_JGE, 0, 1, 0x40000000), (_RET, 0, 0, KILL)]
    for nr, body in rules:
        prog += [(_LD, 0, 0, 0), (_JEQ, 0, len(body), nr)] + body
    prog.append((_RET, 0, 0, ALLOW))
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


def _deny(code: int = errno.EPERM) -> list[tuple]:
    return [(_RET, 0, 0, _errno(code))]


def _only_if_zero(*args: int) -> list[tuple]:
    """Allow only when each listed argument's low word is 0; else EPERM."""
    body = []
    for i, a in enumerate(args):
        left = len(args) - i                            # jumps to the EPERM at the end on a mismatch
        body += [(_LD, 0, 0, _arg(a)), (_JEQ, 0, 2 * left - 1, 0)]
    return body + [(_RET, 0, 0, ALLOW), (_RET, 0, 0, _errno(errno.EPERM))]


def _deny_if_equal(arg: int, values: list[int]) -> list[tuple]:
    """EPERM when argument `arg`'s low word is one of `values`; else allow."""
    body = [(_LD, 0, 0, _arg(arg))]
    for i, v in enumerate(values):
        body.append((_JEQ, len(values) - i, 0, v & 0xFFFFFFFF))
    return body + [(_RET, 0, 0, ALLOW), (_RET, 0, 0, _errno(errno.EPERM))]


def sandbox_filter() -> bytes:
    """The filter for the whole worker (bwrap --seccomp FD). Raises UnsupportedArch."""
    column, audit_arch = _arch()
    nr = {name: numbers[column] for name, numbers in _NR.items() if numbers[column] is not None}
    rules = [(nr[name], _deny()) for name in DENIED if name in nr]
    rules.append((nr["clone3"], _deny(errno.ENOSYS)))
    rules.append((nr["clone"], [(_LD, 0, 0, _arg(0)), (_JSET, 0, 1, _NEW_NAMESPACES),
                                (_RET, 0, 0, _errno(errno.EPERM)), (_RET, 0, 0, ALLOW)]))
    rules += [(nr[name], _only_if_zero(0)) for name in SELF_ONLY]
    rules.append((nr["setpriority"], _only_if_zero(0, 1)))            # PRIO_PROCESS, who 0
    rules.append((nr["ioprio_set"], [(_LD, 0, 0, _arg(0)), (_JEQ, 0, 3, 1),   # IOPRIO_WHO_PROCESS
                                     (_LD, 0, 0, _arg(1)), (_JEQ, 0, 1, 0),
                                     (_RET, 0, 0, ALLOW), (_RET, 0, 0, _errno(errno.EPERM))]))
    return _assemble(rules, column, audit_arch)


def candidate_filter(server_pid: int) -> bytes:
    """The filter each candidate process adds: no signal to the server, none to every process."""
    column, audit_arch = _arch()
    nr = {name: numbers[column] for name, numbers in _NR.items() if numbers[column] is not None}
    targets = [server_pid, -server_pid, -1, 1]
    rules = [(nr["kill"], _deny_if_equal(0, targets))]
    rules += [(nr[name], _deny_if_equal(0, [server_pid, 1]))
              for name in ("tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open")]
    rules.append((nr["pidfd_send_signal"], _deny()))     # a pidfd can also come from opening /proc/<pid>
    return _assemble(rules, column, audit_arch)


def installer(program: bytes):
    """A function that adds `program` to the calling process's filters (PR_SET_NO_NEW_PRIVS, then
    PR_SET_SECCOMP). Built once (the zygote), called in each candidate process: only two prctl calls."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    prog = SockFprog(len(program) // 8, program)
    pointer = ctypes.byref(prog)

    def install() -> None:
        if libc.prctl(38, 1, 0, 0, 0) != 0:                              # PR_SET_NO_NEW_PRIVS
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.prctl(22, 2, pointer, 0, 0) != 0:                         # PR_SET_SECCOMP, FILTER
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")

    install.keep = (prog, program)      # the structure and the bytes it points to live as long as it
    return install
