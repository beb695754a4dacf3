"""LoRA Train's run_in = background: a real process per run, its status file, Stop, Resume, a
crash, one run per device, and the Training sidebar's routes (trainer/runs/, nodes/runs_api.py)."""

import asyncio
import contextlib
import os
import shutil
import signal
import time

import pytest
from safetensors import safe_open

from graph_runner import run_graph
from trainer.errors import TrainerError
from trainer.runs import registry


@pytest.fixture
def comfy_dirs(tmp_path, monkeypatch, tiny_models, star_dataset):
    models = tmp_path / "models"
    shutil.copytree(tiny_models("sd15"), models / "diffusers" / "TinySD15")
    (models / "loras").mkdir()
    shutil.copytree(star_dataset, tmp_path / "input" / "stars")
    for name, path in (("LT_MODELS_DIR", models), ("LT_INPUT_DIR", tmp_path / "input"),
                       ("LT_OUTPUT_DIR", tmp_path / "output")):
        monkeypatch.setenv(name, str(path))
    yield tmp_path
    _end_leftover_runs(tmp_path / "output" / "lora_trainer")


def _end_leftover_runs(root, grace=60):
    """No run process outlives its test: ask every run still queued or running to stop, then kill
    the ones still alive after ``grace`` seconds (a process left behind trains on in CI's clone)."""
    def live():
        return [r for r in registry.list_runs(root) if r.get("state") in ("queued", "running")] if root.is_dir() else []

    end = time.time() + grace
    while live() and time.time() < end:
        for run in live():
            with contextlib.suppress(TrainerError):  # it may have ended since it was listed
                registry.request_stop(root, run["id"])
        time.sleep(0.5)
    for run in live():
        if run.get("worker_pid"):
            os.kill(int(run["worker_pid"]), signal.SIGKILL)


def graph(name="stars", run_in="background", epochs=4):  # 4 images x 10 repeats per epoch
    widgets = dict(preset="none", output_name=name, resolution="64", network_dim=4, network_alpha=4.0,
                   learning_rate=1e-3, max_train_epochs=epochs, train_batch_size=1, mixed_precision="no",
                   gradient_checkpointing=False, seed=1, run_in=run_in)
    return {
        "1": {"class_type": "LT_KolorsSDXLLoader", "inputs": {"model": "diffusers/TinySD15", "family": "auto",
                                                               "dtype": "fp32"}},
        "2": {"class_type": "LT_DatasetLoader", "inputs": {"folder": "stars", "repeats": 1, "trigger_word": "ltdemo",
                                                            "caption_extension": ".txt"}},
        "3": {"class_type": "LT_TrainingOptions", "inputs": {"settings": 'sample_prompts = ["ltdemo --s 2 --w 64 --h 64"]'
                                                              '\nsample_every_n_epochs = 2\n'}},
        "4": {"class_type": "LT_LoraTrain", "inputs": {"pipeline": ["1", 0], "dataset": ["2", 0], "options": ["3", 0],
                                                        **widgets}},
        "5": {"class_type": "LT_LoraSave", "inputs": {"lora": ["4", 0], "name": name, "precision": "fp32",
                                                       "format": "kohya", "overwrite": False}},
    }


