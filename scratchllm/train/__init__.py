"""Training: run configs, AdamW with warmup + cosine, the loop, DDP, metrics and plots.

>>> from scratchllm.train import load_run_config, train                       # doctest: +SKIP
>>> config = load_run_config("baby-shakespeare", overrides=["train.max_steps=100", "data.dir=data/tiny"])
>>> train(config, "runs/baby")                                                # doctest: +SKIP
"""

from scratchllm.train.config import PRESETS, RunConfig, TrainConfig, load_run_config
from scratchllm.train.loop import TrainResult, train

__all__ = ["PRESETS", "RunConfig", "TrainConfig", "TrainResult", "load_run_config", "train"]
