"""Package discovery (the rest of the metadata is in pyproject.toml).

Every package under ``ddpm/`` is found. ``ddpm/conf`` is a link to ``conf/``, so the configs ship inside the
package as ``ddpm.conf`` while the layout stays the plain one that an editable install serves from one
``.pth`` entry, without setuptools' meta-path finder and its warning. Folders of data without
``__init__.py`` (``conf/``'s config groups such as ``conf/dataset/`` and ``conf/hydra/launcher/``;
``ddpm/evaluate/weights/``) are namespace packages, so that setuptools takes their files as package data
instead of warning that it would leave them out.
"""

from setuptools import find_namespace_packages, setup

setup(packages=find_namespace_packages(include=["ddpm", "ddpm.*"], exclude=["*__pycache__*", "*.egg-info*"]), package_dir={"": "."})
