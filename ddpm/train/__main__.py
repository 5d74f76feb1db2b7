"""``python -m ddpm.train`` (what torchrun and the dashboard launch) is ``ddpm-train``."""

from ddpm.train.cli import main

main()
