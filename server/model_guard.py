"""The last check before a round's model is committed: did validation collapse?

The norm bound limits how far one round can move the model; this guard catches what moves it
the wrong way within that bound. A round whose new model scores more than `max_drop` below the
best validation accuracy of the last `window` committed models, or whose validation loss is not
finite, is refused: recorded as aborted with the reason, and the previous model is kept.

Ordinary training dips too (on digits early rounds fall by up to 9 points and recover), so the
default margin, 0.2, is a collapse detector, not a quality bar. The window restarts when the
model is replaced on purpose (a `retrain` rollback starts again from an early checkpoint).
Without an evaluator (a task without a validation set) the guard cannot see anything and admits
every model; the norm bound is then the only defence.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from forsaken.common.errors import ConfigError
from forsaken.server.rounds import EvalResult

DEFAULT_WINDOW = 5


@dataclass(frozen=True, slots=True)
class GuardSettings:
    max_drop: float = 0.2  # 0 turns the accuracy check off
    window: int = DEFAULT_WINDOW

    def validate(self) -> None:
        if not 0.0 <= self.max_drop <= 1.0:
            raise ConfigError(f"max accuracy drop must be in [0, 1], got {self.max_drop}")
        if self.window < 1:
            raise ConfigError("the guard's window must be at least 1 round")


class RegressionGuard:
    def __init__(self, settings: GuardSettings, history: Iterable[float] = ()) -> None:
        settings.validate()
        self.settings = settings
        self._recent: deque[float] = deque(history, maxlen=settings.window)

    def refusal(self, evaluation: EvalResult | None, *, evaluated: bool) -> str | None:
        """Why the model that scored `evaluation` must not be committed, or None.

        `evaluated` says an evaluator ran; then a missing result means non-finite scores.
        """
        if not evaluated:
            return None
        if evaluation is None or not math.isfinite(evaluation.loss):
            return "refused: the new model's validation loss is not finite"
        if not self.settings.max_drop or not self._recent:
            return None
        best = max(self._recent)
        if evaluation.accuracy < best - self.settings.max_drop:
            return (
                f"refused: validation accuracy would fall to {evaluation.accuracy:.4f} from "
                f"{best:.4f} (the best of the last {len(self._recent)} models), more than the "
                f"allowed drop of {self.settings.max_drop:g}; the previous model is kept"
            )
        return None

    def committed(self, evaluation: EvalResult | None) -> None:
        if evaluation is not None:
            self._recent.append(evaluation.accuracy)

    def restart(self, evaluation: EvalResult | None) -> None:
        """The model was replaced on purpose: compare with it from now on."""
        self._recent.clear()
        self.committed(evaluation)
