"""Training: run configs, AdamW with warmup + cosine, the loop, DDP, metrics and plots."""
