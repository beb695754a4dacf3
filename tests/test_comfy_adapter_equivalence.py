"""Issue 16 item 3: for every algorithm, the weight change ComfyUI's adapter arithmetic computes from
our saved file (fp32) is the change our trained model applies, module by module, on the tiny SD1.5,
SDXL and Kolors; and every module of the file maps to a ComfyUI key (nothing "not loaded").
ComfyUI's arithmetic is comfy_adapter_math (our own code, from comfy/weight_adapter's formulas);
bench/comfy_adapter_parity.py runs the same against a real ComfyUI checkout."""

import pytest
import torch
from safetensors.torch import load_file

import comfy_adapter_math as cm
from adapter_parity import TEXT_ENCODERS, measure, train_variant
from test_lora_comfy_keys import comfy_clip_names, comfy_unet_names

TOLERANCE = 1e-3  # issue 16: max relative error of the delta
ALGOS = ["LoRA", "LoCon", "LyCORIS-LoCon", "LoHa", "LoKr", "LoKr-f4-both", "LoKr-f16-both", "LoKr-full", "DoRA", "OFT"]
# every variant on SD1.5; on SDXL (two text encoders, SGM names) and Kolors one of each file layout
# (bench/comfy_adapter_parity.py runs them all against a real ComfyUI)
CASES = ([("sd15", a) for a in ALGOS] + [("sdxl", a) for a in ("LoRA", "LoCon", "LoHa", "LoKr-f16-both", "DoRA", "OFT")]
         + [("kolors", a) for a in ("LoKr", "DoRA")])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from trainer.demo import paint_dataset

    return paint_dataset(tmp_path_factory.mktemp("parity") / "data")


def trained(tiny_models, data, tmp_path, family, label):
    result, path = train_variant(tiny_models(family), data, tmp_path, family, label)
    return result, load_file(str(path))


def comfy_not_loaded(model, family, tensors) -> list[str]:
    """The file's keys ComfyUI's LoraLoader would log as "lora key not loaded" on this model."""
    layers = {"clip_g" if c == "text_encoder_2" else "clip_l": getattr(model.pipe, c).config.num_hidden_layers
              for c in TEXT_ENCODERS[family]}
    mapped = comfy_unet_names(model.unet) | comfy_clip_names(layers)
    used = set().union(*(cm.loaded_keys(tensors, m) for m in cm.module_names(tensors) if m in mapped))
    return sorted(set(tensors) - used)


def suffixes(tensors):
    return {k.split(".", 1)[1] for k in tensors}


# what each label's file must hold, so a variant cannot silently train another algorithm
def check_layout(label, tensors):
    keys = suffixes(tensors)
    if label in ("LoRA", "LoCon", "LyCORIS-LoCon"):
        assert keys == {"lora_up.weight", "lora_down.weight", "alpha"}
        convs = [v for k, v in tensors.items() if k.endswith("lora_down.weight") and v.ndim == 4 and v.shape[-1] == 3]
        assert bool(convs) == (label != "LoRA")
    elif label == "LoHa":
        assert keys == {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}
    elif label == "LoKr":
        assert {"lokr_w1", "lokr_w2"} <= keys and "lokr_w1_a" not in keys
    elif label == "LoKr-f4-both":  # w1 is at most 4x4: LyCORIS keeps it whole at dim 4, w2 is factorised
        assert {"lokr_w1", "lokr_w2_a", "lokr_w2_b"} <= keys and "lokr_w1_a" not in keys
    elif label == "LoKr-f16-both":
        assert {"lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b"} <= keys
    elif label == "LoKr-full":
        assert keys == {"lokr_w1", "lokr_w2", "alpha"}
    elif label.startswith("DoRA"):
        scales = {k[:-len(".dora_scale")]: v for k, v in tensors.items() if k.endswith(".dora_scale")}
        assert scales and len(scales) == len(cm.module_names(tensors))
        axis = 0 if label == "DoRA-output-axis" else 1  # which dimension of the weight has one scale each
        assert all(s.shape[1 - axis] == 1 for s in scales.values())
        assert any(s.shape[axis] != 1 for s in scales.values())
    elif label == "OFT":
        assert keys == {"oft_blocks", "alpha"}
        assert all(v.ndim == 3 for k, v in tensors.items() if k.endswith("oft_blocks"))


