"""Training runs outside a graph: one process per run, its state in the run folder.

A run folder (output/lora_trainer/<name>/) holds the run's TOML and dataset manifest (written by
LoRA Train), ``run_status.json`` (status.py: step, loss, ETA, samples, state; rewritten atomically
every step), the process's log, a ``stop.request`` file when a stop was asked for, and the
kohya-style state that resume continues from. Nothing else is needed to list, stop or resume a
run, so runs survive a page reload or a restart of the server that started them.
"""
