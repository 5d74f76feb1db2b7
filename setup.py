"""Package discovery (the rest of the metadata is in pyproject.toml).

Every package under ``ddpm/`` is found, and ``conf/`` ships inside the package as ``ddpm.conf``.
Folders of data without ``__init__.py`` (``conf/``'s config groups such as ``conf/dataset/`` and
``conf/hydra/launcher/``; ``ddpm/evaluate/weights/``) are namespace packages, so that setuptools
takes their files as package data instead of warning that it would leave them out.
"""

from setuptools import find_namespace_packages, setup

NOT_PACKAGES = ["*__pycache__*", "*.egg-info*"]
PACKAGES = find_namespace_packages(include=["ddpm", "ddpm.*"], exclude=NOT_PACKAGES)
CONF = ["ddpm.conf", *(f"ddpm.conf.{name}" for name in find_namespace_packages("conf", exclude=NOT_PACKAGES))]

setup(packages=[*PACKAGES, *CONF], package_dir={"ddpm": "ddpm", "ddpm.conf": "conf"})
