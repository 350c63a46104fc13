"""Moving models between scratchllm and other formats (Hugging Face GPT-2)."""

from scratchllm.interop.hf_gpt2 import load_hf_gpt2, save_hf_gpt2

__all__ = ["load_hf_gpt2", "save_hf_gpt2"]
