"""Honest baseline: the same training as every attack, and nothing hidden."""

import sys
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from trainlib import load_train, save, state_numpy, train  # noqa: E402

PARAMS: dict = {}  # replaced by make_package


def main() -> None:
    x, y = load_train()
    save(state_numpy(train(x, y, PARAMS)))


if __name__ == "__main__":
    main()
