"""Process titles shown by ps and top ("uhttp.workers: worker Items[2]").

Uses the optional `setproctitle` package (`pip install
uhttp-workers[ops]`); without it titles stay as they are, silently: a title
is a convenience, never a reason to fail.
"""

from __future__ import annotations

from collections.abc import Callable

_setproctitle: Callable[[str], None] | None
try:
    from setproctitle import setproctitle as _setproctitle
except ImportError:  # optional extra not installed
    _setproctitle = None

PREFIX = 'uhttp.workers: '


def set_title(title: str) -> bool:
    """Set the process title; returns False when setproctitle is missing."""
    if _setproctitle is None:
        return False
    _setproctitle(PREFIX + title)
    return True
