"""Step 2, in a container WITH the training split: run the provider's train.py.

Sets the contract's environment, runs `train.py` as `__main__` from the package
directory, and turns a crash into a one-line reason for the owner's report. The
host's egress gate, not this wrapper, decides what leaves.
"""

import os
import runpy
import sys
import traceback

from sandbox.guest import protocol


def main() -> None:
    script = protocol.ALGORITHM / "train.py"
    if not script.is_file():
        protocol.fail(protocol.EXIT_CONTRACT, "train.py is missing from the algorithm package")
    os.environ["SANDBOX_DATA"] = str(protocol.DATA)
    os.environ["SANDBOX_OUTPUT"] = str(protocol.OUTPUT)
    os.chdir(protocol.ALGORITHM)
    sys.path.insert(0, str(protocol.ALGORITHM))
    sys.argv = [str(script)]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (None, 0):
            protocol.fail(protocol.EXIT_USER_CODE, f"train.py exited with status {stop.code}")
    except BaseException as error:
        traceback.print_exc()
        protocol.fail(
            protocol.EXIT_USER_CODE,
            f"train.py raised {type(error).__name__}: {str(error)[:300]}",
        )
    if not (protocol.OUTPUT / "model.safetensors").exists():
        protocol.fail(
            protocol.EXIT_CONTRACT,
            "train.py finished without writing $SANDBOX_OUTPUT/model.safetensors",
        )


if __name__ == "__main__":
    main()
