"""A module of the logging test application that logs the usual way, with
a module logger of the stdlib, knowing nothing of uhttp.workers."""

import logging

log = logging.getLogger('mymodule')


def warn_about(what):
    """Log one warning naming `what`."""
    log.warning('careful with %s (%d)', what, 42)


def fail_and_log():
    """Log an exception with its traceback."""
    try:
        {}['missing']  # pylint: disable=pointless-statement
    except KeyError:
        log.exception('lookup failed')
