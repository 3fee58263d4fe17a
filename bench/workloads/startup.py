"""Start-up probe for bench/fixed_cost.py: when does the first line of user code run?

    python -P startup.py [--torch]

The first statement stamps time.time(); the host compares it with its own stamp
taken just before `runner.start`. With --torch the probe then imports torch and
stamps again, so the interpreter start and the torch import are measured apart.
Prints `BENCH first_line <t>`, optionally `BENCH imported <t>`, then `BENCH end <t>`.
"""

import time

FIRST_LINE = time.time()  # first statement
print(f"BENCH first_line {FIRST_LINE:.6f}", flush=True)

import sys  # noqa: E402

if "--torch" in sys.argv[1:]:
    import torch  # noqa: F401

    print(f"BENCH imported {time.time():.6f}", flush=True)
print(f"BENCH end {time.time():.6f}", flush=True)
