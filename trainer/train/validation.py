"""Validation loss per epoch and seed 000's over-/under-fitting signal (§3.1)."""

from __future__ import annotations

REMEDIES = ("lower the learning rate", "train fewer epochs", "lower network_dim", "use fewer repeats",
            "add more (and more varied) images")


def overfitting_warning(train_losses: list[float], validation: list[tuple[int, float]]) -> str | None:
    """A warning when validation loss rose for the last two epochs while training loss fell."""
    if len(validation) < 3 or len(train_losses) < 4:
        return None
    v = [loss for _, loss in validation[-3:]]
    half = len(train_losses) // 2
    train_first, train_last = (sum(train_losses[:half]) / half,
                               sum(train_losses[half:]) / (len(train_losses) - half))
    if v[0] < v[1] < v[2] and train_last < train_first:
        return (f"validation loss rose for 2 epochs ({v[0]:.4f} -> {v[2]:.4f}) while training loss fell: "
                "the LoRA is over-fitting. Seed 000's remedies: " + ", ".join(REMEDIES) + ".")
    return None
