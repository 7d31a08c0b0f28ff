"""Resident-set readings of this process (Linux `/proc/self/status`), shared by the CPU memory measurements of the benchmarks."""

from __future__ import annotations


def status_kib(field: str) -> int:
    """Return a `/proc/self/status` field in KiB (`VmRSS`: resident now, `VmHWM`: its peak); 0 where it cannot be read."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    return 0
