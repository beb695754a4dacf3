"""scale_weight_norms: kohya's max-norm regularisation (networks/lora.py
apply_max_norm_regularization), on whatever peft LoRA layers the run's modules hold.

After each optimizer step, per LoRA module: the norm of its weight delta, (up @ down) * alpha/rank
(Frobenius, over a conv's kernel too), is clamped to ``max_norm``; a module above it has up and
down each scaled by sqrt(max_norm / norm). kohya reports how many modules it scaled, and the mean
and maximum of the (scaled) norms: "Keys Scaled" / "Average key norm" in its progress bar,
max_norm/keys_scaled, max_norm/max_key_norm, norm/avg_key_norm in its logs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import TrainerError
from .network import ADAPTER


@dataclass
class NormReport:
    keys_scaled: int
    mean_norm: float
    max_norm: float

    def logs(self) -> dict:
        """kohya's tracker names (train_network.py generate_step_logs)."""
        return {"max_norm/keys_scaled": self.keys_scaled, "max_norm/max_key_norm": self.max_norm,
                "norm/avg_key_norm": self.mean_norm}


def lora_pairs(modules, adapter: str = ADAPTER) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """(down, up, scale) of every peft LoRA layer of ``adapter`` in ``modules``: lora_A is kohya's
    lora_down, lora_B its lora_up, scaling[adapter] its alpha / rank."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    pairs = []
    for module in modules:
        for layer in module.modules():
            if not isinstance(layer, BaseTunerLayer):
                continue
            down, up = getattr(layer, "lora_A", {}), getattr(layer, "lora_B", {})
            if adapter in down and adapter in up:
                pairs.append((down[adapter].weight, up[adapter].weight, float(layer.scaling[adapter])))
    return pairs


def delta_norm(down: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
    """||scale * up @ down||_F, for Linear [r, in] / [out, r] and conv [r, in, kh, kw] / [out, r, 1, 1]
    alike (the Frobenius norm ignores how the delta is shaped). Through the r x r Gram matrices,
    ||U D||^2 = sum((U^T U) * (D D^T)): the same value without building the out x in delta."""
    u = up.detach().reshape(up.shape[0], -1).float()
    d = down.detach().reshape(down.shape[0], -1).float()
    squared = ((u.T @ u) * (d @ d.T)).sum().clamp(min=0)
    return squared.sqrt() * abs(scale)


@torch.no_grad()
def apply_max_norm(pairs, max_norm: float) -> NormReport | None:
    """Scale each pair whose delta norm is above ``max_norm`` back to it; None without pairs."""
    if not pairs:
        return None
    norms = torch.stack([delta_norm(down, up, scale).to(pairs[0][0].device) for down, up, scale in pairs])
    # kohya: ratio = clamp(norm, max) / norm, i.e. 1 at or below max_norm
    ratio = torch.where(norms > max_norm, max_norm / norms.clamp(min=1e-12), torch.ones_like(norms))
    scaled = (ratio != 1).nonzero().flatten().tolist()
    root = ratio.sqrt()
    for i in scaled:
        down, up, _ = pairs[i]
        down.mul_(root[i].to(down.dtype))
        up.mul_(root[i].to(up.dtype))
    after = (norms * ratio).tolist()
    return NormReport(len(scaled), sum(after) / len(after), max(after))


class MaxNorm:
    """The run's max-norm step: finds the LoRA layers once, applies after every optimizer step."""

    def __init__(self, modules, max_norm: float, adapter: str = ADAPTER):
        self.max_norm = float(max_norm)
        self.pairs = lora_pairs(modules, adapter)

    def __call__(self) -> NormReport | None:
        return apply_max_norm(self.pairs, self.max_norm)


class LycorisMaxNorm:
    """LyCORIS's own max-norm (each module's ``apply_max_norm``, what kohya calls through the
    network's apply_max_norm_regularization): its norm of each algorithm's delta weight."""

    def __init__(self, modules, max_norm: float, device):
        from .lycoris_modules import adapters

        self.max_norm, self.device = float(max_norm), device
        self.pairs = [m for root in modules for m in adapters(root).get(ADAPTER, {}).values()]

    @torch.no_grad()
    def __call__(self) -> NormReport | None:
        if not self.pairs:
            return None
        scaled, norms = 0, []
        for module in self.pairs:
            hit, norm = module.apply_max_norm(self.max_norm, self.device)
            if hit is not None:
                scaled += int(hit)
                norms.append(float(norm))
        if not scaled:  # LyCORIS reports zeros when nothing was scaled
            return NormReport(0, 0.0, 0.0)
        return NormReport(scaled, sum(norms) / len(norms), max(norms))


def max_norm_for(run) -> MaxNorm | LycorisMaxNorm | None:
    """The MaxNorm of a RunSetup (config.scale_weight_norms, the UNet and the trained text
    encoders), or None when the option is off or the network has no LoRA layers (kohya warns
    and turns the option off for networks without apply_max_norm_regularization)."""
    value = run.config.scale_weight_norms
    if not value:
        return None
    if value < 0:  # kohya takes the square root of a negative ratio: NaN weights
        raise TrainerError(f"scale_weight_norms must be positive (got {value}); 1 is kohya's suggested start.")
    modules = [run.model.unet] + [getattr(run.model.pipe, name) for name in run.network.text_encoders]
    if run.config.network_module == "lycoris.kohya":
        regularizer = LycorisMaxNorm(modules, value, run.device)
    else:
        regularizer = MaxNorm(modules, value)
    if not regularizer.pairs:
        run.cb.log(f"warning: scale_weight_norms is set but {run.config.network_module} has no LoRA "
                   "up/down pairs to scale: the option does nothing in this run")
        return None
    return regularizer
