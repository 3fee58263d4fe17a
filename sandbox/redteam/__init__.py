"""Red team: the white-box attacks of Song et al. (CCS 2017) as algorithm packages.

`make_package` writes an attack's package (model.py + train.py from the templates
in `packages/`), `decode` rebuilds records from released weights with only the
attacker's knowledge, and `metrics.score` says how much got out. `capacity` is
the black-box attack: its decoder only queries the released model.
"""

from sandbox.redteam.attacks import ATTACKS, Attack, Decoded, Knowledge, decode, make_package
from sandbox.redteam.capacity import decode_capacity, make_capacity_package
from sandbox.redteam.metrics import Extraction, bit_accuracy, record_mae, score

__all__ = [
    "ATTACKS",
    "Attack",
    "Decoded",
    "Extraction",
    "Knowledge",
    "bit_accuracy",
    "decode",
    "decode_capacity",
    "make_capacity_package",
    "make_package",
    "record_mae",
    "score",
]
