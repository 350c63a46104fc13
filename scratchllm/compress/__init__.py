"""Compression: smaller or cheaper models from a trained one (distillation, ...)."""
