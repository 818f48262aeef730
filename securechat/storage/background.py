"""The thread the storage's maintenance runs on (rotation jobs, gzip, attachment retention)."""

from __future__ import annotations

import concurrent.futures


def maintenance_executor(name: str) -> concurrent.futures.ThreadPoolExecutor:
    """One thread, so that maintenance jobs run one after another, at the server's own priority.

    Not at nice 19, as it was until 2026-12-04: a thread of this process shares the event loop's
    GIL, and a low-priority thread that holds it while another process wants the same core is
    kept off the CPU with the GIL in hand, so the loop waits for it. With a nice-0 CPU hog on the
    loop's core (tools: docs/PERFORMANCE.md, "Loop stalls: the maintenance thread's priority"), a
    thread taking the GIL for 3 ms every 20 ms stalled the loop for up to 158 ms at nice 19 and
    12 ms at nice 0; a continuous scan 239 ms against 13 ms. Other workers of `serve --workers`
    are such processes. What is CPU-heavy and needs no GIL (the gzip) runs in a child process in
    the idle scheduling class instead (ciphertext_log._run_idle), where a low priority is safe.
    """
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
