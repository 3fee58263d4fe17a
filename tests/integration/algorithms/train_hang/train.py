"""train.py never finishes: it ignores SIGTERM and sleeps forever."""

import signal
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("hanging", flush=True)
while True:
    time.sleep(1)
