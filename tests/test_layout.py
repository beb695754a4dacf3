"""The pack's frame: trainer/ stands alone, the folder loads under any name, no torch pin."""

import ast
import importlib.util
import shutil
import sys

from conftest import ROOT

COMFY_MODULES = {"comfy", "comfy_extras", "folder_paths", "server", "execution", "nodes"}


def test_trainer_never_imports_comfyui():
    for path in (ROOT / "trainer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & COMFY_MODULES, f"{path}: {names}"


def test_requirements_do_not_list_torch():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        name = line.split("#")[0].strip().split(";")[0]
        assert not name.lower().startswith(("torch ", "torch=", "torch>", "torch<")) and name.lower() != "torch"


def test_pack_imports_under_any_folder_name_without_shadowing_nodes(tmp_path):
    target = tmp_path / "My-Pack_v2"
    # what ComfyUI imports; bench/ and output/ may hold gigabytes of local models and runs
    shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns("tests", ".git", "__pycache__", "bench", "output"))
    spec = importlib.util.spec_from_file_location("My-Pack_v2", target / "__init__.py",
                                                  submodule_search_locations=[str(target)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["My-Pack_v2"] = module
    try:
        spec.loader.exec_module(module)
        assert module.WEB_DIRECTORY == "./js"
        assert isinstance(module.NODE_CLASS_MAPPINGS, dict)
        assert "nodes" not in sys.modules or "My-Pack_v2" not in sys.modules["nodes"].__name__
    finally:
        sys.modules.pop("My-Pack_v2", None)
