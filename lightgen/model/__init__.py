"""The MAR student: tokenizers, text conditioning, backbone + diffusion head, sampling.

Public API (see docs/ARCHITECTURE.md): ``build_model``, ``LightGenMAR`` (``forward_loss``,
``diffusion_loss``, ``sample_training_noise``), ``sample_images``.
"""

from lightgen.model.mar import SIZES, LightGenMAR, build_model, resolve_arch
from lightgen.model.sampling import sample_images

__all__ = ["SIZES", "LightGenMAR", "build_model", "resolve_arch", "sample_images"]
