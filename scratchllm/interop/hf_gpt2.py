"""Hugging Face GPT-2 checkpoints in and out: ``config.json`` + ``model.safetensors``.

GPT-2 is our GPT with learned positions, LayerNorm, GELU and biases on Q/K/V. The names differ,
and the layout of the linear weights: OpenAI's ``Conv1D`` stores them (in, out), our
``nn.Linear`` layers (out, in), so each is transposed here, at the boundary and nowhere else.
``c_attn`` puts Q, K, V side by side just as our ``W_qkv`` stacks them. The token table ``wte``
(vocab, d) is our ``tok_emb.weight`` (and, tied, our head's weight) as it is.

Loading builds the model on the ``meta`` device (shapes, no memory), reads each tensor from the
memory-mapped safetensors file and hands it to the model as its parameter, so the peak is about
one copy of the weights. Pickled ``pytorch_model.bin`` files are refused: unpickling runs code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import atomic_path, read_json
from scratchllm.model import GPT, GPTConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"

# (our name, Hugging Face name without "transformer.", transposed)
_GLOBAL = [
    ("pos_emb.weight", "wpe.weight", False),
    ("final_norm.scale", "ln_f.weight", False),
    ("final_norm.shift", "ln_f.bias", False),
]
_BLOCK = [
    ("norm1.scale", "ln_1.weight", False),
    ("norm1.shift", "ln_1.bias", False),
    ("att.W_qkv.weight", "attn.c_attn.weight", True),
    ("att.W_qkv.bias", "attn.c_attn.bias", False),
    ("att.out_proj.weight", "attn.c_proj.weight", True),
    ("att.out_proj.bias", "attn.c_proj.bias", False),
    ("norm2.scale", "ln_2.weight", False),
    ("norm2.shift", "ln_2.bias", False),
    ("ff.fc_in.weight", "mlp.c_fc.weight", True),
    ("ff.fc_in.bias", "mlp.c_fc.bias", False),
    ("ff.fc_out.weight", "mlp.c_proj.weight", True),
    ("ff.fc_out.bias", "mlp.c_proj.bias", False),
]
# Hugging Face activation names -> our GELU form
_ACTIVATIONS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "exact"}


def name_map(config: GPTConfig) -> list[tuple[str, str, bool]]:
    """Every (ours, Hugging Face, transposed) name pair of a GPT-2 shaped config."""
    pairs = [("tok_emb.weight", "wte.weight", False)]
    if not config.tie_embeddings:
        pairs.append(("out_head.weight", "lm_head.weight", False))
    pairs += _GLOBAL
    for i in range(config.n_layers):
        pairs += [(f"trf_blocks.{i}.{ours}", f"h.{i}.{theirs}", t) for ours, theirs, t in _BLOCK]
    return [(ours, theirs if theirs == "lm_head.weight" else f"transformer.{theirs}", t) for ours, theirs, t in pairs]


def config_from_hf(hf: dict) -> GPTConfig:
    """Our config for a Hugging Face GPT-2 ``config.json``; unsupported variants are refused."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ScratchLLMError(f"model_type {hf.get('model_type')!r} is not GPT-2; only GPT-2 checkpoints load here")
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACTIVATIONS:
        raise ScratchLLMError(
            f"activation_function {act!r} is not supported; GPT-2 uses the tanh GELU (gelu_new), or give 'gelu'"
        )
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if hf.get(flag):
            raise ScratchLLMError(f"config.json sets {flag}, which this GPT does not implement")
    if hf.get("scale_attn_weights", True) is False:
        raise ScratchLLMError("config.json sets scale_attn_weights=false, which this GPT does not implement")
    try:
        return GPTConfig(
            vocab_size=hf["vocab_size"],
            context_length=hf.get("n_positions", hf.get("n_ctx")),
            d_model=hf["n_embd"],
            n_heads=hf["n_head"],
            n_layers=hf["n_layer"],
            dropout=hf.get("resid_pdrop", 0.1),
            qkv_bias=True,
            pos_encoding="learned",
            norm="layernorm",
            ffn="gelu",
            gelu=_ACTIVATIONS[act],
            tie_embeddings=hf.get("tie_word_embeddings", True),
            ffn_hidden=hf.get("n_inner"),
            norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        )
    except KeyError as err:
        raise ScratchLLMError(f"config.json lacks {err.args[0]!r}; is this a GPT-2 config?") from None


