"""ddpm: train, sample, evaluate and analyse denoising diffusion models."""

__version__ = "0.1.0"
