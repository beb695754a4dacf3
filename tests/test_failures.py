"""A run that fails inside ComfyUI fails loudly and cleanly: the prompt ends with our one-line
message, the pipeline ComfyUI keeps cached carries no half-trained LoRA, and queueing the graph
again after the fix trains exactly what a fresh start trains."""

import sys

import pytest
import torch

from graph_runner import run_graph
from test_nodes import comfy_dirs, graph  # noqa: F401 (fixture)


def one_line(err: BaseException) -> str:
    message = str(err)
    assert message and "\n" not in message and not message.startswith("Traceback"), message
    return message


def clean(pipeline) -> bool:
    """No network left on the model, and the UNet in eval mode with checkpointing off."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    unet = pipeline.unet
    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer) and m.active_adapters]
    return not getattr(unet, "peft_config", None) and not layers and not unet.training \
        and not unet.is_gradient_checkpointing


def train_graph(**widgets):
    """graph() without its sampler: loader, dataset (2 steps), options, LoRA Train."""
    g = graph(**widgets)
    g["2"]["inputs"]["repeats"] = 2
    del g["5"], g["6"]
    return g


def lora_of(outputs) -> dict:
    return {k: v.clone() for k, v in outputs["4"][0].tensors.items()}


def test_nan_loss_ends_the_prompt_with_one_line_and_a_clean_pipeline(pack, comfy_dirs):  # noqa: F811
    from lt_pack.trainer.errors import TrainerError

    cache = {}
    bad = train_graph()
    bad["3"]["inputs"]["settings"] = "unet_lr = 1e30\n"  # the first step throws the LoRA to infinity
    with pytest.raises(TrainerError) as failed:
        run_graph(pack, bad, cache=cache)
    assert "Loss became" in one_line(failed.value) and "learning rate" in one_line(failed.value)
    pipeline = cache["1"][1][0]  # ComfyUI keeps the loader's output for the next prompt
    assert clean(pipeline)
    fixed = run_graph(pack, train_graph(), cache=cache)  # the fix: a sane learning rate
    assert fixed["1"][0] is pipeline
    fresh = run_graph(pack, train_graph(output_name="fresh"))  # the same run on a freshly loaded model
    again, first = lora_of(fixed), lora_of(fresh)
    assert set(again) == set(first) and all(torch.equal(again[k], first[k]) for k in first)


def test_out_of_memory_says_what_to_change(pack, comfy_dirs, monkeypatch):  # noqa: F811
    from lt_pack.trainer.errors import TrainerError

    loop = sys.modules["lt_pack.trainer.train.loop"]
    real, calls = loop.diffusion_loss, []

    def short_of_memory(*args, **kwargs):  # what a too-small GPU raises mid-step
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 8.00 GiB total)\n"
                                         "See documentation for Memory Management")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "diffusion_loss", short_of_memory)
    cache = {}
    with pytest.raises(TrainerError) as failed:
        run_graph(pack, train_graph(), cache=cache)
    message = one_line(failed.value)
    assert "Tried to allocate 2.00 GiB" in message and "train_batch_size" in message
    assert clean(cache["1"][1][0])
    monkeypatch.setattr(loop, "diffusion_loss", real)
    assert run_graph(pack, train_graph(), cache=cache)["4"][0].tensors


def test_missing_model_and_empty_dataset_fail_with_what_to_do(pack, comfy_dirs):  # noqa: F811
    from lt_pack.trainer.errors import TrainerError

    import shutil

    broken = comfy_dirs / "models" / "diffusers" / "Broken"  # listed, but its UNet config went missing
    shutil.copytree(comfy_dirs / "models" / "diffusers" / "TinyKolors", broken)
    (broken / "unet" / "config.json").unlink()
    missing = train_graph()
    missing["1"]["inputs"]["model"] = "diffusers/Broken"
    with pytest.raises(TrainerError) as failed:
        run_graph(pack, missing)
    assert "config.json" in one_line(failed.value)
    (comfy_dirs / "input" / "empty").mkdir()
    empty = train_graph()
    empty["2"]["inputs"]["folder"] = "empty"
    with pytest.raises(TrainerError) as failed:
        run_graph(pack, empty)
    one_line(failed.value)
