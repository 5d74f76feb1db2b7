"""``ddpm-export``: a checkpoint's weights as ``.safetensors`` plus a config JSON.

``format`` reads and writes the pair (imported by :mod:`ddpm.pretrained`, so this package imports
nothing else at import time), ``cli`` runs the command, ``config`` holds its schema (``ExportConfig``).
"""

from ddpm.export.format import EXPORT_FORMAT, config_path, is_export, read_export, write_export

__all__ = ["EXPORT_FORMAT", "config_path", "is_export", "read_export", "write_export"]
