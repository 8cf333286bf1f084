"""hardneg: hard-negative contrastive learning for vision-language alignment."""

__version__ = "0.1.0"
