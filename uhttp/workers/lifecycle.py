"""The dispatcher's life from first start to last exit, assembled by role.

`Lifecycle` (a mixin of Dispatcher) joins the mechanisms, one module each:
`signals` (which signal does what), `systemd` (first readiness and
notifications), `upgrade` (SIGUSR2 successor), `shutdown` (drain, stop,
cleanup). This module owns the lifecycle hooks an application overrides
(`on_start`, `on_stop`, `before_fork`, `on_worker_recycle`) and the one
place they are called from.

Must never let a hook's exception reach the loop: it is logged with its
traceback and the dispatcher goes on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .shutdown import Shutdown, refuse_to_run_in_worker
from .signals import HANDLED_SIGNALS, Signals
from .systemd import Readiness
from .upgrade import Upgrade

if TYPE_CHECKING:
    from .pool import WorkerPool

__all__ = ['HANDLED_SIGNALS', 'Lifecycle', 'refuse_to_run_in_worker']


class Lifecycle(Signals, Readiness, Upgrade, Shutdown):
    """Signals, readiness, upgrade, shutdown and the lifecycle hooks."""

    _stop_hook_called = False

    def on_start(self) -> None:
        """Called once in the dispatcher, when every worker of every pool
        (and every owned service) is first ready."""

    def on_stop(self) -> None:
        """Called once in the dispatcher at shutdown, after every worker has
        exited (owned services stop after it)."""

    def before_fork(self, pool: WorkerPool, worker_id: int) -> None:
        """Called in the dispatcher just before a worker process of `pool`
        with index `worker_id` starts (each start, restarts included)."""

    def on_worker_recycle(self, pool: WorkerPool, worker_id: int,
                          reason: str) -> None:
        """Called in the dispatcher when worker `worker_id` of `pool` is
        about to be replaced by a fresh process; `reason` is
        'max_requests', 'max_memory' or 'rolling_restart'."""

    def lifecycle_hook(self, name: str, *args: object) -> None:

        """Call lifecycle hook `name` if the application overrides it; an
        exception is logged with its traceback, never raised."""
        hook = getattr(self, name)
        if getattr(type(self), name) is getattr(Lifecycle, name):
            return  # not overridden: nothing to call
        try:
            hook(*args)
        except Exception:  # pylint: disable=broad-except
            self.log.exception('%s() raised', name)
