"""``ddpm-evaluate``: sample quality (FID/KID/IS), mode coverage, denoising quality and memorisation."""
