"""GGUF files for llama.cpp: a GPT-2 shaped model, its tokenizer and its weights in f32, f16 or q8_0.

GGUF, llama.cpp's file format, is a header of typed key/value metadata, a table of tensors (name,
shape, type, offset) and the aligned tensor data. The ``gguf`` package that llama.cpp publishes
writes and reads the container; what goes into it is decided here, as llama.cpp's own
``convert_hf_to_gguf.py`` decides it for a Hugging Face GPT-2:

- the architecture ``gpt2``: hyper-parameters under ``gpt2.*`` and llama.cpp's tensor names::

      ours                               GGUF                        numpy shape (GGUF lists it reversed)
      tok_emb.weight                     token_embd.weight           (vocab, d)
      pos_emb.weight                     position_embd.weight        (context, d), always f32
      trf_blocks.{i}.norm1.scale/shift   blk.{i}.attn_norm.weight/bias
      trf_blocks.{i}.att.W_qkv           blk.{i}.attn_qkv.weight/bias   (3 d, d): Q, K, V stacked
      trf_blocks.{i}.att.out_proj        blk.{i}.attn_output.weight/bias
      trf_blocks.{i}.norm2.scale/shift   blk.{i}.ffn_norm.weight/bias
      trf_blocks.{i}.ff.fc_in / fc_out   blk.{i}.ffn_up / ffn_down .weight/.bias
      final_norm.scale/shift             output_norm.weight/bias
      out_head.weight                    output.weight               only when untied: llama.cpp
                                                                     reuses token_embd without it

  Our ``nn.Linear`` weights are (out, in), the layout llama.cpp multiplies by (GGUF's first
  dimension is the input), so they go in as they are; llama.cpp's GPT-2 graph needs every bias,
  so a model without some (``bias=False``, the book's Q/K/V) gets zeros: the same function.
- the tokenizer, as the converter writes GPT-2's: ``tokenizer.ggml.model = "gpt2"``, one string
  per id (the token's bytes through GPT-2's ``bytes_to_unicode``; special tokens as their text,
  type CONTROL; ids without a token ``[PAD{id}]``, type UNUSED), the merges ``"left right"`` in
  rank order, and the name of the pre-tokenizer regex (``gpt-2``, or ``llama-bpe`` for GPT-4's).
- q8_0 (``quantize_q8_0``): each row cut into blocks of 32 weights, each block stored as a
  float16 scale ``d = max|x| / 127`` and 32 int8 ``q = round(x / d)`` (half away from zero, C's
  ``roundf``): 34 bytes per 32 weights, 8.5 bits each. Written here by hand; the test checks it
  byte for byte against the ``gguf`` package's own quantizer. Vectors (norms, biases) and the
  position table stay f32 in every file type, as the converter keeps them.

>>> blocks = quantize_q8_0(torch.tensor([[127.0, -63.5, 0.2] + [0.0] * 29]))   # d = 127 / 127 = 1
>>> blocks.shape, dequantize_q8_0(blocks, 32)[0, :3].tolist()                     # -63.5 rounds away from 0
((1, 34), [127.0, -64.0, 0.0])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import atomic_path

ARCH = "gpt2"
FILE_TYPES = ("f32", "f16", "q8_0")
Q8_0_BLOCK = 32  # weights per q8_0 block
Q8_0_BYTES = 2 + Q8_0_BLOCK  # a float16 scale, then the int8 values

# our part -> what it is, for the refusal of a model llama.cpp's gpt2 graph cannot run
_GPT2_PARTS = {"pos_encoding": "learned", "norm": "layernorm", "ffn": "gelu", "attention": "multihead",
               "block": "pre_norm"}
_PART_NAMES = {"rope": "rotary positions", "sinusoidal": "sinusoidal positions", "none": "no position encoding",
               "rmsnorm": "RMSNorm", "swiglu": "a SwiGLU feed-forward", "grouped_query": "grouped-query attention"}
_LLAMA_PARTS = {"rope", "rmsnorm", "swiglu", "grouped_query"}
_PRE_TOKENIZERS = {"gpt2": "gpt-2", "gpt4": "llama-bpe"}  # our pattern name -> llama.cpp's tokenizer.ggml.pre

_BLOCK = [  # (ours, GGUF's, is a matrix)
    ("norm1.scale", "attn_norm.weight", False),
    ("norm1.shift", "attn_norm.bias", False),
    ("att.W_qkv.weight", "attn_qkv.weight", True),
    ("att.W_qkv.bias", "attn_qkv.bias", False),
    ("att.out_proj.weight", "attn_output.weight", True),
    ("att.out_proj.bias", "attn_output.bias", False),
    ("norm2.scale", "ffn_norm.weight", False),
    ("norm2.shift", "ffn_norm.bias", False),
    ("ff.fc_in.weight", "ffn_up.weight", True),
    ("ff.fc_in.bias", "ffn_up.bias", False),
    ("ff.fc_out.weight", "ffn_down.weight", True),
    ("ff.fc_out.bias", "ffn_down.bias", False),
]


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ScratchLLMError("GGUF export needs llama.cpp's gguf package: pip install 'scratchllm[gguf]' "
                              "(or pip install gguf)") from None
    return gguf


# ------------------------------------------------------------------------------------------ q8_0
def _round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's roundf: halves go away from zero (torch.round goes to even: 2.5 -> 2, roundf gives 3)."""
    a = x.abs()
    return torch.sign(x) * (a.floor() + (2 * (a - a.floor())).floor())


