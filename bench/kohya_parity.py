"""Same TOML, same LoRA? kohya sd-scripts' train_network.py against our CLI, key for key.

    python bench/kohya_parity.py --kohya /tmp/kohya --kohya-python /tmp/kohya-venv/bin/python \\
        --kohya-env PYTHONPATH=/tmp/kohya-shims [--case sd15_unet sdxl_te] [--out bench/out]
    python bench/kohya_parity.py ... --only ours         # run one side again (kohya's file stays)
    python bench/kohya_parity.py --compare-only          # compare the files of the last runs again
    python bench/kohya_parity.py ... --freeze tests/data  # write kohya's keys as the frozen lists
    python bench/kohya_parity.py ... --kohya-env LYCORIS_KERNEL_BACKEND=torch --case sd15_loha  # LyCORIS

For each case one TOML (bench/kohya_runs.py: full-size random-weight single-file checkpoint, 4
painted images, 256², batch 1, dim 8 / alpha 4, bf16, 1 step) is trained by kohya
(``--config_file``) and by ``python -m trainer train --config``, one after the other (full-size
SDXL: kohya peaks at 16-19 GiB, ours at 6-8 GiB), and the two LoRA files are compared: modules per component
and kind, keys only in one, shapes, alphas, dtypes, ss_*/modelspec.* metadata keys, and the values
of ss_network_module / ss_network_args. The lycoris.kohya cases need lycoris-lora (4.1.3) in kohya's
python; a case kohya is known to refuse (KOHYA_FAILS) passes when kohya stops with that message and
ours writes a file. A bench, not a
test; it never fetches anything. Results: ``<out>/kohya_parity/<case>/`` (TOML, logs, LoRAs,
diff.txt) and ``<out>/kohya_parity.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from kohya_runs import (NETWORK, ROOT, SCRIPTS, available_gb, base_values, ensure_inputs, parse_env,  # noqa: E402
                        run_kohya, run_ours, write_toml)

UNET_ONLY = {"network_train_unet_only": True, "cache_text_encoder_outputs": True}
WITH_TE = {"unet_lr": 1e-4, "text_encoder_lr": 5e-5}
CASES = {  # name: (family, TOML values beyond base_values, what it shows)
    "sd15_unet": ("sd15", UNET_ONLY, "SD1.5 networks.lora dim 8, UNet only"),
    "sdxl_unet": ("sdxl", UNET_ONLY, "SDXL networks.lora dim 8, UNet only"),
    "sd15_conv_te": ("sd15", {"network_args": ["conv_dim=4", "conv_alpha=2"], **WITH_TE},
                     "SD1.5 + network_args conv_dim=4 conv_alpha=2 + text_encoder_lr"),
    "sdxl_te": ("sdxl", WITH_TE, "SDXL + text_encoder_lr (UNet + both text encoders)"),
}


def _lycoris(family: str, args: list[str], what: str) -> tuple:
    return (family, {"network_module": "lycoris.kohya", "network_args": args, **UNET_ONLY},
            f"{what}: lycoris.kohya {' '.join(args)}, UNet only")


CASES.update({
    "sd15_loha": _lycoris("sd15", ["algo=loha", "preset=attn-mlp"], "SD1.5 LoHa"),
    "sd15_lokr": _lycoris("sd15", ["algo=lokr", "preset=attn-mlp"], "SD1.5 LoKr"),
    "sd15_dora": _lycoris("sd15", ["algo=lora", "dora_wd=True", "preset=attn-mlp"], "SD1.5 DoRA"),
    "sd15_oft": _lycoris("sd15", ["algo=diag-oft", "preset=attn-mlp"], "SD1.5 OFT"),
    "sd15_loha_full": _lycoris("sd15", ["algo=loha"], "SD1.5 LoHa, LyCORIS's default preset full"),
    "sdxl_lokr": _lycoris("sdxl", ["algo=lokr", "preset=attn-mlp"], "SDXL LoKr"),
})
DEFAULT_CASES = ["sd15_unet", "sdxl_unet", "sd15_conv_te", "sdxl_te"]  # networks.lora; LyCORIS by --case
# cases kohya + LyCORIS 4.1.3 refuses: the message its log must show (ours must train them)
KOHYA_FAILS = {"sd15_loha_full": "duplicated lora name: lora_unet_time_embedding_linear_1"}
# metadata whose values must be equal (what a loader rebuilds the network from)
NETWORK_METADATA = ("ss_network_module", "ss_network_args")
# the frozen lists tests/test_kohya_keys.py reads: file name per case (sdxl_unet is sdxl_te's UNet part)
FROZEN = {"sd15_unet": "lora_keys_sd15.txt", "sd15_conv_te": "lora_keys_sd15_conv.txt", "sdxl_te": "lora_keys_sdxl.txt",
          **{f"sd15_{algo}": f"lycoris_keys_sd15_{algo}.txt" for algo in ("loha", "lokr", "dora", "oft")},
          "sdxl_lokr": "lycoris_keys_sdxl_lokr.txt"}
# metadata that differs between any two runs (times, paths, hashes, ids): keys compared, values not
VOLATILE = {"ss_training_started_at", "ss_training_finished_at", "ss_session_id", "modelspec.date",
            "ss_sd_model_name", "ss_new_sd_model_hash", "ss_sd_model_hash", "sshs_model_hash",
            "sshs_legacy_hash", "ss_output_name", "modelspec.title", "ss_sd_scripts_commit_hash"}
COMPONENTS = {"lora_unet_": "unet", "lora_te1_": "te1", "lora_te2_": "te2", "lora_te_": "te"}


# -- reading a LoRA file ------------------------------------------------------------------------

def read_lora(path: Path) -> dict:
    """{"keys": {key: (shape, dtype)}, "alphas": {module: value}, "metadata": {...}} without
    loading the weights (only the scalar alphas)."""
    from safetensors import safe_open

    keys, alphas = {}, {}
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        for key in f.keys():
            piece = f.get_slice(key)
            keys[key] = (tuple(piece.get_shape()), piece.get_dtype())
            if key.endswith(".alpha"):
                alphas[key.removesuffix(".alpha")] = float(f.get_tensor(key).float().item())
    return {"keys": keys, "alphas": alphas, "metadata": metadata}


def component(module: str) -> str:
    return next((name for prefix, name in COMPONENTS.items() if module.startswith(prefix)), "other")


def kind(down_shape: tuple) -> str:
    if len(down_shape) == 2:
        return "linear"
    return "conv1x1" if tuple(down_shape[2:]) == (1, 1) else "conv" + "x".join(map(str, down_shape[2:]))


# LyCORIS tensors that name a module's algorithm (a LoRA's kind comes from its lora_down's shape)
LYCORIS_KINDS = {"hada_w1_a": "loha", "lokr_w1": "lokr", "lokr_w1_a": "lokr", "oft_blocks": "oft",
                 "dora_scale": "dora"}


def modules(lora: dict) -> dict[str, tuple[str, str]]:
    """{module name: (component, kind)} from the lora_down weights (LyCORIS: its algorithm's tensors)."""
    out = {}
    for key, (shape, _) in lora["keys"].items():
        module, _, tensor = key.partition(".")
        if tensor == "lora_down.weight" and out.get(module, ("", ""))[1] != "dora":
            out[module] = (component(key), kind(shape))
        elif tensor in LYCORIS_KINDS:
            out[module] = (component(key), LYCORIS_KINDS[tensor])
    return out


def network_metadata_differ(kohya: dict, ours: dict) -> list[tuple[str, str, str]]:
    """NETWORK_METADATA values that differ (ss_network_args compared as JSON)."""
    out = []
    for key in NETWORK_METADATA:
        a, b = kohya["metadata"].get(key), ours["metadata"].get(key)
        if key == "ss_network_args" and a and b and json.loads(a) == json.loads(b):
            continue
        if a != b:
            out.append((key, str(a), str(b)))
    return out


# -- comparing two ------------------------------------------------------------------------------

def compare(kohya: dict, ours: dict) -> dict:
    km, om = modules(kohya), modules(ours)
    counts: dict[tuple, Counter] = {}
    for group in sorted(set(km.values()) | set(om.values())):
        k = {n for n, g in km.items() if g == group}
        o = {n for n, g in om.items() if g == group}
        counts[group] = Counter(kohya=len(k), ours=len(o), both=len(k & o), only_kohya=len(k - o),
                                only_ours=len(o - k))
    shared = sorted(set(kohya["keys"]) & set(ours["keys"]))
    shapes = [(key, kohya["keys"][key][0], ours["keys"][key][0]) for key in shared
              if kohya["keys"][key][0] != ours["keys"][key][0]]
    alphas = [(m, kohya["alphas"][m], ours["alphas"][m]) for m in sorted(set(kohya["alphas"]) & set(ours["alphas"]))
              if abs(kohya["alphas"][m] - ours["alphas"][m]) > 1e-3 * max(1.0, abs(kohya["alphas"][m]))]
    for module in {key.split(".", 1)[0] for key, _, _ in shapes}:
        counts[km[module]]["mismatched_shape"] += 1
    for module, _, _ in alphas:
        counts[km[module]]["mismatched_alpha"] += 1

    def meta_keys(lora):
        return {k for k in lora["metadata"] if k.startswith(("ss_", "modelspec."))}

    km_keys, om_keys = meta_keys(kohya), meta_keys(ours)
    values = [(k, kohya["metadata"][k], ours["metadata"][k]) for k in sorted(km_keys & om_keys - VOLATILE)
              if kohya["metadata"][k] != ours["metadata"][k]]
    dtypes = {who: dict(Counter(dtype for _, dtype in lora["keys"].values()))
              for who, lora in (("kohya", kohya), ("ours", ours))}
    return {
        "counts": {f"{c} {k}": dict(v) for (c, k), v in counts.items()},
        "keys": {"kohya": len(kohya["keys"]), "ours": len(ours["keys"])},
        "only_kohya": sorted(set(kohya["keys"]) - set(ours["keys"])),
        "only_ours": sorted(set(ours["keys"]) - set(kohya["keys"])),
        "shape_mismatches": [[k, list(a), list(b)] for k, a, b in shapes],
        "alpha_mismatches": alphas,
        "dtypes": dtypes,
        "metadata_only_kohya": sorted(km_keys - om_keys),
        "metadata_only_ours": sorted(om_keys - km_keys),
        "metadata_values_differ": values,
        "network_metadata": {k: [kohya["metadata"].get(k), ours["metadata"].get(k)] for k in NETWORK_METADATA},
        "network_metadata_differ": network_metadata_differ(kohya, ours),
    }


def same(result: dict) -> bool:
    return not (result["only_kohya"] or result["only_ours"] or result["shape_mismatches"]
                or result["alpha_mismatches"] or result.get("network_metadata_differ"))


# -- printing -----------------------------------------------------------------------------------

COLUMNS = ("kohya", "ours", "both", "only_kohya", "only_ours", "mismatched_shape", "mismatched_alpha")


def table(result: dict) -> list[str]:
    lines = ["| component kind | " + " | ".join(c.replace("_", " ") for c in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    total = Counter()
    for group, counts in result["counts"].items():
        total.update(counts)
        lines.append(f"| {group} | " + " | ".join(str(counts.get(c, 0)) for c in COLUMNS) + " |")
    lines.append("| **all modules** | " + " | ".join(str(total.get(c, 0)) for c in COLUMNS) + " |")
    return lines


def examples(title: str, items: list, show: int) -> list[str]:
    if not items:
        return [f"{title}: none"]
    lines = [f"{title}: {len(items)}"]
    lines += [f"  {item if isinstance(item, str) else ' '.join(map(str, item))}" for item in items[:show]]
    if len(items) > show:
        lines.append(f"  ... {len(items) - show} more (diff.txt)")
    return lines


def describe(name: str, result: dict, show: int) -> list[str]:
    what = CASES[name][2]
    lines = [f"### {name}: {what}", "", f"keys: kohya {result['keys']['kohya']}, ours {result['keys']['ours']}"
             f" - {'SAME network (keys, shapes, alphas, ss_network_*)' if same(result) else 'DIFFERENT'}", ""]
    lines += table(result) + [""]
    lines += examples("keys only in kohya", result["only_kohya"], show)
    lines += examples("keys only in ours", result["only_ours"], show)
    lines += examples("shape mismatches (key kohya ours)", result["shape_mismatches"], show)
    lines += examples("alpha mismatches (module kohya ours)", result["alpha_mismatches"], show)
    lines.append(f"dtypes: kohya {result['dtypes']['kohya']}, ours {result['dtypes']['ours']}")
    lines += [f"{k}: kohya {a} | ours {b}" for k, (a, b) in result.get("network_metadata", {}).items()]
    lines += examples("metadata keys only in kohya", result["metadata_only_kohya"], 100)
    lines += examples("metadata keys only in ours", result["metadata_only_ours"], 100)
    lines += examples("metadata values that differ (key kohya ours)",
                      [(k, _short(a), _short(b)) for k, a, b in result["metadata_values_differ"]], 100)
    return lines + [""]


def _short(value: str, width: int = 70) -> str:
    return value if len(value) <= width else value[:width - 3] + "..."


# -- the frozen lists ---------------------------------------------------------------------------

def frozen_lines(lora: dict) -> list[str]:
    """One line per key, sorted: ``key<TAB>shape`` (+ ``<TAB>value`` for alphas)."""
    out = []
    for key, (shape, _) in sorted(lora["keys"].items()):
        line = f"{key}\t{list(shape)}"
        if key.endswith(".alpha"):
            line += f"\t{lora['alphas'][key.removesuffix('.alpha')]:g}"
        out.append(line)
    return out


def freeze(name: str, lora: dict, folder: Path, commit: str, lycoris: str = "") -> Path:
    from trainer.atomic import write_text

    family, values, what = CASES[name]
    settings = {**NETWORK, **{k: v for k, v in values.items()
                              if k in ("network_module", "network_args", "text_encoder_lr",
                                       "network_train_unet_only")}}
    with_lycoris = values.get("network_module") == "lycoris.kohya"
    header = [f"# The LoRA kohya-ss/sd-scripts {commit}{' + ' + lycoris if with_lycoris else ''} "
              f"{SCRIPTS[family]} wrote for {what}",
              f"# (real {family} architecture, random weights; {json.dumps(settings)}).",
              "# Written by bench/kohya_parity.py --freeze; read by "
              + ("tests/test_lycoris_keys.py." if with_lycoris else "tests/test_kohya_keys.py."),
              "# key<TAB>shape[<TAB>alpha]"]
    return write_text(Path(folder) / FROZEN[name], "\n".join(header + frozen_lines(lora)) + "\n")


# -- main ---------------------------------------------------------------------------------------

def run_case(name: str, args, env: dict) -> dict:
    family, values, _ = CASES[name]
    folder = Path(args.out).resolve() / "kohya_parity" / name  # kohya runs in its own folder
    kohya_file, our_file = folder / "kohya" / "lora.safetensors", folder / "ours" / "lora.safetensors"
    runs = {}
    if not args.compare_only:
        inputs = ensure_inputs(family, Path(args.out))
        toml = write_toml(folder / "run.toml", {**base_values(inputs), "max_train_steps": 1, **values})
        need = 8 if family == "sdxl" else 3
        if available_gb() < need:
            print(f"warning: {available_gb():.1f} GB available, a full-size {family} run needs {need}+ GB", flush=True)
        for who in [args.only] if args.only else ("kohya", "ours"):  # one after the other, never together
            print(f"[{name}] {who} ...", flush=True)
            run = (run_kohya(Path(args.kohya), args.kohya_python, family, toml, folder / "kohya", folder / "kohya.log",
                             env) if who == "kohya" else
                   run_ours(args.python, toml, folder / "ours", folder / "ours.log"))
            runs[who] = {"returncode": run.returncode, "wall_s": round(run.wall_s, 1),
                         "peak_rss_gb": round(run.peak_rss_gb, 2), "log": str(run.log)}
            print(f"[{name}] {who}: exit {run.returncode}, {run.wall_s:.0f} s, peak RSS {run.peak_rss_gb:.2f} GiB",
                  flush=True)
            if not run.ok:
                print(f"[{name}] {who} wrote no LoRA; the end of {run.log}:\n{run.tail()}", flush=True)
    if args.freeze and name in FROZEN and kohya_file.is_file():
        frozen = freeze(name, read_lora(kohya_file), Path(args.freeze), args.kohya_commit, lycoris_version(args))
        print(f"[{name}] frozen list: {frozen}")
    if name in KOHYA_FAILS:
        return expected_failure(name, runs, folder, kohya_file, our_file)
    missing = [str(p) for p in (kohya_file, our_file) if not p.is_file()]
    if missing:
        return {"case": name, "runs": runs, "error": "no LoRA file: " + ", ".join(missing)}
    kohya, ours = read_lora(kohya_file), read_lora(our_file)
    result = {"case": name, "runs": runs, **compare(kohya, ours)}
    from trainer.atomic import write_text

    write_text(folder / "diff.txt", "\n".join(describe(name, result, 10**6)) + "\n")
    write_text(folder / "report.json", json.dumps(result, indent=1))
    return result


def expected_failure(name: str, runs: dict, folder: Path, kohya_file: Path, our_file: Path) -> dict:
    """A case kohya refuses: kohya's log must show KOHYA_FAILS[name] (and no file), ours a file."""
    log = folder / "kohya.log"
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    kohya_error = next((line.strip() for line in reversed(text.splitlines()) if KOHYA_FAILS[name] in line), None)
    ours = read_lora(our_file) if our_file.is_file() else None
    found = modules(ours) if ours else {}  # a file cannot hold a module twice: the count is the check
    problems = []
    if kohya_error is None:
        problems.append(f"kohya's log has no '{KOHYA_FAILS[name]}'" + (" (it wrote a file)" if kohya_file.is_file() else ""))
    if ours is None:
        problems.append("ours wrote no LoRA")
    return {"case": name, "runs": runs, "kohya_error": kohya_error, "ours_modules": len(found),
            "ours_kinds": dict(Counter(k for _, k in found.values())),
            "ours_keys": len(ours["keys"]) if ours else 0, "problems": problems}


def describe_failure(name: str, result: dict) -> list[str]:
    verdict = "as expected" if not result["problems"] else "NOT as expected: " + "; ".join(result["problems"])
    return [f"### {name}: {CASES[name][2]}", "", f"kohya: {result['kohya_error'] or 'no such error'}",
            f"ours: {result['ours_modules']} modules {result['ours_kinds']}, {result['ours_keys']} keys - {verdict}", ""]


def lycoris_version(args) -> str:
    """lycoris-lora's version in kohya's python (for the frozen lists' header)."""
    if not args.kohya_python:
        return "lycoris-lora (version not known)"
    import subprocess

    code = "import importlib.metadata as m; print(m.version('lycoris-lora'))"
    done = subprocess.run([args.kohya_python, "-c", code], capture_output=True, text=True)
    return f"lycoris-lora {done.stdout.strip()}" if done.returncode == 0 else "lycoris-lora (not installed)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kohya", help="a kohya-ss/sd-scripts checkout (needed unless --compare-only)")
    p.add_argument("--kohya-python", help="a python that can import it (needed unless --compare-only)")
    p.add_argument("--kohya-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for kohya's process (repeatable), e.g. PYTHONPATH=/tmp/kohya-shims")
    p.add_argument("--kohya-commit", default="(commit not given)", help="recorded in the frozen lists")
    p.add_argument("--python", default=sys.executable, help="the python that runs our CLI")
    p.add_argument("--case", nargs="+", choices=list(CASES), default=DEFAULT_CASES,
                   help=f"default: {' '.join(DEFAULT_CASES)}")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    p.add_argument("--show", type=int, default=12, help="examples per list in the printed report")
    p.add_argument("--compare-only", action="store_true", help="compare the LoRA files already there")
    p.add_argument("--only", choices=("kohya", "ours"), help="run only this trainer (the other's last file stays)")
    p.add_argument("--freeze", metavar="DIR", help="write kohya's keys as the frozen lists (tests/data)")
    args = p.parse_args(argv)
    if not args.compare_only and args.only != "ours" and not (args.kohya and args.kohya_python):
        p.error("--kohya and --kohya-python are needed to run kohya")
    env = parse_env(args.kohya_env)
    report, all_same = ["# kohya parity", ""], True
    for name in args.case:
        result = run_case(name, args, env)
        if "error" in result:
            lines = [f"### {name}: {result['error']}", ""]
            all_same = False
        elif "problems" in result:
            lines = describe_failure(name, result)
            all_same &= not result["problems"]
        else:
            lines = describe(name, result, args.show)
            all_same &= same(result)
        runs = result.get("runs") or {}
        lines += [f"run {who}: exit {r['returncode']}, {r['wall_s']} s, peak RSS {r['peak_rss_gb']} GiB"
                  for who, r in runs.items()] + ([""] if runs else [])
        print("\n".join(lines), flush=True)
        report += lines
    from trainer.atomic import write_text

    text = "\n".join(report) + "\n"
    print(f"report: {write_text(Path(args.out).resolve() / 'kohya_parity.md', text)}")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
