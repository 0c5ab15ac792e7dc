"""The worker's process pool: Celery's prefork pool, with shutdowns that cannot hang on a half-sent task.

The main process hands a task to a pool process by writing it to that process's pipe, without blocking,
from its event loop. A message larger than the pipe's buffer (64 KiB) takes several writes. If a shutdown
begins in between, the event loop stops and the rest is never written: the pool process waits for it, and
the pool's join waits for the pool process, for ever. Celery 5.7's warm shutdown (SIGTERM) hangs there,
and so does its cold shutdown (SIGQUIT), which joins the pool the same way.

- Warm shutdown: before the pool is closed, a pool process waiting for the rest of a message is stopped.
  It was idle (it had not received its task yet); the message was never acknowledged and goes back to the
  queue with the others not started. (Finishing the write instead hands out a new task during the
  shutdown: the pool process runs it, then waits 30 s for the main process to read a result it no
  longer reads, and the message, never acknowledged, runs again elsewhere.)
- Cold shutdown: the pool processes are killed, not joined. Celery's own terminate sends them SIGTERM,
  after which a pool process still waits up to 30 s for the main process to read its last result, which
  it no longer does. What they were running was never acknowledged and goes back to the queue
  (`task_acks_late`, `task_reject_on_worker_lost`); a task that had just finished may run again.

Not covered (billiard 4.3): a task handed over whole just as a warm shutdown begins is run, but its result
is no longer read; its pool process waits 30 s for that before it exits, and the task, never acknowledged,
runs again elsewhere. Bounded, unlike the hang above.
"""

from __future__ import annotations

import logging
import os
import signal

from celery.concurrency import asynpool, prefork
from celery.worker import state

from tasks.logs import log_event

log = logging.getLogger(__name__)


class TaskPool(prefork.TaskPool):
    """`-P prefork`, with the shutdowns above."""

    def on_close(self) -> None:  # warm shutdown: close, then stop (join)
        if not state.should_terminate and isinstance(self._pool, asynpool.AsynPool) \
                and self._pool._state == asynpool.RUN:
            stop_partly_sent(self._pool)
        super().on_close()

    def on_stop(self) -> None:
        if state.should_terminate:  # cold: Celery calls this from its SIGQUIT handler, maybe inside a warm join
            if self._pool is not None:
                for process in self._pool._pool:
                    if process._is_alive():
                        os.kill(process.pid, signal.SIGKILL)
            self.on_terminate()
        else:
            super().on_stop()


def stop_partly_sent(pool: asynpool.AsynPool) -> None:
    """Stop every pool process a task message is partly written to, and forget that job (its message goes
    back to the queue when the worker's broker channel closes)."""
    writers = {asynpool._get_job_writer(job): job for job in tuple(pool._cache.values())}
    partial = [(gen, writers[gen]) for gen in tuple(pool._active_writers)
               if gen in writers and gen.__name__ == "_write_job" and not asynpool.gen_not_started(gen)]
    for gen, job in partial:
        process = job._write_to
        log_event(log, "pool_process_stopped_mid_message", task_id=job.correlation_id, pool_pid=process.pid)
        process.terminate()
        pool._active_writers.discard(gen)
        job.discard()