def wait_for(root, run_id, check, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        run = registry.get_run(root, run_id)
        if check(run):
            return run
        time.sleep(0.2)
    raise AssertionError(f"timed out; last status: {run}")


def test_background_run_frees_the_queue_then_stop_and_resume_finish_it(pack, comfy_dirs):
    ui = {}
    out = run_graph(pack, graph(), ui=ui)
    root = comfy_dirs / "output" / "lora_trainer"
    # the prompt is over at once: LoRA Save after it is blocked (ComfyUI skips it), no LoRA yet
    assert type(out["5"][0]).__name__ == "ExecutionBlocker" and not list((comfy_dirs / "models" / "loras").iterdir())
    assert "Training in the background: run 'stars'" in ui["4"]["text"][0]
    first = registry.get_run(root, "stars")
    assert first["state"] in ("queued", "running") and first["mode"] == "background"

    running = wait_for(root, "stars", lambda r: r["step"] >= 12)
    later = wait_for(root, "stars", lambda r: r["step"] > running["step"] + 5)
    assert later["total"] == 160 and later["state"] == "running" and later["device"] == "cpu"
    assert later["eta_seconds"] > 0 and len(later["history"]) == later["step"]  # one loss point per step
    assert [p[0] for p in later["history"]] == list(range(1, later["step"] + 1))

    assert registry.request_stop(root, "stars")["stop_requested"]
    stopped = wait_for(root, "stars", lambda r: r["state"] != "running")
    assert stopped["state"] == "stopped" and stopped["resumable"] and stopped["step"] < 160
    assert "stopped at step" in registry.log_tail(root / "stars", stopped)

    # Resume through the sidebar's route, as the panel's button does
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    loras = comfy_dirs / "models" / "loras"

    async def resume():
        routes = web.RouteTableDef()
        pack.nodes.runs_api.add_routes(routes, lambda: root, lambda: loras)
        app = web.Application()
        app.add_routes(routes)
        async with TestClient(TestServer(app)) as client:
            response = await client.post("/lora_trainer/runs/stars/resume")
            return response.status, await response.json()

    status, body = asyncio.run(resume())
    assert status == 200 and body["state"] == "queued" and body["resumed"]
    done = wait_for(root, "stars", lambda r: r["state"] not in ("queued", "running"))
    assert done["state"] == "done", done.get("error")
    assert done["step"] == 160 and len(done["history"]) == 160  # the curve goes on from the stop
    assert done["lora"] == str(loras / "stars.safetensors")
    with safe_open(done["lora"], "pt") as f:
        assert f.metadata()["ss_steps"] == "160"
    assert done["samples"] and (root / "stars" / done["samples"][0]).is_file()


def test_a_killed_process_shows_as_failed_with_its_log(pack, comfy_dirs):
    run_graph(pack, graph(name="crash"))
    root = comfy_dirs / "output" / "lora_trainer"
    running = wait_for(root, "crash", lambda r: r["step"] >= 3)
    os.kill(running["worker_pid"], signal.SIGKILL)
    failed = wait_for(root, "crash", lambda r: r["state"] != "running", timeout=30)
    assert failed["state"] == "failed" and failed["died"]
    assert "ended without finishing" in failed["error"] and "steps" in failed["error"]  # the log's last lines


def test_one_run_per_device_unless_parallel(pack, comfy_dirs):
    root = comfy_dirs / "output" / "lora_trainer"
    run_graph(pack, graph(name="first", epochs=200))
    wait_for(root, "first", lambda r: r["state"] == "running")
    run_graph(pack, graph(name="second", epochs=1))
    waiting = wait_for(root, "second", lambda r: r.get("waiting"))
    assert waiting["state"] == "queued" and "another run is training" in waiting["waiting"]
    run_graph(pack, graph(name="side", epochs=1, run_in="background (parallel)"))
    side = wait_for(root, "side", lambda r: r["state"] not in ("queued", "running"))
    assert side["state"] == "done" and registry.get_run(root, "second")["state"] == "queued"
    # a run of the same name cannot start twice
    with pytest.raises(Exception, match="already"):
        run_graph(pack, graph(name="first", epochs=200))
    registry.request_stop(root, "first")
    second = wait_for(root, "second", lambda r: r["state"] not in ("queued", "running"))
    assert second["state"] == "done" and second["started_at"] > registry.get_run(root, "first")["finished_at"]


def test_a_graph_run_is_listed_and_a_stale_stop_does_not_stop_it(pack, comfy_dirs):
    root = comfy_dirs / "output" / "lora_trainer"
    (root / "here").mkdir(parents=True)
    (root / "here" / "stop.request").write_text("from an earlier run")
    out = run_graph(pack, graph(name="here", run_in="this graph", epochs=1))
    assert out["5"][0].endswith("here.safetensors")
    run = registry.get_run(root, "here")
    assert run["state"] == "done" and run["mode"] == "graph" and run["step"] == run["total"] == 40


def test_routes_check_ids_and_say_what_is_wrong(pack, comfy_dirs, tmp_path):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    root = tmp_path / "output" / "lora_trainer"
    (root / "done").mkdir(parents=True)
    (root / "done" / "run_status.json").write_text('{"state": "done", "step": 4, "total": 4, "log": "done_run.log"}')
    (root / "done" / "done_run.log").write_text("line 1\nline 2\n")
    (tmp_path / "output" / "secret").mkdir()
    (tmp_path / "output" / "secret" / "run_status.json").write_text('{"state": "done"}')

    async def calls():
        routes = web.RouteTableDef()
        pack.nodes.runs_api.add_routes(routes, lambda: root, lambda: tmp_path / "loras")
        app = web.Application()
        app.add_routes(routes)
        async with TestClient(TestServer(app)) as client:
            got = {}
            for method, url in (("get", "/lora_trainer/runs"), ("get", "/lora_trainer/runs/done"),
                                ("get", "/lora_trainer/runs/done/log"), ("post", "/lora_trainer/runs/done/stop"),
                                ("get", "/lora_trainer/runs/nothing"), ("get", "/lora_trainer/runs/..%2Fsecret"),
                                ("post", "/lora_trainer/runs/done/resume")):
                response = await getattr(client, method)(url)
                got[(method, url)] = (response.status, await response.text())
            return got

    got = asyncio.run(calls())
    assert got[("get", "/lora_trainer/runs")][0] == 200 and '"id": "done"' in got[("get", "/lora_trainer/runs")][1]
    assert got[("get", "/lora_trainer/runs/done")][0] == 200
    assert got[("get", "/lora_trainer/runs/done/log")] == (200, "line 1\nline 2")
    assert got[("post", "/lora_trainer/runs/done/stop")][0] == 400 and "nothing to stop" in got[("post", "/lora_trainer/runs/done/stop")][1]
    assert got[("get", "/lora_trainer/runs/nothing")][0] == 404
    assert got[("get", "/lora_trainer/runs/..%2Fsecret")][0] in (400, 404)
    assert "secret" not in got[("get", "/lora_trainer/runs")][1]
    assert got[("post", "/lora_trainer/runs/done/resume")][0] == 400 and "done.toml" in got[("post", "/lora_trainer/runs/done/resume")][1]


def test_a_run_that_would_not_fit_the_gpu_says_what_to_change():
    from trainer.config import TrainConfig
    from trainer.runs.worker import memory_problem
    from trainer.train.vram import GB

    config = TrainConfig.from_dict({"model_family": "sdxl", "resolution": "1024", "train_batch_size": 4,
                                    "mixed_precision": "bf16", "network_dim": 32})
    assert memory_problem(config, 80 * GB) is None
    problem = memory_problem(config, 10 * GB)
    assert problem.startswith("Not started: estimated") and "set " in problem and "to fit" in problem
