"""The verdict line of a forget receipt: what was forgotten, by which method, what the measured
evidence shows and what it cannot show.

The verdict is derived from the receipt's own numbers only, so anyone holding the receipt can
recompute it. It never says "forgotten": the evidence a node can gather on its own (population
attacks against its held-out slice, a paired confidence test) cannot see per-example
memorisation, which only a comparison with retrained models measures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# What no node-side measurement can show, said on every node-verified receipt.
CANNOT_SHOW = (
    "It cannot show that no per-example memorisation remains: that needs a comparison with "
    "models retrained without the data (`forsaken evaluate`)."
)


def _number(evidence: Mapping[str, object], key: str) -> float | None:
    value = evidence.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(float(value)) else float(value)


def _what(receipt: Mapping[str, object]) -> str:
    samples = receipt.get("samples")
    node = receipt.get("node_id", "?")
    data = "all the data" if samples == "all" else f"{samples} samples"
    rounds = receipt.get("unlearning_rounds")
    recovery = receipt.get("recovery_rounds")
    how = f"by {receipt.get('method', '?')}"
    if isinstance(rounds, int) and isinstance(recovery, int):
        how += f" in {rounds} unlearning and {recovery} recovery rounds"
    return f"Node {node} asked to forget {data} it contributed; the federation unlearned it {how}."


def _population(evidence: Mapping[str, object]) -> str:
    resolution = _number(evidence, "auc_resolution")
    parts = []
    for key, name in (("mia_auc", "loss"), ("conf_auc", "confidence")):
        auc = _number(evidence, key)
        if auc is not None:
            parts.append((name, auc))
    if not parts:
        return "No membership attack was measured."
    shown = " and ".join(f"{name} AUC {auc:.3f}" for name, auc in parts)
    if resolution is None:
        return f"Membership attacks against unseen data: {shown}."
    above = [name for name, auc in parts if auc - 0.5 > resolution]
    below = [name for name, auc in parts if 0.5 - auc > resolution]
    if above:
        return (
            f"Membership attacks still tell the forgotten samples from unseen ones ({shown}; "
            f"the {' and '.join(above)} attack above 0.5 by more than the resolution "
            f"{resolution:.3f}: they look like members): either some of the data's influence "
            "remains or the data differs from the node's held-out slice."
        )
    if below:
        return (
            f"The forgotten samples look less like members than unseen data does ({shown}; "
            f"the {' and '.join(below)} attack below 0.5 by more than the resolution "
            f"{resolution:.3f}): the model now treats them unlike data it never saw, which an "
            "attacker can notice too, unless the data differs from the node's held-out slice "
            "(relabelled samples score below 0.5 even on a retrained model)."
        )
    return (
        f"Loss and confidence attacks cannot tell the forgotten samples from unseen ones "
        f"({shown}, within 0.5 +/- {resolution:.3f}, what these sample sizes can resolve)."
    )


def _paired(evidence: Mapping[str, object]) -> str:
    drop = _number(evidence, "excess_confidence_drop")
    half = _number(evidence, "excess_confidence_drop_ci95")
    if drop is None:
        return ""
    if half is not None and drop - half > 0:
        return (
            f" Their confidence fell by {drop:.3f} more than unseen samples' did "
            f"(+/- {half:.3f}, 95%): the request removed something only they had given."
        )
    spread = f" (+/- {half:.3f})" if half is not None else ""
    return (
        f" Their confidence fell no more than unseen samples' did ({drop:+.3f}{spread}): "
        "no sign of removed memorisation, though little may have been there."
    )


def verdict(receipt: Mapping[str, object]) -> str:
    """One paragraph of plain words, computed from the receipt's fields."""
    what = _what(receipt)
    evidence = receipt.get("evidence")
    evidence = evidence if isinstance(evidence, Mapping) else {}
    if receipt.get("verified_by") == "server":
        shows = str(receipt.get("reference", ""))
        acc = _number(evidence, "validation_acc")
        tail = f" Validation accuracy after: {acc:.3f}." if acc is not None else ""
        return f"{what} The server verified it, without the node: {shows}.{tail}"
    return f"{what} {_population(evidence)}{_paired(evidence)} {CANNOT_SHOW}"
