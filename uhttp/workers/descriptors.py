"""Application-owned descriptors watched in a process's own selector.

Both the dispatcher and the workers let applications wait on their own
sockets, pipes or timer descriptors without a thread: a callback runs from
the loop when the descriptor is ready. This module keeps the callbacks and
the selector registration in step; it never reads or writes a descriptor.
"""

import selectors


class DescriptorWatch:
    """`fd -> {event: callback}` kept registered in one selector."""

    def __init__(self, on_error):
        self._callbacks = {}
        self._selector = None
        self._on_error = on_error

    def attach(self, selector):
        """Register everything watched so far in `selector` (loop start)."""
        self._selector = selector
        for fd in list(self._callbacks):
            self._apply(fd)

    def watch(self, fd, event, callback):
        """Call `callback(fd)` when `fd` is ready for `event`; None stops."""
        fd = fd if isinstance(fd, int) else fd.fileno()
        callbacks = self._callbacks.setdefault(fd, {})
        if callback is None:
            callbacks.pop(event, None)
        else:
            callbacks[event] = callback
        if self._selector is not None:
            self._apply(fd)

    def _apply(self, fd):
        mask = 0
        for event in self._callbacks.get(fd, ()):
            mask |= event
        try:
            self._selector.get_key(fd)
            known = True
        except KeyError:
            known = False
        if not mask:
            self._callbacks.pop(fd, None)
            if known:
                self._selector.unregister(fd)
        elif known:
            self._selector.modify(fd, mask, self.dispatch)
        else:
            self._selector.register(fd, mask, self.dispatch)

    def dispatch(self, fileobj, mask):
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

    def register_reader(self, fd, callback):
        """Call `callback(fd)` from the loop when `fd` is readable."""
        self._descriptors.watch(fd, READ, callback)

    def unregister_reader(self, fd):
        """Stop watching `fd` for reading."""
        self._descriptors.watch(fd, READ, None)

    def register_writer(self, fd, callback):
        """Call `callback(fd)` from the loop when `fd` is writable."""
        self._descriptors.watch(fd, WRITE, callback)

    def unregister_writer(self, fd):
        """Stop watching `fd` for writing."""
        self._descriptors.watch(fd, WRITE, None)
