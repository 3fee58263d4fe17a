"""The egress gate: what may leave a training container, and in which form.

`gate_output` checks a container's output directory and writes its one model file
back out canonically; `parse_header` is the defensive safetensors header parser it
is built on. Every rejection is a `GateViolation` whose message names the fix.
"""

from sandbox.gate.egress import MODEL_FILENAME, GateResult, TensorSpec, gate_output
from sandbox.gate.safetensors_header import DTYPE_SIZES, Header, TensorEntry, parse_header
from sandbox.gate.violation import GateViolation

__all__ = [
    "DTYPE_SIZES",
    "MODEL_FILENAME",
    "GateResult",
    "GateViolation",
    "Header",
    "TensorEntry",
    "TensorSpec",
    "gate_output",
    "parse_header",
]
