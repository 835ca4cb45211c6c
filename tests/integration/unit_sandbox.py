"""The system call sandbox of systemd/agentaskit-dr.service, applied to a test process.

systemd cannot run here (it is not PID 1), so the unit's ``SystemCallFilter=``,
``RestrictAddressFamilies=`` and ``MemoryDenyWriteExecute=`` are rebuilt from the unit
file with the kernel's own tools: the system call groups expanded by
``systemd-analyze syscall-filter``, a seccomp filter through libseccomp (via ctypes:
default EPERM, each allowed call by name, ``socket``/``socketpair`` only for the allowed
families), and ``PR_SET_MDWE``. :func:`syscalls_of_unit` runs in the test;
:func:`enter` in the daemon's process (``faulty_watchdog unit-sandbox``) before it starts.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import socket
import subprocess
from functools import cache
from pathlib import Path

#: Environment variables that carry the sandbox from the test to the daemon's process.
SYSCALLS_VARIABLE = "AGENTASKIT_DR_TEST_SYSCALLS"
FAMILIES_VARIABLE = "AGENTASKIT_DR_TEST_FAMILIES"


@cache
def _group(name: str) -> frozenset[str]:
    """The system calls of ``@name``, nested groups expanded."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    out = subprocess.run([analyze, "syscall-filter", name], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        calls |= _group(item) if item.startswith("@") else {item}
    return frozenset(calls)


def _expand(words: list[str]) -> set[str]:
    calls: set[str] = set()
    for word in words:
        calls |= _group(word) if word.startswith("@") else {word}
    return calls


def syscalls_of_unit(unit: Path) -> tuple[list[str], list[str]]:
    """(allowed system calls, allowed socket families) as the unit's lines say, in order:
    an allow list, then ``~`` lines taking calls away."""
    allowed: set[str] = set()
    families: list[str] = []
    for line in unit.read_text().splitlines():
        key, _, value = line.partition("=")
        if key == "SystemCallFilter":
            if value.startswith("~"):
                allowed -= _expand(value[1:].split())
            else:
                allowed |= _expand(value.split())
        elif key == "RestrictAddressFamilies":
            families = value.split()
    assert allowed, f"{unit}: no SystemCallFilter="
    assert families, f"{unit}: no RestrictAddressFamilies="
    return sorted(allowed), families


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


_ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO = 0x00050000
_CMP_EQ = 4
_PR_SET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN = 65, 1


def enter(syscalls: list[str], families: list[str]) -> None:
    """Refuse writable-executable memory, then every system call but ``syscalls``, and
    sockets of other families than ``families``, for this process and its children.
    Raises OSError when the kernel or libseccomp cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_MDWE, _PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE")
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    context = lib.seccomp_init(_ACT_ERRNO | errno.EPERM)
    numbers = {family: int(getattr(socket, family)) for family in families}
    for name in syscalls:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            continue  # not a system call of this architecture (the unit says "native")
        if name in ("socket", "socketpair"):
            for family in numbers.values():
                compare = (_ArgCmp * 1)(_ArgCmp(0, _CMP_EQ, family, 0))
                lib.seccomp_rule_add_array(context, _ACT_ALLOW, number, 1, compare)
        else:
            lib.seccomp_rule_add_array(context, _ACT_ALLOW, number, 0, None)
    if lib.seccomp_load(context) != 0:
        raise OSError("seccomp_load failed")


def in_force() -> list[str]:
    """What the sandbox should refuse but did not (empty once it is in force)."""
    leaks = []
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW).close()
        leaks.append("a packet socket")
    except OSError:
        pass
    try:
        os.sched_setaffinity(0, os.sched_getaffinity(0))  # @resources
        leaks.append("sched_setaffinity")
    except OSError:
        pass
    return leaks


def parse_list(text: str) -> list[str]:
    return [item for item in re.split(r"[,\s]+", text) if item]
