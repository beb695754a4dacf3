"""Shared fixtures: tiny models built once per session, painted datasets, no network."""

import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["HF_HUB_OFFLINE"] = "1"

# The libraries whose releases have broken us before: the header names them, so the next break
# names the library that moved.
VERSIONED = ("torch", "diffusers", "peft", "lycoris-lora", "transformers", "accelerate", "safetensors",
             "bitsandbytes", "onnxruntime", "opencv-python-headless", "numpy", "pillow")


def pytest_sessionstart(session):
    """Written even under -q (the README's command), where pytest hides its own header."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(library_versions())


def library_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return "versions: " + ", ".join(f"{name} {installed(name)}" for name in VERSIONED)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to reach a hub (or anything else off this machine) fails the test."""
    real_connect = socket.socket.connect

    def guarded(self, address, *args):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
            return real_connect(self, address, *args)
        raise AssertionError(f"network access attempted: {address}")

    monkeypatch.setattr(socket.socket, "connect", guarded)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{family: diffusers folder} of pre-trained tiny models, built on first use."""
    from trainer.tiny.build import write_tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    cache = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = write_tiny_model(family, root / family)
        return cache[family]

    return get


def paint(path: Path, size=(64, 64), colour=(220, 0, 0), box=(16, 16, 48, 48), box_colour=(0, 0, 255)):
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[...] = colour
    l, t, r, b = box
    arr[t:b, l:r] = box_colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture
def star_dataset(tmp_path):
    """The demo's painted dataset: 4 images in 10_ltdemo/ with captions."""
    from trainer.demo import paint_dataset

    return paint_dataset(tmp_path / "dataset")


@pytest.fixture(scope="session")
def pack():
    """The repo root imported as a package, as ComfyUI imports it from custom_nodes/."""
    import importlib.util

    name = "lt_pack"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
