"""Threads for the storage's maintenance (gzip, retention), at the lowest CPU priority."""

from __future__ import annotations

import concurrent.futures
import os
import threading


def lower_priority() -> None:
    """Run this (maintenance) thread at the lowest CPU priority, where the OS allows it.

    Gzip of a rotated file is ~100 ms of CPU per 10 MiB, a retention scan ~1 s per 80 MiB of
    kept log. On Linux a thread's nice value is its own, so at nice 19 such work takes the CPU
    only when the event loop does not want it, instead of half of it while messages queue. It
    still runs whenever the server has a moment.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass  # not Linux, or not allowed: run at normal priority


def maintenance_executor(name: str) -> concurrent.futures.ThreadPoolExecutor:
    """One thread at the lowest priority, so that maintenance jobs run one after another."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name,
                                                 initializer=lower_priority)
