"""The machinery of ``scripts/``: each script parses its flags and calls into here.

- :mod:`ddpm.tools.bad_inputs`: the bad-input cases (command lines, data files, downloads,
  checkpoints) that ``tests/test_bad_input.py`` runs in-process and ``scripts/fault_drill.py`` as processes;
- :mod:`ddpm.tools.drill`: the fault drill's faults, checks and table (``scripts/fault_drill.py``).

Nothing here imports pytest, and ``tests/`` never imports ``scripts/``.
"""
