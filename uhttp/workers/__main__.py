"""`python -m uhttp.workers [OPTIONS] module:name`: the command line.

Only the entry point: cli.py does the work. The guard matters: a worker
started with 'spawn' imports this module again and must not run it.
"""

import sys

from .cli import main

if __name__ == '__main__':
    sys.exit(main())
