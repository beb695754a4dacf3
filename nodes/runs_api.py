"""The Training sidebar's server side: /lora_trainer/runs routes on ComfyUI's PromptServer.

GET  /lora_trainer/runs              every run under output/lora_trainer/, newest first
GET  /lora_trainer/runs/{id}         one run's status
GET  /lora_trainer/runs/{id}/log     the end of its log (text)
POST /lora_trainer/runs/{id}/stop    ask it to stop (state saved at the end of the step)
POST /lora_trainer/runs/{id}/resume  start it again in the background from its saved state

Ids are run folder names, checked by trainer/runs/registry.run_folder: nothing outside
output/lora_trainer/ is ever read or written. Sample images are served by ComfyUI's own /view."""

from __future__ import annotations

from ..trainer.errors import TrainerError

PREFIX = "/lora_trainer/runs"
LOG_LINES = 400


def add_routes(routes, runs_root, loras_dir) -> None:
    """Register the handlers on an aiohttp RouteTableDef; ``runs_root()`` / ``loras_dir()`` give the
    folders at request time (ComfyUI's output folder can be changed on its command line)."""
    from aiohttp import web

    from ..trainer.runs import registry
    from ..trainer.runs.launch import start_background

    def answer(fn):
        async def handler(request):
            try:
                return fn(request)
            except TrainerError as err:
                missing = str(err).startswith("No run")
                return web.json_response({"error": str(err)}, status=404 if missing else 400)
        return handler

    @routes.get(PREFIX)
    @answer
    def list_runs(request):
        return web.json_response({"runs": registry.list_runs(runs_root())})

    @routes.get(PREFIX + "/{id}")
    @answer
    def one_run(request):
        return web.json_response(registry.get_run(runs_root(), request.match_info["id"]))

    @routes.get(PREFIX + "/{id}/log")
    @answer
    def log(request):
        folder = registry.run_folder(runs_root(), request.match_info["id"])
        return web.Response(text=registry.log_tail(folder, registry.describe(folder), LOG_LINES) or "(no log yet)")

    @routes.post(PREFIX + "/{id}/stop")
    @answer
    def stop(request):
        return web.json_response(registry.request_stop(runs_root(), request.match_info["id"]))

    @routes.post(PREFIX + "/{id}/resume")
    @answer
    def resume(request):
        folder = registry.run_folder(runs_root(), request.match_info["id"])
        status = registry.describe(folder)
        toml = folder / f"{folder.name}.toml"
        if not toml.is_file():
            raise TrainerError(f"Run '{folder.name}' has no {toml.name} to resume from.")
        started = start_background(toml, publish_to=loras_dir(), parallel=bool(status.get("parallel")),
                                   resume=True)
        return web.json_response(started)


def register() -> bool:
    """Add the routes to the running ComfyUI server; False outside ComfyUI."""
    from . import comfy_env
    from .train_runs import runs_root

    routes = comfy_env.server_routes()
    if routes is None:
        return False
    add_routes(routes, runs_root, lambda: comfy_env.model_folders("loras")[0])
    return True
