"""Installing the pack never downgrades what the host (ComfyUI's Python) has: requirements carry
lower bounds only. An upper bound or pin (<, <=, ==, ===, ~=, !=) is allowed only with a comment
on its line, or on the line just above naming the package, that says why. pyproject.toml's
dependencies are the same as requirements.txt."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
CAPPING = ("<", "<=", "==", "===", "~=", "!=")


def unexplained_caps(lines: list[str]) -> list[str]:
    """The requirement lines among ``lines`` that cap or pin a version without a comment saying why.
    A line is a requirements.txt line or one entry of a TOML array (quoted, maybe with a comma)."""
    found = []
    for number, line in enumerate(lines):
        text, _, comment = line.partition("#")
        spec = text.strip().rstrip(",").strip()
        if spec[:1] in ("'", '"'):  # a TOML string: its content
            spec = spec[1:spec.rindex(spec[0])]
        if not spec or spec.startswith("-"):
            continue
        requirement = Requirement(spec)
        if not any(s.operator in CAPPING for s in requirement.specifier):
            continue
        above = lines[number - 1].strip() if number else ""
        explained = comment.strip() or (above.startswith("#") and requirement.name.lower() in above.lower())
        if not explained:
            found.append(line.strip())
    return found


def _pyproject_dependency_lines() -> list[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    block = re.search(r"^dependencies = \[\n(.*?)^\]", text, re.S | re.M)
    assert block, "pyproject.toml has no dependencies = [...] block"
    return block.group(1).splitlines()


def _requirements(lines: list[str]) -> set[str]:
    return {str(Requirement(line.split("#")[0].strip())) for line in lines
            if line.split("#")[0].strip() and not line.startswith("-")}


def test_requirement_files_cap_no_version_without_a_reason():
    for name in ("requirements.txt", "requirements-dev.txt"):
        lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
        assert unexplained_caps(lines) == [], f"{name}: an upper bound needs a comment proving it necessary"
    assert unexplained_caps(_pyproject_dependency_lines()) == []


def test_pyproject_dependencies_match_requirements_txt():
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    assert {str(Requirement(d)) for d in listed} == _requirements(
        (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines())


def test_the_check_catches_every_capping_operator_and_accepts_a_reason():
    bad = ["foo>=1,<5", "bar<=2", "baz==1.0", "qux~=1.2", "quux!=1.3", '    "corge>=4.8,<5",',
           'grault<2; platform_system != "Darwin"']
    assert unexplained_caps(bad) == [line.strip() for line in bad]
    fine = ["foo>=1", "bar>=2  # not capped", "# baz 2 renamed its API: the code needs 1.x until ported",
            "baz>=1,<2", "qux>=1,<2  # qux 2 drops the x() the trainer calls; test_qux covers both sides",
            '    "corge>=4.8,<5",  # corge 5 ...', "-r requirements.txt", "", "# a comment"]
    assert unexplained_caps(fine) == []
    # a comment above that is about something else does not explain the cap
    assert unexplained_caps(["# torch is absent on purpose", "diffusers>=0.32,<1"]) == ["diffusers>=0.32,<1"]


def test_requirements_txt_lines_install_one_by_one():
    # ComfyUI-Manager passes each line of requirements.txt to pip on its own: a comment must have
    # its own line (pip reads "pkg>=1  # why" given as one argument as an invalid requirement)
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" not in line, f"requirements.txt: put the comment above: {line}"
            Requirement(line.strip())
