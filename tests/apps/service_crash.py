"""A service that cannot start: prints to stdout and stderr, exits 3."""

import os
import sys

print(f'crasher {os.getpid()} starting', flush=True)
print('crasher: fatal: no configuration', file=sys.stderr, flush=True)
sys.exit(3)
