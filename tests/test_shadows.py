"""Shadow federations keep each forgetting node's contribution record, and U-LiRA unlearns a
shadow with its own record, as a real node unlearns with its own."""

from __future__ import annotations

import numpy as np

from forsaken.common.unlearning.rounds import InProcessFederation
from forsaken.common.unlearning.shadows import train_shadows, unlearned_shadows
from forsaken.lab.reference import ProtocolConfig, federation


def test_each_shadow_is_unlearned_with_its_own_nodes_record() -> None:
    cfg = ProtocolConfig(dataset="digits", test_bed="clean", rounds=1, clients=3, local_epochs=1)
    fed = federation(cfg, 0)
    shadows = train_shadows(fed, rounds=1, shadows=2)
    assert shadows.contributions is not None
    assert shadows.contributions.shape == shadows.vectors.shape
    assert not np.array_equal(shadows.contributions[0], shadows.contributions[1])
    seen: list[np.ndarray | None] = []

    def unlearn(shadow: InProcessFederation, vector: np.ndarray) -> np.ndarray:
        seen.append(shadow.forgetter_contribution)
        return vector

    unlearned_shadows(fed, shadows, unlearn)
    for k, record in enumerate(seen):
        assert record is not None
        np.testing.assert_array_equal(record, shadows.contributions[k])
    # Re-scored from a cache: the records travel with the vectors.
    again = train_shadows(fed, 1, 2, vectors=shadows.vectors, contributions=shadows.contributions)
    assert again.contributions is shadows.contributions
