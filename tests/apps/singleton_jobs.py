"""Jobs for tests/test_singleton.py, importable by spawned runner processes.

Each run appends a line to a file named by the environment (read at run
time): tick -> RUNS_FILE ("<pid> <time>"), migrate and migrate_for_good ->
MIGRATIONS_FILE ("<name> <pid>").
"""

import os
import time

from uhttp.workers.jobs import periodic, run_once

TICK_INTERVAL = 0.2


def append(variable, line):
    with open(os.environ[variable], 'a', encoding='ascii') as handle:
        handle.write(line + '\n')


@periodic(TICK_INTERVAL)
def tick():
    append('RUNS_FILE', f'{os.getpid()} {time.time():.6f}')


@run_once()
def migrate(context):
    append('MIGRATIONS_FILE', f'{context.name} {os.getpid()}')


@run_once(once_ever=True)
def migrate_for_good(context):
    append('MIGRATIONS_FILE', f'{context.name} {os.getpid()}')


JOBS = {job.name: job for job in (tick, migrate, migrate_for_good)}
