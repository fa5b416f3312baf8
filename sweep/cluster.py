"""Dask workers made fit for XLA: each on its own share of its machine's cores, with malloc as glibc
sets it.

XLA on the CPU sizes its thread pool to the cores a process may run on (its CPU affinity), and
every jitted chunk is split over that pool. Worker processes started side by side on one machine
(``dask worker --nworkers N``, a LocalCluster) therefore each spread every chunk over all the
machine's cores, and N of them contend for the same cores: on a 2-core machine two workers were
no faster than one (1.12×). Flags do not change that (``--xla_cpu_multi_thread_eigen=false`` only
concerns Eigen's matrix kernels). Before a sweep runs on a cluster, ``prepare_workers`` gives each
worker process on a machine an even share of the cores its processes have in common (worker k of
n: cores k, k + n, ...; with more processes than cores, one core each, shared), and sets it for
every thread of the process, so the XLA pool created on its first chunk, and any pool already
there, stays on it.

Left alone: workers in the client's own process (``processes=False``: the share would pin the
caller), a machine with one worker process or one core, machines whose worker processes already
run on different core sets (someone chose them), and systems without ``os.sched_setaffinity``
(macOS, Windows).

The same step undoes, in those worker processes, a setting of dask's nanny that costs XLA half its
speed: it starts every worker with ``MALLOC_TRIM_THRESHOLD_=65536`` (so freed memory goes back to
the system), and with that glibc also stops raising its mmap threshold, so every buffer above
128 kB, i.e. each of a chunk's multi-MB arrays, is mapped fresh and faulted in page by page on
every call, then unmapped: a 786k-point chunk took 16.6 ms instead of 11.1 ms (the same process
with and without the variable). ``tune_malloc`` sets glibc's thresholds to what its own adaptive
rule would reach (mmap above 32 MiB, trim above 64 MiB) in processes where the variable is set;
memory is still returned, in larger steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest adaptive mmap threshold on 64-bit systems


def process_view() -> tuple[str, int, tuple[int, ...]]:
    """(host name, process id, the cores this process may run on); run on each worker."""
    cores = tuple(sorted(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else ()
    return socket.gethostname(), os.getpid(), cores


def plan_shares(view: dict, me: tuple[str, int]) -> dict[str, list[int]]:
    """Cores per worker address from every worker's ``process_view`` (``me``: the client's host and
    process id). Only workers to pin appear (see the module docstring for who is left alone)."""
    by_host: dict[str, list] = {}
    for addr, (host, pid, cores) in sorted(view.items()):
        if (host, pid) != tuple(me) and cores:
            by_host.setdefault(host, []).append((addr, pid, tuple(cores)))
    plan = {}
    for workers in by_host.values():
        sets = {cores for _, _, cores in workers}
        pids = sorted({pid for _, pid, _ in workers})
        if len(sets) != 1 or len(pids) < 2:
            continue
        cores = list(sets.pop())
        if len(cores) < 2:
            continue
        n = len(pids)
        for addr, pid, _ in workers:
            k = pids.index(pid)
            plan[addr] = cores[k::n] if n <= len(cores) else [cores[k % len(cores)]]
    return plan


def pin(cores: list[int]) -> list[int]:
    """Run every thread of this process on ``cores`` (threads started later inherit it); returns
    the process's cores afterwards."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (OSError, ValueError):  # a thread that has just ended
            pass
    return sorted(os.sched_getaffinity(0))


def tune_malloc(client_process: tuple[str, int]) -> bool:
    """In a worker process started with dask's ``MALLOC_TRIM_THRESHOLD_`` (not the client's own),
    glibc's mmap and trim thresholds at 32 and 64 MiB; True if set."""
    if (socket.gethostname(), os.getpid()) == tuple(client_process) or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and \
        bool(libc.mallopt(M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_BYTES))


def prepare_workers(client) -> dict[str, list[int]]:
    """Before a sweep on a cluster: each worker process's malloc thresholds (``tune_malloc``) and,
    on machines with several worker processes, an even share of its cores each (a no-op where the
    module docstring says so); returns the cores set per worker address."""
    me = (socket.gethostname(), os.getpid())
    client.run(tune_malloc, me)
    if not hasattr(os, "sched_setaffinity"):
        return {}
    plan = plan_shares(client.run(process_view), me)
    for addr, cores in plan.items():
        client.run(pin, cores, workers=[addr])
    return plan
