"""Takes a FileLock (argv[1]), says "held <pid>", then holds it until
killed or until its stdin closes."""

import os
import sys
import time

from uhttp.workers.locks import FileLock

lock = FileLock(sys.argv[1])
while not lock.acquire():
    time.sleep(0.05)
print(f'held {os.getpid()}', flush=True)
sys.stdin.read()
lock.release()
