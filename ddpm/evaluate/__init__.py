"""``ddpm-evaluate``: sample quality (FID/KID/IS), mode coverage, denoising quality and memorisation.

``run`` does the work (:func:`ddpm.evaluate.run.evaluate`), ``cli`` is the console script, ``config``
holds its schema (``EvaluateConfig``), its checks and its outputs.
"""
