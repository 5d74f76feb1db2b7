"""The machinery of ``scripts/``: each script parses its flags and calls into here.

- :mod:`ddpm.tools.bad_inputs`: the bad-input cases (command lines, data files, downloads,
  checkpoints) that ``tests/test_bad_input.py`` runs in-process and ``scripts/fault_drill.py`` as
  processes, and the tiny MNIST run both train;
- :mod:`ddpm.tools.drill`: the fault drill's faults, checks and table (``scripts/fault_drill.py``);
- :mod:`ddpm.tools.throughput`, :mod:`ddpm.tools.bench_run`, :mod:`ddpm.tools.bench_report`: the
  speed benchmark's workloads (``ddpm-train``'s own step), rows and text (``scripts/benchmark.py``);
- :mod:`ddpm.tools.loader_bench`: in-memory vs streamed reads (``scripts/bench_loader.py``);
- :mod:`ddpm.tools.quality_budget`: two recipes on one time budget (``scripts/quality_budget.py``);
- :mod:`ddpm.tools.law_study`: the memorisation law's jobs (``scripts/memorisation_law.py``).

Nothing here imports pytest, and ``tests/`` never imports ``scripts/``. The package sits in the
console layer (``tests/test_layers.py``): it drives the commands as a user does.
"""
