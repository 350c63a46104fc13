"""Fine-tuning: adapting a trained GPT to a task (LoRA adapters, ...)."""
