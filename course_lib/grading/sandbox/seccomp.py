"""The box's system-call filter: what a notebook never needs fails with EPERM.

bubblewrap loads a classic BPF program (``--seccomp FD``, an array of ``struct sock_filter``) just
before it starts the program inside; the filter holds for every process in the box and cannot be
removed. Built here with the standard library (no libseccomp). Denied, with ``EPERM``
(:data:`DENIED`): debugging and reading other processes (ptrace, process_vm_*, kcmp,
pidfd_getfd), mounts and namespaces (mount and the new mount API, pivot_root, chroot, unshare,
setns, and ``clone`` with a namespace flag), kernel keys, BPF, perf events, userfaultfd,
io_uring, kernel modules and kexec, swap, reboot, clocks, host names, quotas, file handles,
fanotify, the kernel log, and all System V and POSIX message-queue IPC (the objects one student
could leave for the next). ``clone3`` answers ``ENOSYS``, so the C library falls back to ``clone``,
whose flags the filter can see. A system call of another architecture (x86's 32-bit entry points
on x86_64) kills the process: a notebook has no business there.

Supported: x86_64 and aarch64 (:func:`supported`); elsewhere the box runs without the filter and
``sandbox check`` says so.
"""
from __future__ import annotations

import errno
import os
import platform
import struct

# name: (x86_64 number, aarch64 number); None where the call does not exist on that architecture.
SYSCALLS = {
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "kcmp": (312, 272), "pidfd_getfd": (438, 438),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "move_mount": (429, 429), "open_tree": (428, 428), "mount_setattr": (442, 442),
    "unshare": (272, 97), "setns": (308, 268),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "init_module": (175, 105),
    "finit_module": (313, 273), "delete_module": (176, 106),
    "swapon": (167, 224), "swapoff": (168, 225), "reboot": (169, 142), "acct": (163, 89),
    "settimeofday": (164, 170), "clock_settime": (227, 112), "clock_adjtime": (305, 266),
    "adjtimex": (159, 171), "sethostname": (170, 161), "setdomainname": (171, 162),
    "iopl": (172, None), "ioperm": (173, None), "uselib": (134, None),
    "quotactl": (179, 60), "lookup_dcookie": (212, 18), "name_to_handle_at": (303, 264),
    "open_by_handle_at": (304, 265), "fanotify_init": (300, 262), "syslog": (103, 116),
    "vhangup": (153, 58),
    "mq_open": (240, 180), "mq_unlink": (241, 181), "mq_timedsend": (242, 182),
    "mq_timedreceive": (243, 183), "mq_notify": (244, 184), "mq_getsetattr": (245, 185),
    "shmget": (29, 194), "shmat": (30, 196), "shmctl": (31, 195), "shmdt": (67, 197),
    "msgget": (68, 186), "msgsnd": (69, 189), "msgrcv": (70, 188), "msgctl": (71, 187),
    "semget": (64, 190), "semop": (65, 193), "semctl": (66, 191), "semtimedop": (220, 192),
}
DENIED = tuple(SYSCALLS)
CLONE, CLONE3 = {"x86_64": 56, "aarch64": 220}, {"x86_64": 435, "aarch64": 435}
# clone() flags that create namespaces (all in the low 32 bits of its first argument).
CLONE_NAMESPACES = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
                    | 0x20000000 | 0x40000000)
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000  # x86_64's x32 ABI: its numbers are not the ones checked above

# Classic BPF, as <linux/filter.h> and <linux/seccomp.h> spell it.
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_JSET_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
SECCOMP_RET_KILL_PROCESS, SECCOMP_RET_ERRNO, SECCOMP_RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
NR_OFFSET, ARCH_OFFSET, ARG0_OFFSET = 0, 4, 16  # struct seccomp_data (little-endian)


def machine() -> str:
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(),
                                                      platform.machine().lower())


def supported() -> bool:
    return machine() in AUDIT_ARCH


def program(arch: str | None = None) -> bytes:
    """The filter for ``arch`` (this machine's by default), as bwrap reads it."""
    arch = arch or machine()
    if arch not in AUDIT_ARCH:
        raise ValueError(f"no seccomp filter for the {arch} architecture (only "
                         f"{', '.join(AUDIT_ARCH)})")
    column = 0 if arch == "x86_64" else 1
    numbers = sorted({n[column] for n in SYSCALLS.values() if n[column] is not None})
    ops: list[tuple] = []  # (code, jump-true label or 0, jump-false label or 0, k)
    ops.append((BPF_LD_W_ABS, 0, 0, ARCH_OFFSET))
    ops.append((BPF_JEQ_K, 0, "kill", AUDIT_ARCH[arch]))
    ops.append((BPF_LD_W_ABS, 0, 0, NR_OFFSET))
    if arch == "x86_64":
        ops.append((BPF_JGE_K, "kill", 0, X32_SYSCALL_BIT))
    ops += [(BPF_JEQ_K, "eperm", 0, n) for n in numbers]
    ops.append((BPF_JEQ_K, "enosys", 0, CLONE3[arch]))
    ops.append((BPF_JEQ_K, 0, "allow", CLONE[arch]))
    ops.append((BPF_LD_W_ABS, 0, 0, ARG0_OFFSET))
    ops.append((BPF_JSET_K, "eperm", "allow", CLONE_NAMESPACES))
    labels = {"allow": SECCOMP_RET_ALLOW, "eperm": SECCOMP_RET_ERRNO | errno.EPERM,
              "enosys": SECCOMP_RET_ERRNO | errno.ENOSYS, "kill": SECCOMP_RET_KILL_PROCESS}
    where = {name: len(ops) + i for i, name in enumerate(labels)}
    ops += [(BPF_RET_K, 0, 0, value) for value in labels.values()]
    out = []
    for i, (code, jt, jf, k) in enumerate(ops):
        jt = where[jt] - i - 1 if jt else 0
        jf = where[jf] - i - 1 if jf else 0
        assert 0 <= jt < 256 and 0 <= jf < 256, "a jump too long for classic BPF"
        out.append(struct.pack("<HBBI", code, jt, jf, k))
    return b"".join(out)


def filter_fd() -> int:
    """A file descriptor holding :func:`program`, for ``bwrap --seccomp FD`` (bwrap reads it to
    the end; one descriptor per sandbox started). The caller closes it once bwrap runs."""
    fd = os.memfd_create("course-seccomp")  # close-on-exec: only bwrap gets it (pass_fds)
    os.write(fd, program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
