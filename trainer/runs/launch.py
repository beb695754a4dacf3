"""Start a run's training in its own process: the headless CLI on the run's TOML, its output in the
run's log file, detached so that the server that started it can stop or restart meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import TrainerError
from .registry import describe
from .status import ACTIVE, STOP_FILE, RunStatus

PACK_DIR = Path(__file__).resolve().parents[2]
# -c with an explicit path: embedded Pythons (ComfyUI portable) do not put the cwd on sys.path
BOOT = "import sys; sys.path.insert(0, sys.argv.pop(1)); from trainer.cli import main; raise SystemExit(main(sys.argv[1:]))"


def log_name(run_dir: Path) -> str:
    return f"{Path(run_dir).name}_run.log"


def start_background(toml: Path, publish_to: Path | None = None, parallel: bool = False, resume: bool = False,
                     python: str | None = None) -> dict:
    """Launch ``python -m trainer background`` on ``toml`` (its run folder is the TOML's folder);
    return the run's first status. Refused while the run is queued or running."""
    toml = Path(toml).resolve()
    run_dir = toml.parent
    current = describe(run_dir)
    if current and current["state"] in ACTIVE:
        raise TrainerError(f"Run '{run_dir.name}' is already {current['state']}: stop it in the Training panel, or "
                           "change output_name to start another run.")
    (run_dir / STOP_FILE).unlink(missing_ok=True)
    log = run_dir / log_name(run_dir)
    # a resumed run keeps its loss curve and samples so far
    earlier = {k: current[k] for k in ("history", "history_stride", "samples", "step", "total")
               if current and resume and k in current}
    status = RunStatus(run_dir, **earlier, mode="background", parallel=parallel, launched_at=time.time(), log=log.name,
                       toml=toml.name, publish_to=str(publish_to) if publish_to else None,
                       resumed=bool(resume), device=None, worker_pid=None)
    args = [python or sys.executable, "-c", BOOT, str(PACK_DIR), "background", "--config", str(toml)]
    args += ["--publish-to", str(publish_to)] if publish_to else []
    args += ["--parallel"] if parallel else []
    args += ["--resume"] if resume else []
    detach = ({"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS}
              if os.name == "nt" else {"start_new_session": True})  # a Ctrl+C in the server's terminal spares it
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resume else 'start'}: {toml}\n")
        out.flush()
        try:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=str(run_dir), env=env, close_fds=True, **detach)
        except OSError as err:
            status.finish("failed", error=f"Could not start the training process: {err}")
            raise TrainerError(f"Could not start the training process ({err}).") from None
    status.update(launcher_pid=os.getpid(), pid=proc.pid)
    return status.data
