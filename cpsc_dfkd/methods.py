"""CPSC-DFKD, its baselines and its ablations as named recipes over the same loop.

A recipe is only a set of config changes (loss weights, generator kind); ``distill.py`` runs all
of them. The recipe is applied on top of the preset, and the user's ``--set`` overrides win.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import UserError

# A baseline's losses are its own: none of CPSC-DFKD's generator-step terms, and no IKD in the student step either
# (student_ikd null follows ikd = 0). The student step's CE weight stays the preset's (loss.student_ce).
_NO_CPSC_TERMS = {"adv": 0.0, "ikd": 0.0, "student_ikd": None, "bn": 0.0, "scl": 0.0, "ce": 0.0, "diversity": 0.0}


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    config_changes: dict[str, Any] = field(default_factory=dict)
    kind: str = "method"  # method | baseline | ablation | reference


RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("cpsc-dfkd", "conditional generator + adversarial KL + IKD + BN statistics + SupCon + pseudo CE"),
    Recipe("cpsc-dfkd-reference",
           "CPSC-DFKD with the reference code's defects: fresh Adam per G step, CE on softmax, "
           "student BN updated in the G step, untrained projection head",
           {"generator": {"reset_optimizer_each_step": True},
            "loss": {"ce_on_softmax": True},
            "distill": {"student_bn_in_g_step": "train", "train_projection_head": False}},
           kind="reference"),
    Recipe("dafl", "DAFL (Chen et al. 2019): unconditional G trained on one-hot, activation and "
           "information-entropy losses; no adversary",
           {"generator": {"conditional": False},
            "loss": {**_NO_CPSC_TERMS, "one_hot": 1.0, "activation": 0.1, "info_entropy": 5.0}},
           kind="baseline"),
    Recipe("dfad", "DFAD (Fang et al. 2019): unconditional G and student play the adversarial game on "
           "the L1 logit distance, nothing else",
           {"generator": {"conditional": False}, "loss": {**_NO_CPSC_TERMS, "adv": 1.0, "distance": "l1"}},
           kind="baseline"),
    Recipe("zskt", "ZSKT-style (Micaelli & Storkey 2019): adversarial KL plus attention transfer in the "
           "student step",
           {"generator": {"conditional": False}, "loss": {**_NO_CPSC_TERMS, "adv": 1.0, "attention": 250.0}},
           kind="baseline"),
    Recipe("deepinversion", "DeepInversion-style generator: BN statistics + CE on the target labels + "
           "total-variation prior, no adversary",
           {"loss": {**_NO_CPSC_TERMS, "bn": 1.0, "ce": 1.0, "tv": 1.0}},
           kind="baseline"),
    Recipe("cpsc-no-conditional", "CPSC-DFKD with an unconditional G (pseudo-labels from the teacher's argmax)",
           {"generator": {"conditional": False}}, kind="ablation"),
    Recipe("cpsc-no-scl", "CPSC-DFKD without the pseudo-supervised contrastive loss", {"loss": {"scl": 0.0}},
           kind="ablation"),
    Recipe("cpsc-no-ce", "CPSC-DFKD without the pseudo cross-entropy", {"loss": {"ce": 0.0}}, kind="ablation"),
    Recipe("cpsc-no-bn", "CPSC-DFKD without the BN-statistics prior", {"loss": {"bn": 0.0}}, kind="ablation"),
    Recipe("cpsc-no-ikd", "CPSC-DFKD without IKD (logit MSE)", {"loss": {"ikd": 0.0, "student_ikd": None}},
           kind="ablation"),
    Recipe("cpsc-from-scratch", "CPSC-DFKD with a randomly initialised student (as in the paper) instead of the "
           "teacher's strongest channels, and so without the channel hint",
           {"student": {"init": "scratch"}, "loss": {"hint": 0.0}}, kind="ablation"),
]}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"unknown method {name!r}; valid methods are: {', '.join(RECIPES)}")
    return RECIPES[name]


def list_methods(kind: str | None = None) -> list[str]:
    return [name for name, recipe in RECIPES.items() if kind is None or recipe.kind == kind]