def quantize_q8_0(weight: torch.Tensor) -> np.ndarray:
    """A (rows, cols) matrix as q8_0 blocks: uint8 (rows, cols / 32 * 34), per block the float16
    scale d = max|x| / 127 then the 32 int8 values round(x / d). ``cols`` must be a multiple of 32."""
    rows, cols = weight.shape
    if cols % Q8_0_BLOCK:
        raise ScratchLLMError(f"q8_0 needs rows whose length is a multiple of {Q8_0_BLOCK}, got {cols}")
    blocks = weight.detach().cpu().float().reshape(-1, Q8_0_BLOCK)  # (n_blocks, 32)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127  # the largest weight becomes +-127
    inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)  # an all-zero block stores zeros
    q = _round_half_away(blocks * inverse).to(torch.int8)
    packed = np.concatenate([d.half().numpy().view(np.uint8), q.numpy().view(np.uint8)], axis=1)
    return packed.reshape(rows, cols // Q8_0_BLOCK * Q8_0_BYTES)


def dequantize_q8_0(blocks: np.ndarray, cols: int) -> torch.Tensor:
    """Inverse of ``quantize_q8_0`` up to its rounding: x = d * q, float32 (rows, cols)."""
    raw = np.ascontiguousarray(blocks, dtype=np.uint8).reshape(-1, Q8_0_BYTES)
    d = raw[:, :2].copy().view(np.float16).astype(np.float32)  # (n_blocks, 1)
    q = raw[:, 2:].copy().view(np.int8).astype(np.float32)  # (n_blocks, 32)
    return torch.from_numpy(d * q).reshape(-1, cols)


# ------------------------------------------------------------------------------------- checks
def check_exportable(config: Any) -> None:
    """Refuse, naming the part, a model that llama.cpp's gpt2 architecture cannot run."""
    for name, needed in _GPT2_PARTS.items():
        for part in dict.fromkeys(config.part_names(name)):
            if part != needed:
                what = _PART_NAMES.get(part, f"{name}={part!r}")
                hint = ("; llama.cpp's llama architecture has rotary positions, RMSNorm, SwiGLU and grouped-query "
                        "attention, but scratchllm does not export to it yet" if part in _LLAMA_PARTS else "")
                raise ScratchLLMError(f"this model has {what}, which llama.cpp's gpt2 architecture lacks (it needs "
                                      f"{name}={needed!r}){hint}")
    if config.head_size is not None:
        raise ScratchLLMError("this model has a replaced head (a classifier); GGUF export takes language models")
    if getattr(config, "attn_head_dim", None) is not None and config.n_heads * config.head_dim != config.d_model:
        raise ScratchLLMError(
            f"this model's attention is {config.n_heads} heads of {config.head_dim} = "
            f"{config.n_heads * config.head_dim} wide, not d_model={config.d_model} (pruned heads); llama.cpp's gpt2 "
            "graph splits Q, K and V at d_model: prune neurons instead, or export before pruning heads")


# ---------------------------------------------------------------------------------- tokenizer
def gguf_vocabulary(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) as ``tokenizer.ggml.*`` holds them for a GPT-2 BPE, for ids
    0 .. vocab_size - 1 (the rows of the model's token table)."""
    from scratchllm.tokenizer.formats import bytes_to_unicode

    gguf = _gguf()
    if tokenizer.vocab_size > vocab_size:
        raise ScratchLLMError(f"the tokenizer has {tokenizer.vocab_size} ids, the model's token table only "
                              f"{vocab_size} rows: they do not belong together")
    table = bytes_to_unicode()

    def text(token_id: int) -> str:
        return "".join(table[b] for b in tokenizer.token_bytes(token_id))

    ordinary = set(tokenizer.byte_ids) | {t for _, _, t in tokenizer.merges}
    special = {i: s for s, i in tokenizer.special_tokens.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in special:
            tokens.append(special[i])
            types.append(int(gguf.TokenType.CONTROL))
        elif i in ordinary:
            tokens.append(text(i))
            types.append(int(gguf.TokenType.NORMAL))
        else:  # a row of the table no token uses (a vocabulary padded to a round size)
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
    # our encoder merges the pair whose result has the lowest id first: that order is the rank
    merges = [f"{text(u)} {text(v)}" for u, v, _ in sorted(tokenizer.merges, key=lambda m: m[2])]
    return tokens, types, merges


def _pre_tokenizer(tokenizer: Any) -> str:
    name = _PRE_TOKENIZERS.get(tokenizer.pattern_name or "")
    if name is None:
        raise ScratchLLMError("the tokenizer splits text with a custom regex; llama.cpp knows GPT-2's and GPT-4's "
                              "(tokenizer pattern gpt2 or gpt4): retrain the tokenizer with one of them")
    return name


# ------------------------------------------------------------------------------------- writing
def gguf_tensors(model: Any) -> list[tuple[str, torch.Tensor, bool]]:
    """Every (GGUF name, tensor, is a matrix) the gpt2 architecture reads, in llama.cpp's order."""
    config = model.config
    state = model.state_dict()

    def get(ours: str) -> torch.Tensor:
        if ours in state:
            return state[ours].detach().cpu().float()
        weight = state[ours.replace(".bias", ".weight").replace(".shift", ".scale")]  # a bias it lacks: zeros
        return torch.zeros(weight.shape[0])

    out = [("token_embd.weight", get("tok_emb.weight"), True),
           ("position_embd.weight", get("pos_emb.weight"), False)]  # a table looked up, kept f32 as llama.cpp does
    for i in range(config.n_layers):
        out += [(f"blk.{i}.{theirs}", get(f"trf_blocks.{i}.{ours}"), matrix) for ours, theirs, matrix in _BLOCK]
    out += [("output_norm.weight", get("final_norm.scale"), False),
            ("output_norm.bias", get("final_norm.shift"), False)]
    if not config.tie_embeddings:
        out.append(("output.weight", get("out_head.weight"), True))
    return out


def save_gguf(model: Any, path: str | os.PathLike, tokenizer: Any, file_type: str = "f16",
              name: str = "scratchllm") -> Path:
    """Write ``model`` (a GPT-2 shaped ``GPT``) and ``tokenizer`` (a ``BPETokenizer``) as one GGUF
    file that llama.cpp loads; matrices in ``file_type`` (f32, f16 or q8_0; a matrix whose rows
    are not a multiple of 32 long falls back to f16 in q8_0, as llama.cpp's converter does).

    >>> save_gguf(model, "model.gguf", tokenizer, "q8_0")       # doctest: +SKIP
    """
    gguf = _gguf()
    if file_type not in FILE_TYPES:
        raise ScratchLLMError(f"unknown GGUF type {file_type!r}: use one of {', '.join(FILE_TYPES)}")
    if tokenizer is None:
        raise ScratchLLMError("this checkpoint has no tokenizer/ folder; llama.cpp needs the tokenizer in the file")
    config = model.config
    check_exportable(config)
    tokens, types, merges = gguf_vocabulary(tokenizer, config.vocab_size)
    pre = _pre_tokenizer(tokenizer)
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0}[file_type]
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[file_type]
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(tmp, ARCH)
        writer.add_name(name)
        writer.add_context_length(config.context_length)
        writer.add_embedding_length(config.d_model)
        writer.add_feed_forward_length(config.hidden_dim)
        writer.add_block_count(config.n_layers)
        writer.add_head_count(config.n_heads)
        writer.add_layer_norm_eps(config.norm_eps)
        writer.add_file_type(int(ftype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        eot = tokenizer.special_tokens.get("<|endoftext|>")
        if eot is not None:  # GPT-2's: it begins and ends every document
            writer.add_bos_token_id(eot)
            writer.add_eos_token_id(eot)
        writer.add_add_bos_token(False)  # GPT-2 prompts start without one
        for tensor_name, tensor, matrix in gguf_tensors(model):
            kind = qtype if matrix else gguf.GGMLQuantizationType.F32
            if kind == gguf.GGMLQuantizationType.Q8_0 and tensor.shape[-1] % Q8_0_BLOCK:
                kind = gguf.GGMLQuantizationType.F16
            if kind == gguf.GGMLQuantizationType.Q8_0:
                writer.add_tensor(tensor_name, quantize_q8_0(tensor), raw_dtype=kind)
            elif kind == gguf.GGMLQuantizationType.F16:
                writer.add_tensor(tensor_name, tensor.half().numpy())
            else:
                writer.add_tensor(tensor_name, tensor.numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


# ------------------------------------------------------------------------------------- reading
@dataclass
class GGUFContents:
    """What ``read_gguf`` found: metadata values, tensors as float32 (numpy layout) and their types."""

    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    raw: dict[str, np.ndarray] = field(default_factory=dict)  # the stored bytes/values, as the file has them


def read_gguf(path: str | os.PathLike) -> GGUFContents:
    """Read a GGUF file back with the ``gguf`` package's reader (not with anything written here):
    every metadata value and every tensor, dequantized by the package to float32."""
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as err:
        raise ScratchLLMError(f"{path} is not a readable GGUF file ({err})") from None
    contents = GGUFContents()
    for key, value in reader.fields.items():
        contents.metadata[key] = value.contents()
    for tensor in reader.tensors:
        raw = np.asarray(tensor.data)
        values = gguf.quants.dequantize(raw, tensor.tensor_type)
        shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))  # GGUF lists the fastest dimension first
        contents.tensors[tensor.name] = torch.from_numpy(np.array(values, dtype=np.float32).reshape(shape))
        contents.types[tensor.name] = tensor.tensor_type.name
        contents.raw[tensor.name] = raw
    return contents
