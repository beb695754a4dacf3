"""Terminal progress for the CLI: a tqdm bar with the running loss, quiet library loggers."""

from __future__ import annotations

import logging
import os
import warnings

from .train.loop import Callbacks


def quiet_libraries() -> None:
    """Hide download/shard progress bars and advisory warnings of diffusers/transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # bitsandbytes' CPU backend logs a warning about an optional kernel package at import time
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*deprecated.*")


def tqdm_callbacks(log=print) -> tuple[Callbacks, callable]:
    """Callbacks that drive a tqdm bar; returns (callbacks, close)."""
    from tqdm import tqdm

    state: dict = {}

    def on_start(total, dataset):
        state["bar"] = tqdm(total=total, unit="step", dynamic_ncols=True)

    def on_metrics(step, values):
        # kohya's progress-bar names for scale_weight_norms' report
        if "max_norm/keys_scaled" in values:
            state["extra"] = {"Keys Scaled": values["max_norm/keys_scaled"],
                              "Average key norm": f"{values['norm/avg_key_norm']:.4f}"}

    def on_step(step, total, loss):
        bar = state["bar"]
        avg = state["avg"] = 0.9 * state.get("avg", loss) + 0.1 * loss
        bar.set_postfix(loss=f"{loss:.4f}", avg=f"{avg:.4f}", **state.get("extra", {}), refresh=False)
        bar.update(1)

    def close():
        if "bar" in state:
            state["bar"].close()

    return Callbacks(on_start=on_start, on_step=on_step, on_metrics=on_metrics, log=log), close
