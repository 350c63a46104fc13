"""Exporting to Hugging Face GPT-2 a model with a part GPT-2 does not have is refused, naming the part."""

import pytest

from scratchllm.errors import ScratchLLMError
from scratchllm.interop import save_hf_gpt2
from scratchllm.model import GPT, GPTConfig


@pytest.mark.parametrize(("overrides", "named"), [
    (dict(pos_encoding="alibi"), "GPT-2 has no pos_encoding='alibi'"),
    (dict(attention="sliding_window", window=8), "GPT-2 has no attention='sliding_window'"),
    (dict(attention=["multihead", "sparse_fixed"]), r"attention='sparse_fixed' \(layer 1 of its pattern\)"),
])
def test_a_part_gpt2_lacks_is_refused_by_name(tmp_path, overrides, named):
    with pytest.raises(ScratchLLMError, match=named):
        save_hf_gpt2(GPT(GPTConfig.preset("tiny", **overrides)), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
