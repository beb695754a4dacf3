"""LoRA Train warns (and still trains) when its GPU memory estimate exceeds the free memory."""

from graph_runner import run_graph
from test_nodes import comfy_dirs, graph  # noqa: F401, F811 - the fixture is used by name


def train_only(**widgets) -> dict:
    return {k: v for k, v in graph(**widgets).items() if k in ("1", "2", "3", "4")}


def test_lora_train_warns_when_the_estimate_exceeds_free_vram(pack, comfy_dirs, monkeypatch, capsys):
    monkeypatch.setenv("LT_FREE_VRAM", "1000")  # a 1000-byte GPU
    lora = run_graph(pack, train_only())["4"][0]
    assert lora.metadata["ss_steps"] == "10"  # an estimate never stops the run
    warning = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: estimated"))
    assert "> 0 MB free GPU memory" in warning and "gradient_checkpointing = true" in warning
    assert "training may run out of GPU memory" in warning


def test_the_warning_names_the_change_that_fits(pack, comfy_dirs, monkeypatch):
    """With free memory between the estimates with and without gradient checkpointing, the
    warning says that checkpointing alone fits; with plenty free, or no GPU figure, it says nothing."""
    from trainer.config import TrainConfig
    from trainer.models.loader import load_model
    from trainer.train.vram import estimate_vram

    model = load_model(comfy_dirs / "models" / "diffusers" / "TinyKolors", "kolors", "fp32")
    config = TrainConfig(resolution="64", train_batch_size=4, network_dim=4, conv_dim=4, mixed_precision="no")
    full = estimate_vram(config, "kolors", model, include_context=False).total
    checkpointed = TrainConfig(**{**config.to_dict(), "gradient_checkpointing": True})
    fit = estimate_vram(checkpointed, "kolors", model, include_context=False).total
    assert fit < full
    warn = pack.nodes.train.vram_warning
    assert pack.nodes.comfy_env.free_vram() is None and warn(config, model) is None  # no ComfyUI, no GPU
    free = (fit + full) // 2
    monkeypatch.setenv("LT_FREE_VRAM", str(free))
    mb = 2**20
    assert warn(config, model) == (f"estimated {full / mb:.0f} MB (training) > {free / mb:.0f} MB free GPU memory: "
                                   f"set gradient_checkpointing = true to fit (est. {fit / mb:.0f} MB)")
    monkeypatch.setenv("LT_FREE_VRAM", str(2**40))
    assert warn(config, model) is None
