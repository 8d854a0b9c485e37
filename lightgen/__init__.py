"""LightGen Studio: an experiment-tracking ablation studio for the LightGen data-diversity/scale study."""

__version__ = "0.1.0"
