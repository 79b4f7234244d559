"""A dedicated job process for tests/test_singleton.py.

argv: file PATH | redis URL KEY TTL. Runs the jobs of singleton_jobs.py
named in JOBS (comma separated; default: tick) with poll_interval 0.1.
"""

import os
import sys

from singleton_jobs import JOBS
from uhttp.workers.jobs import run_job_runner


def main():
    kind, *args = sys.argv[1:]
    spec = ('file', args[0]) if kind == 'file' else \
        ('redis', args[0], args[1], float(args[2]))
    jobs = [JOBS[name] for name in os.environ.get('JOBS', 'tick').split(',')]
    print(f'runner {os.getpid()} up', flush=True)
    sys.exit(run_job_runner(jobs, spec, poll_interval=0.1))


if __name__ == '__main__':
    main()
