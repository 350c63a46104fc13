"""Training: run configs, AdamW with warmup + cosine, the trainer, DDP, evaluation, metrics and plots.

>>> from scratchllm.train import load_run_config, train
>>> config = load_run_config("baby-shakespeare", overrides=["train.max_steps=100", "data.dir=data/tiny"])
>>> train(config, "runs/baby")                                                # doctest: +SKIP
"""

from scratchllm.train.config import RunConfig, TrainConfig, load_run_config
from scratchllm.train.evaluation import Score, score_tokens
from scratchllm.train.loop import Trainer, TrainResult
from scratchllm.train.run import train

__all__ = ["RunConfig", "Score", "TrainConfig", "TrainResult", "Trainer", "load_run_config", "score_tokens",
           "train"]
