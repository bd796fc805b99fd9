"""Model structure: the list of tensors a model exchanges, its digest, and the agreement check.

Both sides of a federation build their model from their own installed code (a task), so before
a node takes part the server compares the node's tensor list (names, shapes, dtypes, in
state_dict order) with its own and refuses a mismatch, naming the first tensor that differs.
The digest is a SHA-256 over a canonical text of that list: equal digests, equal structures.

Also here: `make_exchangeable`, which puts a freshly built model into the form the federation
exchanges (float32 state; integer buffers such as BatchNorm's `num_batches_tracked` kept local)
or refuses it with a message that says what to change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from forsaken.common.errors import ConfigError, ModelMismatch
from forsaken.common.tensors import TensorSpec

_DIGEST_LABEL = b"forsaken/model-structure/v1\n"


def structure_of(model: nn.Module) -> tuple[TensorSpec, ...]:
    """The model's exchanged tensors with their real dtypes, in state_dict (wire) order."""
    return tuple(
        TensorSpec(name, tuple(int(d) for d in t.shape), str(t.dtype).removeprefix("torch."))
        for name, t in model.state_dict().items()
    )


def parameter_entries(model: nn.Module) -> np.ndarray:
    """(numel of the state vector,) bool: which entries of the flat state are parameters (the
    rest are float buffers such as BatchNorm statistics)."""
    names = {name for name, _ in model.named_parameters()}
    return np.concatenate(
        [np.full(t.numel(), name in names) for name, t in model.state_dict().items()]
        or [np.zeros(0, dtype=bool)]
    )


def structure_digest(structure: Sequence[TensorSpec]) -> bytes:
    """SHA-256 of the canonical text of a tensor list: one `name shape dtype` line each."""
    h = hashlib.sha256(_DIGEST_LABEL)
    for spec in structure:
        shape = "x".join(str(d) for d in spec.shape)
        h.update(f"{spec.name}\0{shape}\0{spec.dtype}\n".encode())
    return h.digest()


def describe(spec: TensorSpec) -> str:
    return f"{tuple(spec.shape)} {spec.dtype}"


def first_difference(
    ours: Sequence[TensorSpec], theirs: Sequence[TensorSpec], us: str, them: str
) -> str | None:
    """A sentence naming the first tensor in which two lists differ, or None if they agree."""
    for index, (mine, other) in enumerate(zip(ours, theirs, strict=False)):
        if mine.name != other.name:
            return (
                f"tensor #{index} is {mine.name!r} {describe(mine)} on {us} but "
                f"{other.name!r} {describe(other)} on {them}"
            )
        if mine != other:
            return (
                f"tensor {mine.name!r} is {describe(mine)} on {us} but {describe(other)} on {them}"
            )
    if len(ours) > len(theirs):
        extra = ours[len(theirs)]
        return f"tensor {extra.name!r} {describe(extra)} exists on {us} but not on {them}"
    if len(theirs) > len(ours):
        extra = theirs[len(ours)]
        return f"tensor {extra.name!r} {describe(extra)} exists on {them} but not on {us}"
    return None


def check_agreement(
    federation: Sequence[TensorSpec], node: Sequence[TensorSpec], node_digest: bytes
) -> None:
    """Refuse (ModelMismatch) a node whose model is not the federation's.

    A node that sends neither list nor digest (an older client) is not checked here; the model
    download still refuses a payload whose layout differs from the node's model.
    """
    if not node and not node_digest:
        return
    if node:
        problem = first_difference(federation, node, "the server", "this node")
        if problem is not None:
            raise ModelMismatch(f"this node's model is not the federation's: {problem}")
    if node_digest and node_digest != structure_digest(federation):
        raise ModelMismatch(
            "this node's model is not the federation's: its structure digest "
            f"{node_digest.hex()[:16]} differs from the server's "
            f"{structure_digest(federation).hex()[:16]}"
        )


def make_exchangeable(model: nn.Module) -> nn.Module:
    """Check a freshly built model can be federated and keep its integer buffers local.

    What a federation exchanges is the model's state_dict as one float32 vector. Parameters and
    floating-point buffers (BatchNorm's running mean and variance) are part of it, so they are
    aggregated securely like everything else. Integer buffers are counters (BatchNorm's
    `num_batches_tracked`): averaging a count means nothing and its size would swamp the update
    norm, so each is re-registered as a non-persistent buffer, which keeps it out of the
    state_dict and on the node. Refused, with what to change: non-float32 floating-point tensors
    (a float64 model would be silently rounded), and BatchNorm with momentum=None (its cumulative
    average reads the counter that stays local).
    """
    for module_name, module in model.named_modules():
        where = module_name or "the model"
        if isinstance(module, nn.modules.batchnorm._NormBase) and (
            module.track_running_stats and module.momentum is None
        ):
            raise ConfigError(
                f"{where} is a {type(module).__name__} with momentum=None: its cumulative "
                "average depends on a batch counter that is not aggregated; give it a momentum "
                "(the default 0.1)"
            )
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer is None or name in module._non_persistent_buffers_set:
                continue
            if not buffer.is_floating_point():
                del module._buffers[name]
                module.register_buffer(name, buffer, persistent=False)
    for name, tensor in model.state_dict().items():
        if tensor.dtype != torch.float32:
            raise ConfigError(
                f"tensor {name!r} has dtype {str(tensor.dtype).removeprefix('torch.')}; a "
                "federation exchanges float32 models: build it in float32 (e.g. model.float())"
            )
    return model
