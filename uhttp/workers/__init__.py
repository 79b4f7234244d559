"""uhttp.workers: multi-process HTTP services on uhttp-server.

One Dispatcher process owns every client socket; pools of Worker processes
run the @api handlers. This module only re-exports the public API.
"""

import importlib

from .dispatcher import Dispatcher, sync
from .worker_events import (
    PENDING_COMPLETED, PENDING_DISCONNECTED, PENDING_SHUTDOWN,
    PENDING_STREAM_CLOSED, PENDING_TIMEOUT, PENDING_WORKER_DIED)
from .log import (
    LOG_CRITICAL, LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_LEVEL_NAMES,
    LOG_WARNING, MSG_LOG, Logger, log_to_logging)
from .pool import CTL_CONFIG, CTL_DISCONNECT, CTL_STOP, WorkerPool
from .remote_pool import RemotePool
from .request import DEFERRED, RejectRequest, Request, Response
from .worker import ApiHandler, Worker, api
from .websocket import WebSocketConnection, WebSocketHandler, ws

__all__ = [
    'Dispatcher', 'Worker', 'WorkerPool', 'RemotePool', 'ApiHandler', 'Request',
    'Response', 'api', 'sync', 'ws', 'WebSocketHandler',
    'WebSocketConnection', 'RejectRequest', 'DEFERRED', 'Logger',
    'log_to_logging', 'Service', 'ServiceManager', 'ServiceError',
    'ServiceUnavailable', 'FileLock', 'WorkerLock', 'RedisLock', 'Job',
    'JobRunner',
    'periodic', 'run_once', 'SingleServer', 'ServerClient', 'ServerNotReady',
    'SocketLock', 'LockFile',
    'LOG_DEBUG', 'LOG_INFO', 'LOG_WARNING', 'LOG_ERROR', 'LOG_CRITICAL',
    'LOG_LEVEL_NAMES', 'MSG_LOG',
    'PENDING_COMPLETED', 'PENDING_TIMEOUT', 'PENDING_DISCONNECTED',
    'PENDING_STREAM_CLOSED', 'PENDING_SHUTDOWN', 'PENDING_WORKER_DIED',
    'CTL_STOP', 'CTL_CONFIG', 'CTL_DISCONNECT',
]

# Helper services and jobs pull in an HTTP client and more: they are
# imported when an application first uses one of their names.
_LAZY = {
    'Service': 'service', 'ServiceManager': 'service',
    'ServiceError': 'service', 'ServiceUnavailable': 'service',
    'FileLock': 'locks', 'WorkerLock': 'locks', 'RedisLock': 'locks',
    'Job': 'jobs',
    'JobRunner': 'jobs', 'periodic': 'jobs', 'run_once': 'jobs',
    # the names of singleserver 0.4, for code migrating from it
    'SingleServer': 'singleserver', 'ServerClient': 'singleserver',
    'ServerNotReady': 'singleserver', 'SocketLock': 'singleserver',
    'LockFile': 'singleserver',
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(f'.{module}', __name__), name)
    globals()[name] = value
    return value
