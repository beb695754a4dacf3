"""pytest set-up for the repository root.

The root is a ComfyUI custom-node package (an ``__init__.py`` with relative imports), cloned into
folders such as ``ComfyUI-LoRA-Trainer`` whose names are no valid module names. pytest would
collect the root as a Python package and import that ``__init__.py`` outside any parent package;
collect it as a plain folder instead. Tests import the pack the way ComfyUI does (tests/conftest.py
``pack``).

A conftest's own collection hooks only apply below its folder, not to the folder itself, so the
hook is registered as a plugin.
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent


class _RootAsFolder:
    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path, parent):
        if Path(path).resolve() == ROOT:
            return pytest.Dir.from_parent(parent, path=path)
        return None


def pytest_configure(config):
    config.pluginmanager.register(_RootAsFolder(), "lora-trainer-root-as-folder")
