"""Encoders paged out of RAM once their outputs are cached (CPU training): same outputs, same
module objects, back transparently for sampling and for generating after training."""

import sys

import pytest
import torch

from trainer.config import TrainConfig
from trainer.models import paging
from trainer.models.loader import load_model
from trainer.train.loop import Callbacks, train

CPU = torch.device("cpu")


def mapped_file(tensor) -> str:
    """The file a tensor's memory is mapped from ('' for anonymous memory), from /proc/self/maps."""
    address = tensor.untyped_storage().data_ptr()
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            low, high = (int(x, 16) for x in fields[0].split("-"))
            if low <= address < high:
                return " ".join(fields[5:])
    return ""


def encoder_outputs(model, pixels):
    with torch.no_grad():
        cond = model.family.encode_text(model.pipe, ["ltdemo, a yellow star"], CPU)
        latents = model.vae.encode(pixels).latent_dist.mean
        decoded = model.vae.decode(latents).sample
    return [cond.context, cond.pooled, latents, decoded]


def same(a, b) -> bool:
    """Equal up to float summation order (matrix kernels may sum differently at another address)."""
    return all((x is None and y is None) or torch.allclose(x, y, rtol=1e-5, atol=1e-6) for x, y in zip(a, b))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_paged_out_encoders_compute_the_same_from_a_file_mapping(tiny_models, tmp_path):
    model = load_model(tiny_models("sdxl"))
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    before = encoder_outputs(model, pixels)
    modules = [model.vae, *model.text_encoders()]
    params = [list(m.parameters()) for m in modules]
    for module in modules:
        path = paging.page_out(module, tmp_path)
        assert path.parent == tmp_path and paging.is_paged(module)
        assert all(str(path) in mapped_file(t) for t in module.state_dict().values())
    assert [list(m.parameters()) for m in modules] == params  # the same Parameter objects
    assert same(encoder_outputs(model, pixels), before)
    for module in modules:
        paging.drop_pages(module)
    assert same(encoder_outputs(model, pixels), before)
    for module in modules:
        paging.forget(module)
    assert not list(tmp_path.glob(".paged-*"))  # files gone, weights still readable
    assert same(encoder_outputs(model, pixels), before)


def test_cpu_training_with_caches_pages_encoders_out_and_the_model_still_generates(tiny_models, star_dataset,
                                                                                   tmp_path):
    from trainer.sample import generate

    model = load_model(tiny_models("sd15"))
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    before = encoder_outputs(model, pixels)
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_models("sd15")), train_data_dir=str(star_dataset),
                         resolution="64", network_dim=4, network_alpha=4, train_batch_size=8, max_train_epochs=1,
                         cache_latents=True, cache_text_encoder_outputs=True, output_dir=str(tmp_path / "out"),
                         sample_every_n_epochs=1, sample_steps=2, sample_prompts=["ltdemo --w 64 --h 64 --d 3"])
    seen = {}

    def record(name):
        def callback(*_):
            seen[name] = [paging.is_paged(m) for m in (model.vae, *model.text_encoders())]
            seen[name + "_files"] = len(list((tmp_path / "out").glob(".paged-*")))
        return callback

    result = train(config, model, callbacks=Callbacks(on_start=record("start"), on_samples=record("samples")))
    assert seen["start"] == [True, True] and seen["start_files"] == 2
    assert seen["samples"] == [True, True]  # paged out again after sampling
    assert (tmp_path / "out" / "samples").is_dir()
    assert not list((tmp_path / "out").glob(".paged-*"))  # removed when training ends
    assert result.model is model and same(encoder_outputs(model, pixels), before)
    first = generate(model, "ltdemo", seed=3, steps=2, width=64, height=64, output_type="latent")
    again = generate(model, "ltdemo", seed=3, steps=2, width=64, height=64, output_type="latent")
    assert torch.isfinite(first).all() and torch.equal(first, again)


def test_live_encoding_keeps_encoders_in_memory(tiny_models, star_dataset, tmp_path):
    model = load_model(tiny_models("sd15"))
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_models("sd15")), train_data_dir=str(star_dataset),
                         resolution="64", network_dim=4, train_batch_size=8, max_train_steps=1,
                         cache_latents=True, output_dir=str(tmp_path))
    seen = []
    train(config, model, callbacks=Callbacks(on_start=lambda *_: seen.extend(
        paging.is_paged(m) for m in (model.vae, *model.text_encoders()))))
    assert seen == [True, False]  # the VAE's outputs are cached, the text encoder's are not


def test_a_module_changed_after_paging_is_left_alone_and_its_file_goes(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8)).requires_grad_(False)
    x = torch.randn(2, 8)
    expected = module(x)
    path = paging.page_out(module, tmp_path)
    assert path.is_file() and torch.allclose(module(x), expected, rtol=1e-6, atol=1e-7)
    module.append(torch.nn.Linear(8, 8))  # new weights the file does not hold
    paging.drop_pages(module)
    assert not paging.is_paged(module) and not path.exists()
    assert torch.allclose(module[:2](x), expected, rtol=1e-6, atol=1e-7)
    again = paging.page_out(module, tmp_path)  # paging again writes what it holds now
    assert again != path and torch.allclose(module[:2](x), expected, rtol=1e-6, atol=1e-7)


def resident_kib(marker: str) -> int:
    """Resident KiB of this process's mappings of files whose name contains ``marker``."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and len(head) >= 5:  # a mapping's header line
                inside = marker in line
            elif inside and head[0] == "Rss:":
                total += int(head[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_validation_runs_the_encoders_and_their_pages_leave_again(tiny_models, tmp_path):
    from conftest import paint

    data = tmp_path / "data"
    for i in range(5):
        paint(data / "1_thing" / f"{i}.png", box=(4 * i, 8, 40, 40))
    model = load_model(tiny_models("sd15"))
    config = TrainConfig(pretrained_model_name_or_path=str(tiny_models("sd15")), train_data_dir=str(data),
                         resolution="64", network_dim=4, train_batch_size=2, max_train_epochs=2, validation_split=0.2,
                         cache_latents=True, cache_text_encoder_outputs=True, output_dir=str(tmp_path / "out"))
    resident = []

    def log(line):
        if "validation loss" in line:  # validate() is done: it encoded the held-out image and caption
            resident.append(resident_kib(".paged-"))

    result = train(config, model, callbacks=Callbacks(log=log))
    assert len(result.validation_losses) == 2 and len(resident) == 2
    assert resident == [0, 0]
