"""Worker processes that die with their parent.

A process killed with SIGKILL (the OOM killer, ``kill -9``, a scheduler's hard limit) runs no cleanup,
so its DataLoader workers or ``ProcessPoolExecutor`` workers would go on reading and preprocessing
volumes, re-parented to PID 1, holding memory and CPU. The initialisers here tie each worker's life
to its parent's:

* Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so the kernel kills the worker when its parent goes;
* elsewhere (or when ``prctl`` is unavailable): a daemon thread checks once a second that the parent
  is alive and ends the worker with ``os._exit`` when it is not.

Either way the parent may already have died between the fork and the initialiser; the worker then exits
at once.

Entry points: :func:`die_with_parent` (``initializer=`` of a ``ProcessPoolExecutor``, with the parent's
pid as ``initargs``), :func:`dataloader_worker_init` (``worker_init_fn=`` of a DataLoader).

Example:
    >>> pool = ProcessPoolExecutor(2, initializer=die_with_parent, initargs=(os.getpid(),))  # doctest: +SKIP
    >>> loader = DataLoader(dataset, num_workers=2, worker_init_fn=dataloader_worker_init)  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
"""``prctl`` option from ``<linux/prctl.h>``: signal sent to this process when its parent dies."""
POLL_SECONDS = 1.0
"""How often the fallback thread checks that the parent is alive."""
ORPHAN_EXIT_CODE = 70
"""Exit status of a worker that ends because its parent is gone."""


def die_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` ends; exit now if it already has.

    On Linux the kernel sends SIGKILL when the parent *thread* that created this process exits, so the
    pool or DataLoader must be started from a thread that lives as long as the job (the main thread in
    ``ctvl``). A process whose direct parent is not ``parent_pid`` (a forkserver's child) and every
    process off Linux is watched by a daemon thread instead.

    Args:
        parent_pid: pid of the process whose death ends this one, recorded *before* this process was
            created (``os.getppid()`` read here could already be init's).
    """
    armed = _set_parent_death_signal(signal.SIGKILL) if sys.platform.startswith("linux") else False
    # Read after arming: a parent that died before prctl left us re-parented, and no signal will come.
    if armed and os.getppid() == parent_pid:
        return
    if not _parent_alive(parent_pid):
        os._exit(ORPHAN_EXIT_CODE)
    threading.Thread(target=_watch, args=(parent_pid,), name="die-with-parent", daemon=True).start()


def dataloader_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` of a DataLoader: :func:`die_with_parent` of the process that started the worker.

    Args:
        worker_id: the DataLoader's worker index (unused).
    """
    parent = multiprocessing.parent_process()  # its pid was recorded in the parent, before the fork
    die_with_parent(parent.pid if parent is not None else os.getppid())


def _set_parent_death_signal(sig: int) -> bool:
    """``prctl(PR_SET_PDEATHSIG, sig)`` through libc; False where it is missing or fails."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the running program's symbols include libc's
        if libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0) == 0:
            return True
        logger.debug("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:  # no libc / no prctl symbol
        logger.debug("prctl unavailable: %s", exc)
    return False


def _parent_alive(parent_pid: int) -> bool:
    """Whether ``parent_pid`` still runs.

    On POSIX a dead parent's children are re-parented at once, so a direct parent that is still
    ``os.getppid()`` is alive. Otherwise (a forkserver's child, or Windows, where ``getppid`` keeps a dead
    parent's pid) multiprocessing's parent sentinel answers when it belongs to that process.
    """
    direct = os.getppid() == parent_pid
    if direct and os.name == "posix":
        return True
    parent = multiprocessing.parent_process()
    if parent is not None and parent.pid == parent_pid:
        return parent.is_alive()
    return direct


def _watch(parent_pid: int) -> None:
    while _parent_alive(parent_pid):
        time.sleep(POLL_SECONDS)
    os._exit(ORPHAN_EXIT_CODE)