@pytest.mark.parametrize("family,label", CASES)
def test_comfyui_applies_the_delta_our_model_trained(tiny_models, data, tmp_path, family, label):
    result, tensors = trained(tiny_models, data, tmp_path, family, label)
    check_layout(label, tensors)
    assert comfy_not_loaded(result.model, family, tensors) == []
    names = cm.module_names(tensors)
    rows = measure(result.model, family, names, lambda name, w: (w, cm.patched_weight(tensors, name, w)))
    assert len(rows) == len(names)
    # training moved the adapter: nearly every module changes its output by > 0.1 % (SDXL's CLIP-L last
    # layer gets no gradient; LyCORIS's OFT on a 4-channel conv_out has 1x1 blocks, which cannot rotate)
    moved = [r for r in rows if r.delta > 1e-3]
    assert len(moved) >= 0.9 * len(rows), f"only {len(moved)} of {len(rows)} modules moved"
    worst = max(rows, key=lambda r: r.error)
    assert worst.error <= TOLERANCE, f"{label} {family}: {worst.name} differs by {worst.error:.2e} of its delta"


@pytest.mark.parametrize("family", ["sd15", "kolors"])
def test_lycoris_output_axis_dora_differs_in_comfyui_by_the_norm_it_takes(tiny_models, data, tmp_path, family):
    """LyCORIS's default DoRA (wd_on_output=True) normalises by the trained weight; ComfyUI a125cd84
    divides by the original weight's norm (open PR #15458). If either side changes, this says so."""
    result, tensors = trained(tiny_models, data, tmp_path, family, "DoRA-output-axis")
    check_layout("DoRA-output-axis", tensors)
    assert comfy_not_loaded(result.model, family, tensors) == []
    names = cm.module_names(tensors)
    comfy = measure(result.model, family, names, lambda name, w: (w, cm.patched_weight(tensors, name, w)))
    assert max(r.error for r in comfy) > 1e-2
    fixed = measure(result.model, family, names,
                    lambda name, w: (w, cm.patched_weight(tensors, name, w, dora_norm_of_patched=True)))
    assert max(r.error for r in fixed) <= TOLERANCE  # the norm is the whole difference


def test_reference_rules_comfyui_states():
    """The rules the reference takes from ComfyUI that training alone does not reach: LoKr ignores
    alpha when nothing is factorised, OFT clamps Q's norm at its alpha, no alpha means scale 1."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 6, generator=gen)
    w1, w2 = torch.randn(2, 2, generator=gen), torch.randn(4, 3, generator=gen)
    full = {"m.lokr_w1": w1, "m.lokr_w2": w2, "m.alpha": torch.tensor(123.0)}
    torch.testing.assert_close(cm.patched_weight(full, "m", w), w + torch.kron(w1, w2))
    a, b = torch.randn(4, 1, generator=gen), torch.randn(1, 3, generator=gen)
    factored = {"m.lokr_w1": w1, "m.lokr_w2_a": a, "m.lokr_w2_b": b, "m.alpha": torch.tensor(0.5)}
    torch.testing.assert_close(cm.patched_weight(factored, "m", w), w + 0.5 * torch.kron(w1, a @ b))
    up, down = torch.randn(8, 2, generator=gen), torch.randn(2, 6, generator=gen)
    torch.testing.assert_close(cm.patched_weight({"m.lora_up.weight": up, "m.lora_down.weight": down}, "m", w),
                               w + up @ down)
    blocks = torch.randn(2, 4, 4, generator=gen)
    q = blocks - blocks.transpose(1, 2)
    clamped = cm.patched_weight({"m.oft_blocks": blocks, "m.alpha": torch.tensor(1e-3)}, "m", w)
    small = {"m.oft_blocks": blocks * (1e-3 / (q.norm() + 1e-8)), "m.alpha": torch.tensor(0.0)}
    torch.testing.assert_close(clamped, cm.patched_weight(small, "m", w))
    free = cm.patched_weight({"m.oft_blocks": blocks}, "m", w)  # no alpha: no clamp, an orthogonal rotation
    torch.testing.assert_close(free.norm(dim=0), w.norm(dim=0), rtol=1e-5, atol=1e-5)
