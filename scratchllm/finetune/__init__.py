"""Fine-tuning: adapting a trained GPT to a task (LoRA adapters, text classification, ...).

>>> from scratchllm.finetune.classify import fine_tune, load_classifier, predict   # doctest: +SKIP
"""
