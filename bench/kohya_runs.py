"""What the kohya sd-scripts comparisons share (bench/kohya_parity.py, bench/kohya_speed.py).

The full-size SD1.5 / SDXL single-file checkpoints with random bf16 weights (built once by
trainer/tiny/full_size.py into ``<out>/models/``), the CLIP tokenizers both trainers read offline
(ours: ``tokenizer_dir``; kohya: ``tokenizer_cache_dir``, which it reads by hub id), the painted
dataset, one TOML both trainers read, and each trainer run as its own process with its peak RSS.
Nothing is fetched: kohya is a checkout given by path, run by a python given by path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_setup import ROOT, ensure_dataset  # noqa: E402

SCRIPTS = {"sd15": "train_network.py", "sdxl": "sdxl_train_network.py"}
# the folder names kohya's tokenizer_cache_dir uses (hub id with "/" -> "_"), per tokenizer
KOHYA_TOKENIZERS = {"tokenizer": "openai_clip-vit-large-patch14",
                    "tokenizer_2": "laion_CLIP-ViT-bigG-14-laion2B-39B-b160k"}
RESOLUTION = 256
IMAGES = 4
NETWORK = {"network_module": "networks.lora", "network_dim": 8, "network_alpha": 4}  # alpha not the rank: a wrong alpha shows


@dataclass
class Inputs:
    """The files one family's runs read."""

    family: str
    checkpoint: Path
    tokenizer_dir: Path  # ours: tokenizer/ (+ tokenizer_2/)
    kohya_tokenizers: Path  # kohya's tokenizer_cache_dir
    data: Path


def ensure_inputs(family: str, out: Path) -> Inputs:
    """Build (first time) or reuse the checkpoint, tokenizers and dataset under ``out``."""
    out = Path(out).resolve()  # the TOML's paths are read from kohya's folder too
    models = out / "models"
    models.mkdir(parents=True, exist_ok=True)
    checkpoint = models / f"{family}_full.safetensors"
    if not checkpoint.is_file():
        print(f"building {checkpoint} (random bf16 weights, real architecture; minutes) ...", flush=True)
        tmp = checkpoint.with_name(checkpoint.stem + ".tmp.safetensors")
        code = ("import sys; from trainer.tiny.full_size import write_full_size_checkpoint; "
                "write_full_size_checkpoint(sys.argv[1], sys.argv[2])")
        # its own process: the parts' memory is gone before any trainer runs
        subprocess.run([sys.executable, "-c", code, family, str(tmp)], cwd=ROOT, check=True)
        os.replace(tmp, checkpoint)
    tokenizers, kohya = models / f"{family}_tokenizers", models / "kohya_tokenizers"
    parts = ["tokenizer"] + (["tokenizer_2"] if family == "sdxl" else [])
    for part in parts:
        for folder in (tokenizers / part, kohya / KOHYA_TOKENIZERS[part]):
            if not (folder / "vocab.json").is_file():
                _write_tokenizer(folder, part)
    data = ensure_dataset(out / "data", IMAGES, RESOLUTION)
    return Inputs(family, checkpoint, tokenizers, kohya, data)


def _write_tokenizer(folder: Path, part: str) -> None:
    """The full-size models' padded character-level CLIP tokenizer (real vocab size, SDXL's
    second one pads with "!" as the real one does)."""
    from trainer.models.single_file import CONFIGS
    from trainer.tiny.full_size import write_padded_clip_tokenizer

    vocab = json.loads((CONFIGS / "sd15" / "text_encoder" / "config.json").read_text(encoding="utf-8"))["vocab_size"]
    write_padded_clip_tokenizer(folder, vocab, **({"pad_token": "!"} if part == "tokenizer_2" else {}))


def base_values(inputs: Inputs) -> dict:
    """The settings every comparison TOML has: both trainers read them (kohya ignores
    ``tokenizer_dir``; ``tokenizer_cache_dir``, ``sdpa`` and ``max_data_loader_n_workers`` are
    kohya's: how it runs offline on a CPU)."""
    return {
        "pretrained_model_name_or_path": str(inputs.checkpoint),
        "tokenizer_dir": str(inputs.tokenizer_dir),
        "tokenizer_cache_dir": str(inputs.kohya_tokenizers),
        "train_data_dir": str(inputs.data),
        "caption_extension": ".txt",
        "resolution": str(RESOLUTION),
        "train_batch_size": 1,
        **NETWORK,
        "learning_rate": 1e-4,
        "optimizer_type": "AdamW",
        "lr_scheduler": "constant",
        "mixed_precision": "bf16",
        "save_precision": "fp16",
        "save_model_as": "safetensors",
        "output_name": "lora",
        "seed": 42,
        "cache_latents": True,
        "sdpa": True,
        "max_data_loader_n_workers": 0,
    }


def toml_text(values: dict) -> str:
    """A flat TOML document (JSON's string, number, bool and list syntax is TOML's too)."""
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def write_toml(path: Path, values: dict) -> Path:
    from trainer.atomic import write_text

    return write_text(Path(path), toml_text(values))


@dataclass
class Run:
    who: str  # kohya | ours
    returncode: int
    wall_s: float
    peak_rss_gb: float  # the process's own peak (wait4's ru_maxrss)
    log: Path
    lora: Path

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.lora.is_file()

    def tail(self, lines: int = 25) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace").splitlines() if self.log.is_file() else []
        return "\n".join(text[-lines:])


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--kohya-env {pair}: write KEY=VALUE, e.g. PYTHONPATH=/tmp/kohya-shims")
        env[key] = value
    return env


def run_process(who: str, cmd: list[str], cwd: Path, log: Path, lora: Path, env: dict | None = None) -> Run:
    """Run ``cmd`` to completion, output to ``log``; wall time and the child's peak RSS."""
    log.parent.mkdir(parents=True, exist_ok=True)
    lora.unlink(missing_ok=True)  # a file from an earlier run must not pass for this one's
    full_env = dict(os.environ, **(env or {}))
    with open(log, "w", encoding="utf-8") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=full_env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(who, proc.returncode, wall, usage.ru_maxrss * 1024 / 2**30, log, lora)


def run_kohya(kohya: Path, python: str, family: str, toml: Path, output_dir: Path, log: Path,
              env: dict | None = None, extra: list[str] = ()) -> Run:
    """kohya's train_network.py / sdxl_train_network.py with ``--config_file toml``."""
    cmd = [python, str(Path(kohya) / SCRIPTS[family]), "--config_file", str(toml),
           "--output_dir", str(output_dir), *extra]
    return run_process("kohya", cmd, Path(kohya), log, Path(output_dir) / "lora.safetensors", env)


def run_ours(python: str, toml: Path, output_dir: Path, log: Path, extra: list[str] = ()) -> Run:
    """``python -m trainer train --config toml`` (the CLI), output_dir overridden as for kohya."""
    cmd = [python, "-m", "trainer", "train", "--config", str(toml),
           "--set", f"output_dir={json.dumps(str(output_dir))}", *extra]
    return run_process("ours", cmd, ROOT, log, Path(output_dir) / "lora.safetensors")


def available_gb() -> float:
    try:
        line = next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemAvailable"))
        return int(line.split()[1]) / 2**20
    except (OSError, StopIteration):
        return float("nan")
