# Makes conf/ importable as ddpm.conf so the configs ship inside the wheel (see pyproject.toml).