def config_to_hf(config: GPTConfig) -> dict:
    """The Hugging Face ``config.json`` for our config (GPT-2 shaped models only)."""
    unsupported = {"pos_encoding": "learned", "norm": "layernorm", "ffn": "gelu", "attention": "multihead",
                   "block": "pre_norm", "head_size": None, "attn_head_dim": None}
    for field, needed in unsupported.items():
        value = getattr(config, field)
        for layer, part in enumerate(value if isinstance(value, list) else [value]):  # a per-layer pattern
            if part != needed:
                where = f" (layer {layer} of its pattern)" if isinstance(value, list) else ""
                raise ScratchLLMError(
                    f"GPT-2 has no {field}={part!r}{where}: its format needs {field}={needed!r}; "
                    "save it as a scratchllm checkpoint instead"
                )
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.context_length,
        "n_ctx": config.context_length,
        "n_embd": config.d_model,
        "n_head": config.n_heads,
        "n_layer": config.n_layers,
        "n_inner": config.hidden_dim,
        "activation_function": "gelu_new" if config.gelu == "tanh" else "gelu",
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": config.vocab_size - 1 if config.vocab_size == 50257 else None,
        "eos_token_id": config.vocab_size - 1 if config.vocab_size == 50257 else None,
        "torch_dtype": "float32",
    }


def load_hf_gpt2(directory: str | os.PathLike, dtype: torch.dtype | None = None) -> GPT:
    """Load a Hugging Face GPT-2 directory (``config.json`` + ``model.safetensors``) as our GPT.

    >>> model = load_hf_gpt2("gpt2")          # doctest: +SKIP
    """
    directory = Path(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        if any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
            raise ScratchLLMError(
                f"{directory} has only pickled weights (pytorch_model.bin), which are never unpickled here "
                "because unpickling can run code; convert them to model.safetensors first"
            )
        raise ScratchLLMError(f"{weights} not found; a GPT-2 checkpoint directory holds config.json + {WEIGHTS}")
    config = config_from_hf(read_json(directory / CONFIG, "a GPT-2 checkpoint directory holds a valid config.json"))
    with torch.device("meta"):
        model = GPT(config)
    expected = model.state_dict()

    state: dict[str, torch.Tensor] = {}
    with safe_open(weights, framework="pt") as f:
        # save_pretrained writes "transformer.h.0...", OpenAI's original upload "h.0..."
        prefixed = ("transformer.", "lm_head.")
        stored = {key if key.startswith(prefixed) else f"transformer.{key}": key for key in f.keys()}
        for ours, theirs, transposed in name_map(config):
            if theirs not in stored:
                raise ScratchLLMError(f"{weights} has no tensor {theirs!r} that a {config.n_layers}-layer GPT-2 needs")
            tensor = f.get_tensor(stored[theirs])
            if transposed:
                tensor = tensor.t()
            want = expected[ours].shape
            if tensor.shape != want:
                raise ScratchLLMError(
                    f"{weights}: tensor {theirs!r} has shape {tuple(tensor.shape)}, "
                    f"config.json implies {tuple(want)} for {ours}"
                )
            # one owned copy, in the layout and dtype we want, read from the mapped file
            state[ours] = torch.empty(want, dtype=dtype or tensor.dtype).copy_(tensor)
    if config.tie_embeddings:
        state["out_head.weight"] = state["tok_emb.weight"]
    model.load_state_dict(state, assign=True)
    model.tie_weights()  # assign=True gave each name its own Parameter
    return model.eval()


def save_hf_gpt2(model: GPT, directory: str | os.PathLike, tokenizer=None) -> Path:
    """Write ``model`` as a Hugging Face GPT-2 directory that ``GPT2LMHeadModel.from_pretrained``
    loads; with a ``tokenizer`` (a ``BPETokenizer``) also its ``tokenizer.json``.

    A model without biases (the book's Q/K/V, or ``bias=False``) gets zero biases: the same function.
    """
    config = model.config
    hf_config = config_to_hf(config)
    state = model.state_dict()
    tensors = {}
    for ours, theirs, transposed in name_map(config):
        if ours not in state:  # a bias the model does not have: zeros, sized like its weight's output
            weight = state[ours.replace(".bias", ".weight").replace(".shift", ".scale")]
            tensor = torch.zeros(weight.shape[0], dtype=weight.dtype)
        else:
            tensor = state[ours].detach()
        tensors[theirs] = (tensor.t() if transposed else tensor).contiguous().cpu()
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
        (tmp / CONFIG).write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        if tokenizer is not None:
            tokenizer.export_hf(tmp / "tokenizer.json")
    return directory
