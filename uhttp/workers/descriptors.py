"""Application-owned descriptors watched in a process's own selector.

Both the dispatcher and the workers let applications wait on their own
sockets, pipes or timer descriptors without a thread: a callback runs from
the loop when the descriptor is ready. This module keeps the callbacks and
the selector registration in step; it never reads or writes a descriptor.
"""

from __future__ import annotations

import selectors
from collections.abc import Callable
from typing import Protocol


class HasFileno(Protocol):
    """A socket, a file, anything with a descriptor."""

    def fileno(self) -> int:
        """The descriptor."""


# a descriptor, or an object that has one
Descriptor = int | HasFileno
# called with the descriptor when it is ready; its result is ignored
Callback = Callable[[int], object]


class DescriptorWatch:
    """`fd -> {event: callback}` kept registered in one selector."""

    def __init__(self, on_error: Callable[[int, Exception], object]) -> None:
        self._callbacks: dict[int, dict[int, Callback]] = {}
        self._selector: selectors.BaseSelector | None = None
        self._on_error = on_error

    def attach(self, selector: selectors.BaseSelector) -> None:
        """Register everything watched so far in `selector` (loop start)."""
        self._selector = selector
        for fd in list(self._callbacks):
            self._apply(selector, fd)

    def watch(self, fd: Descriptor, event: int,
              callback: Callback | None) -> None:
        """Call `callback(fd)` when `fd` is ready for `event`; None stops."""
        fd = fd if isinstance(fd, int) else fd.fileno()
        callbacks = self._callbacks.setdefault(fd, {})
        if callback is None:
            callbacks.pop(event, None)
        else:
            callbacks[event] = callback
        if self._selector is not None:
            self._apply(self._selector, fd)

    def _apply(self, selector: selectors.BaseSelector, fd: int) -> None:
        mask = 0
        for event in self._callbacks.get(fd, ()):
            mask |= event
        try:
            selector.get_key(fd)
            known = True
        except KeyError:
            known = False
        if not mask:
            self._callbacks.pop(fd, None)
            if known:
                selector.unregister(fd)
        elif known:
            selector.modify(fd, mask, self.dispatch)
        else:
            selector.register(fd, mask, self.dispatch)

    def dispatch(self, fileobj: Descriptor, mask: int) -> None:
        """Selector callback: run the callbacks whose event is ready."""
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        for event, callback in list(self._callbacks.get(fd, {}).items()):
            if mask & event:
                try:
                    callback(fd)
                except Exception as err:  # pylint: disable=broad-except
                    self._on_error(fd, err)


READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class WatchesDescriptors:
    """The public API of a process loop that owns a DescriptorWatch
    (`self._descriptors`): the Dispatcher's and every Worker's. Callbacks
    run inside that loop, so they must not block."""

    _descriptors: DescriptorWatch

    def register_reader(self, fd: Descriptor, callback: Callback) -> None:
        """Call `callback(fd)` from the loop when `fd` is readable."""
        self._descriptors.watch(fd, READ, callback)

    def unregister_reader(self, fd: Descriptor) -> None:
        """Stop watching `fd` for reading."""
        self._descriptors.watch(fd, READ, None)

    def register_writer(self, fd: Descriptor, callback: Callback) -> None:
        """Call `callback(fd)` from the loop when `fd` is writable."""
        self._descriptors.watch(fd, WRITE, callback)

    def unregister_writer(self, fd: Descriptor) -> None:
        """Stop watching `fd` for writing."""
        self._descriptors.watch(fd, WRITE, None)
