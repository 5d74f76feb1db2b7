"""``ddpm-export``: a checkpoint's weights as ``.safetensors`` plus a config JSON.

``cli`` runs the command, ``config`` holds its schema (``ExportConfig``); the pair's format (written
here, read by :mod:`ddpm.pretrained`) is :mod:`ddpm.export_format`, in the core.
"""
