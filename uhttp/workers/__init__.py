"""uhttp.workers: multi-process HTTP services on uhttp-server.

One Dispatcher process owns every client socket; pools of Worker processes
run the @api handlers. This module only re-exports the public API.
"""

from .dispatcher import Dispatcher, sync
from .log import (
    LOG_CRITICAL, LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_WARNING, Logger,
    log_to_logging)
from .pool import WorkerPool
from .request import DEFERRED, RejectRequest, Request, Response
from .service import (
    Service, ServiceError, ServiceManager, ServiceUnavailable)
from .singleton import FileLock, Job, JobRunner, RedisLock, periodic, run_once
from .worker import ApiHandler, Worker, api

__all__ = [
    'Dispatcher', 'Worker', 'WorkerPool', 'ApiHandler', 'Request',
    'Response', 'api', 'sync', 'RejectRequest', 'DEFERRED', 'Logger',
    'log_to_logging', 'Service', 'ServiceManager', 'ServiceError',
    'ServiceUnavailable', 'FileLock', 'RedisLock', 'Job', 'JobRunner',
    'periodic', 'run_once',
    'LOG_DEBUG', 'LOG_INFO', 'LOG_WARNING', 'LOG_ERROR', 'LOG_CRITICAL',
]
