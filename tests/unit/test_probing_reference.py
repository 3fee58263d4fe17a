"""Capacity abuse on digits against the platform's reference models (probes.reference).

The red team's own attack (sandbox.redteam.capacity at its default strength: 20
records' pixel bits as labels of seeded-PRNG inputs) is invisible to every
reference-free probe statistic on digits (README, "Canary-query probing"). Here the
pipeline's probe step runs with `reference=True` through the process runner: the
query guest trains two references of the same graph and the candidate's
`divergence` from them must flag the attacked model and pass its honest twin
(see the README's probing table for the measured scores).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.corpus import load_data
from bench.probing import red_team_mlp, run_probe_step
from sandbox.redteam.capacity import train_capacity_model


@pytest.mark.parametrize("attack", [False, True], ids=["honest-twin", "capacity-abuse"])
def test_divergence_from_the_references_flags_capacity_abuse_on_digits(
    tmp_path: Path, attack: bool
) -> None:
    data = load_data("digits")
    tensors, knowledge = train_capacity_model(
        data.x_train, data.y_train, dataset="digits", attack=attack, seed=0, synth_seed=20170
    )
    module = red_team_mlp(tensors, float(knowledge.params["input_scale"]))
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in tensors.items()})
    # the package declares its own recipe in algorithm.toml; the references follow it
    declared = {k: knowledge.params[k] for k in ("epochs", "batch_size", "lr")}
    outcomes, report = run_probe_step(
        module.eval(), "digits", tmp_path, seed=21, declared=declared, reference=True
    )
    verdicts = {o.name: o.verdict for o in outcomes}
    assert set(verdicts) == {"probe_sensitivity", "probe_divergence"}  # WITH_REFERENCE
    assert verdicts["probe_divergence"] == ("flag" if attack else "pass"), report.probes["checks"]
    accuracies = report.probes["reference_holdout_accuracy"]
    assert len(accuracies) == 2 and all(0.9 <= a <= 1.0 for a in accuracies)  # they learned
    for family in report.probes["families"]:
        assert {"agreement", "divergence"} <= set(family["statistics"])
