"""How many optimizer steps pruning's fine-tuning may take: the trained run's own budget.

A dataset that repeats its items (``conf/data/las.yaml``: ``loop: 1000``) has an epoch of
thousands of batches, and the trained run cut it with ``trainer.limit_train_batches``;
fine-tuning reads the same data, so it cuts its epochs the same way, and in all it takes no
more steps than the trained run did.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple


class FinetuneBudget(NamedTuple):
    steps_per_epoch: int  # the trained run's epoch: its loader cut at limit_train_batches
    trained_steps: int  # the trained run's whole length (max_steps, else max_epochs epochs)

    def steps(self, epochs: int) -> int:
        """Steps planned for ``epochs`` fine-tuning epochs, at most the trained run's."""
        return min(max(int(epochs), 0) * self.steps_per_epoch, self.trained_steps)


def epoch_steps(batches: int, limit: Any) -> int:
    """Lightning's ``limit_train_batches``: an int caps the count, a float is a fraction."""
    if limit is None:
        return batches
    if isinstance(limit, float):
        return max(1, int(batches * limit)) if batches else 0
    return min(batches, int(limit))


def finetune_budget(trainer: Mapping[str, Any], batches: int) -> FinetuneBudget:
    """The budget of a run whose ``trainer`` config (the checkpoint's) trained on a loader of
    ``batches`` batches per full pass."""
    per_epoch = max(epoch_steps(batches, trainer.get("limit_train_batches")), 1)
    max_steps = trainer.get("max_steps")
    if max_steps is not None and int(max_steps) > 0:
        total = int(max_steps)
    else:
        epochs = trainer.get("max_epochs")
        total = per_epoch * int(epochs) if epochs is not None and int(epochs) > 0 else per_epoch
    return FinetuneBudget(per_epoch, max(total, 1))
