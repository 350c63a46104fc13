"""The guided tour: one sentence walked through every stage of a GPT, in the book's order.

    text -> pre-tokenized chunks -> BPE merges -> token ids -> token + position embeddings
         -> Q, K, V of one head -> scores, causal mask, softmax -> the block's residual stream
         -> final norm and output head -> next-token probabilities -> sampling

Every number the tour prints is recomputed by hand from the model's weights with the formulas
of each stage, and checked against what the model itself computes (``GPT.inspect``), so the
tour is also a proof that the formulas are the model. Pictures go to the ``out`` folder.

With no checkpoint the tour builds a freshly initialized tiny model and a small tokenizer
trained on a built-in paragraph: the shapes and the mechanics are real, the predictions are
noise (it says so).

>>> steps = tour(text="Every effort moves you", out="runs/tour")          # doctest: +SKIP
>>> [s.title for s in steps][:2]                                          # doctest: +SKIP
['The model', '1. Text to chunks and BPE merges']
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scratchllm import viz
from scratchllm.errors import ScratchLLMError
from scratchllm.model.attention import causal_mask
from scratchllm.model.positions import apply_rope, rope_cos_sin, sinusoidal_encoding

DEFAULT_TEXT = "Every effort moves you"  # the book's running example
TOUR_SEED = 123
TEMPERATURES = (0.7, 1.5)

# The opening of Edith Wharton's "The Verdict" (1908, public domain), the book's running text:
# enough for a small tokenizer when the tour runs without a checkpoint.
BUILTIN_TEXT = (
    "I HAD always thought Jack Gisburn rather a cheap genius--though a good fellow enough--so it was no great "
    "surprise to me to hear that, in the height of his glory, he had dropped his painting, married a rich widow, "
    "and established himself in a villa on the Riviera. (Though I rather thought it would have been Rome or "
    "Florence.)\n\n\"The height of his glory\"--that was what the women called it. I can hear Mrs. Gideon "
    "Thwing--his last Chicago sitter--deploring his unaccountable abdication. \"Of course it's going to send the "
    "value of my picture 'way up; but I don't think of that, Mr. Rickham--the loss to Arrt is all I think of.\" "
    "The word, on Mrs. Thwing's lips, multiplied its _rs_ as though they were reflected in an endless vista of "
    "mirrors. And it was not only the Mrs. Thwings who mourned.\n\n"
    "Well!--even through the prism of Hermia's tears I felt able to face the fact with equanimity. Poor "
    "Jack Gisburn! The women had made him--it was fitting that they should mourn him. Among his own sex "
    "fewer regrets were heard, and in his own trade hardly a murmur. Professional jealousy? Perhaps. If "
    "it were, the honour of the craft was vindicated by little Claude Nutley, who, in all good faith, "
    "brought out in the Burlington a very handsome \"obituary\" on Jack--one of those showy articles "
    "stocked with random technicalities that I have heard (I won't say by whom) compared to Gisburn's "
    "painting. And so--his resolve being apparently irrevocable--the discussion gradually died out, and, "
    "as Mrs. Thwing had predicted, the price of \"Gisburns\" went up.\n"
)
BUILTIN_VOCAB_SIZE = 400  # asked for; training stops earlier when no pair repeats


@dataclass
class TourStep:
    """One stage of the tour: what it printed, the pictures it saved, and its values (``data``)."""

    title: str
    lines: list[str] = field(default_factory=list)
    pictures: list[Path] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def render(self) -> str:
        body = "\n".join(f"  {line}" for line in self.lines)
        pics = "".join(f"\n  picture: {p}" for p in self.pictures)
        return f"== {self.title}\n{body}{pics}"


@torch.no_grad()
def tour(
    checkpoint: str | os.PathLike | None = None,
    text: str = DEFAULT_TEXT,
    out: str | os.PathLike = "runs/tour",
    *,
    n_sample_tokens: int = 8,
    echo: Callable[[str], Any] | None = print,
    special: str = "refuse",
) -> list[TourStep]:
    """Walk ``text`` through the model in ``checkpoint`` (or a fresh tiny one) stage by stage.

    ``special``: what a special-token string in ``text`` becomes (``BPETokenizer.encode_user_text``).

    Each step is passed to ``echo`` as soon as it is computed (``None``: silent) and returned;
    pictures are written into ``out``.
    """
    model, tokenizer, origin = _load(checkpoint)
    model.eval()
    ids = tokenizer.encode_user_text(text, special, "--text")
    if not ids:
        raise ScratchLLMError("the tour needs some text: give --text with at least one word")
    cfg = model.config
    if cfg.pos_encoding == "learned" and len(ids) > cfg.context_length:
        raise ScratchLLMError(f"--text is {len(ids)} tokens, this model reads at most {cfg.context_length}: "
                              "give a shorter text")
    out = Path(out)
    labels = viz.token_labels(tokenizer, ids)
    idx = torch.tensor([ids])
    record = model.inspect(idx)
    steps: list[TourStep] = []

    def emit(step: TourStep) -> None:
        steps.append(step)
        if echo is not None:
            echo(step.render())

    emit(_model_step(model, tokenizer, origin))
    emit(_chunks_step(tokenizer, text))
    emit(_ids_step(ids, labels))
    emb_step, x = _embedding_step(model, idx, record, out)
    emit(emb_step)
    qkv_step, q, k = _qkv_step(model, x, labels)
    emit(qkv_step)
    emit(_attention_step(q, k, record, labels, out))
    emit(_residual_step(model, x, record, labels, out))
    emit(_logits_step(record, tokenizer, out))
    emit(_sampling_step(model, tokenizer, ids, record, n_sample_tokens))
    return steps


# -- the model and tokenizer ---------------------------------------------------------------


def _load(checkpoint: str | os.PathLike | None) -> tuple[Any, Any, str]:
    from scratchllm.model import GPT, GPTConfig
    from scratchllm.tokenizer import BPETokenizer

    if checkpoint is not None:
        from scratchllm.checkpoint import load_checkpoint

        model, tokenizer = load_checkpoint(checkpoint)
        if tokenizer is None:
            raise ScratchLLMError(f"{checkpoint} holds no tokenizer/ folder, so its ids cannot be shown as text: "
                                  "use a checkpoint written by `scratchllm train`")
        return model, tokenizer, f"loaded from {checkpoint}"
    tokenizer = BPETokenizer.train(BUILTIN_TEXT, BUILTIN_VOCAB_SIZE, progress=False)
    torch.manual_seed(TOUR_SEED)
    model = GPT(GPTConfig.preset("tiny", vocab_size=tokenizer.vocab_size))
    return model, tokenizer, ("NO CHECKPOINT: a freshly initialized tiny model (random weights, so its "
                              "predictions are noise) and a tokenizer trained on a built-in paragraph")


def _model_step(model: Any, tokenizer: Any, origin: str) -> TourStep:
    cfg = model.config
    return TourStep("The model", [
        origin,
        f"{model.num_params():,} parameters: {cfg.n_layers} blocks, {cfg.n_heads} heads, d_model {cfg.d_model}, "
        f"context {cfg.context_length}, {cfg.pos_encoding} positions, {cfg.norm}, {cfg.ffn}",
        f"tokenizer: {tokenizer.vocab_size:,} ids (256 bytes + {len(tokenizer.merges):,} merges + "
        f"{len(tokenizer.special_tokens)} special tokens)",
    ])


# -- 1-2: text to tokens -------------------------------------------------------------------


def _chunks_step(tokenizer: Any, text: str) -> TourStep:
    from scratchllm.tokenizer.patterns import Splitter

    chunks = Splitter(tokenizer.pattern)(text)
    # Show the merges of the chunk BPE works hardest on (the most merges; the first on ties).
    word = max(chunks, key=lambda c: len(tokenizer.explain_word(c)))
    merges = tokenizer.explain_word(word)
    lines = [
        f"the split pattern ({tokenizer.pattern_name or 'custom'}) cuts the text into {len(chunks)} chunks; "
        "merges never cross a chunk boundary:",
        "  " + " | ".join(repr(c) for c in chunks),
        f"BPE on the chunk {word!r}: start from its {len(word.encode('utf-8'))} UTF-8 bytes, then apply the "
        "learned merges in rank order (lowest id first):",
    ]
    for (left, right), new in merges:
        lines.append(f"  {_show(tokenizer, left)} + {_show(tokenizer, right)} -> {_show(tokenizer, new)}  (id {new})")
    if not merges:
        lines.append("  no merge applies: the chunk stays as single bytes")
    return TourStep("1. Text to chunks and BPE merges", lines, data={"chunks": chunks, "word": word, "merges": merges})


def _ids_step(ids: list[int], labels: list[str]) -> TourStep:
    pairs = "  ".join(f"{i}:{label}" for i, label in zip(ids, labels, strict=True))
    return TourStep("2. Token ids", [
        f"{len(ids)} tokens (id:token, '·' is a space): {pairs}",
        "the model only ever sees these integers",
    ], data={"ids": ids})


# -- 3: embeddings ---------------------------------------------------------------------------


def _embedding_step(model: Any, idx: torch.Tensor, record: dict, out: Path) -> tuple[TourStep, torch.Tensor]:
    cfg = model.config
    T = idx.shape[1]
    table = model.token_embeddings  # (vocab, d)
    tok = table[idx]  # (1, T, d): one row per id
    shared = ", shared with the output head: tied embeddings" if cfg.tie_embeddings else ""
    lines = [
        f"token embedding table: {tuple(table.shape)} (one learned row per id{shared}); "
        f"looked up for our ids: {tuple(tok.shape)}",
    ]
    if cfg.pos_encoding == "learned":
        x = tok + model.pos_emb(torch.arange(T))
        lines.append(f"learned position table pos_emb: {tuple(model.pos_emb.weight.shape)}; rows 0..{T - 1} added "
                     f"to the token vectors")
    elif cfg.pos_encoding == "sinusoidal":
        x = tok + sinusoidal_encoding(torch.arange(T), cfg.d_model)
        lines.append("fixed sinusoidal encoding of positions 0..T-1 added to the token vectors (no parameters)")
    else:
        x = tok
        rotary = " (rotary: queries and keys are rotated inside attention)" if cfg.pos_encoding == "rope" else ""
        lines.append(f"{cfg.pos_encoding} positions: nothing is added here{rotary}")
    lines.append(f"input to the first block x: {tuple(x.shape)} = (batch, tokens, d_model); "
                 f"first token, first 6 numbers: {_numbers(x[0, 0, :6])}")
    lines.append(_check("x equals the model's own embeddings", x, record["embeddings"]))
    picture = viz.plot_sinusoidal_encoding(out / "sinusoidal.png", n_positions=max(64, T), dim=min(cfg.d_model, 128))
    lines.append("the picture shows the sinusoidal encoding of Vaswani et al. PE[p, 2i] = sin(p / 10000^(2i/d)), "
                 "PE[p, 2i+1] = cos(p / 10000^(2i/d))"
                 + ("" if cfg.pos_encoding == "sinusoidal" else f", the fixed alternative to {cfg.pos_encoding}"))
    return TourStep("3. Token and position embeddings", lines, [picture], {"x": x}), x


# -- 4-5: attention --------------------------------------------------------------------------


def _qkv_step(model: Any, x: torch.Tensor, labels: list[str]) -> tuple[TourStep, torch.Tensor, torch.Tensor]:
    cfg = model.config
    block, hd = model.trf_blocks[0], cfg.head_dim
    h = block.norm1(x)[0]  # (T, d): the block normalizes before attention (pre-norm)
    att = block.att
    # W_qkv holds W_query, W_key and W_value side by side: one matmul, then three slices.
    q_all, k_all, v_all = att.W_qkv(h).split(cfg.d_model, dim=-1)  # each (T, d)
    q, k, v = q_all[:, :hd], k_all[:, :hd], v_all[:, :hd]  # head 0: the first head_dim columns
    lines = [
        f"layer 0 normalizes x ({cfg.norm}), then projects it: W_query, W_key, W_value are each "
        f"{tuple(att.W_query.shape)}; {cfg.n_heads} heads split d_model={cfg.d_model} into slices of head_dim={hd}",
        f"head 0: Q, K, V are each (tokens, head_dim) = {tuple(q.shape)}",
        f"  Q[{labels[-1]!r}] = {_numbers(q[-1, :6])} ...  (what this token looks for)",
        f"  K[{labels[0]!r}] = {_numbers(k[0, :6])} ...  (what this token offers to be found by)",
        f"  V[{labels[0]!r}] = {_numbers(v[0, :6])} ...  (what it passes on when attended to)",
    ]
    if cfg.pos_encoding == "rope":
        cos, sin = rope_cos_sin(torch.arange(x.shape[1]), hd, cfg.rope_base)
        q, k = apply_rope(q[None, None], cos, sin)[0, 0], apply_rope(k[None, None], cos, sin)[0, 0]
        lines.append("rotary positions: Q and K are rotated by angles proportional to their position")
    return TourStep("4. Queries, keys and values (layer 0, head 0)", lines, data={"q": q, "k": k, "v": v}), q, k


def _attention_step(q: torch.Tensor, k: torch.Tensor, record: dict, labels: list[str], out: Path) -> TourStep:
    T, hd = q.shape
    scores = q @ k.T / math.sqrt(hd)  # (T, T): how well query i matches key j
    masked = scores.masked_fill(~causal_mask(T, T), float("-inf"))
    weights = torch.softmax(masked, dim=-1)
    last = "  ".join(f"{label}:{w:.2f}" for label, w in zip(labels, weights[-1].tolist(), strict=True))
    lines = [
        f"scores = Q K^T / sqrt({hd}): a {T}x{T} table, row i = query token i, column j = key token j",
        "causal mask: a token may not look at later tokens, so scores above the diagonal become -inf",
        "softmax along each row turns scores into weights that sum to 1 (masked entries get exactly 0)",
        f"weights of the last token {labels[-1]!r}: {last}",
        _check("these weights equal the model's layer 0, head 0 attention", weights, record["attention"][0][0, 0]),
        "each token's output is its row of weights times V: a weighted mix of the values it may see",
    ]
    panels = [("scores Q K^T / sqrt(d_k)", scores), ("after the causal mask", masked),
              ("after softmax", viz.hide_future(weights))]
    pictures = [
        viz.plot_heatmaps(panels, out / "attention-scores.png", labels=labels,
                          title="layer 0, head 0: from scores to attention weights"),
        viz.plot_attention_grid([w[0] for w in record["attention"]], out / "attention.png", labels=labels),
    ]
    lines.append("attention.png shows the weights of every layer and head")
    return TourStep("5. Attention scores, causal mask and softmax", lines, pictures,
                    {"scores": scores, "weights": weights})


# -- 6-8: the block, the head, sampling -----------------------------------------------------


def _residual_step(model: Any, x: torch.Tensor, record: dict, labels: list[str], out: Path) -> TourStep:
    cfg = model.config
    block = model.trf_blocks[0]
    rope = rope_cos_sin(torch.arange(x.shape[1]), cfg.head_dim, cfg.rope_base) if cfg.pos_encoding == "rope" else None
    attn_out = block.att(block.norm1(x), rope)
    x1 = x + attn_out
    ff_out = block.ff(block.norm2(x1))
    x2 = x1 + ff_out
    norms = torch.stack([x[0].norm(dim=-1)] + [r[0].norm(dim=-1) for r in record["residual"]])  # (L+1, T)
    per_layer = ", ".join(f"{n:.2f}" for n in norms.mean(dim=1).tolist())
    lines = [
        "block 0 (pre-norm): x1 = x + attention(norm1(x)); x2 = x1 + feed_forward(norm2(x1))",
        f"mean size (L2 norm) per token: x {x[0].norm(dim=-1).mean():.3f}, attention adds "
        f"{attn_out[0].norm(dim=-1).mean():.3f}, feed-forward ({cfg.ffn}, hidden {cfg.hidden_dim}) adds "
        f"{ff_out[0].norm(dim=-1).mean():.3f}",
        _check("x2 equals the model's output of block 0", x2, record["residual"][0]),
        f"the stream keeps shape {tuple(x2.shape)} through all {cfg.n_layers} blocks; "
        f"mean norm at the input and after each block: {per_layer}",
    ]
    picture = viz.plot_residual_stream(norms, out / "residual.png", labels=labels)
    return TourStep("6. The transformer block and its residual stream", lines, [picture], {"norms": norms})


def _logits_step(record: dict, tokenizer: Any, out: Path) -> TourStep:
    logits = record["logits"]  # (1, T, vocab)
    probs = torch.softmax(logits[0, -1].float(), dim=-1)
    top = torch.topk(probs, 5)
    names = [viz.token_text(tokenizer, i) for i in top.indices.tolist()]
    lines = [
        f"final_norm then out_head (d_model -> vocab) give logits {tuple(logits.shape)}: a score for every "
        "vocabulary entry at every position",
        "the last position's logits predict the next token; softmax makes them probabilities:",
    ]
    for p, name, i in zip(top.values.tolist(), names, top.indices.tolist(), strict=True):
        lines.append(f"  {p:.4f}  {name!r} (id {i})")
    picture = viz.plot_next_token(top.values.tolist(), names, out / "next-token.png",
                                  title="top-5 next tokens after the text")
    return TourStep("7. Logits and the next token", lines, [picture],
                    {"top_ids": top.indices.tolist(), "top_probs": top.values.tolist()})


def _sampling_step(model: Any, tokenizer: Any, ids: list[int], record: dict, n_tokens: int) -> TourStep:
    from scratchllm.generate import generate

    logits = record["logits"][0, -1].float()
    lines = [f"greedy decoding always takes the top token; sampling draws from softmax(logits / temperature) "
             f"({n_tokens} new tokens, seed {TOUR_SEED}):"]
    samples = {}
    for t in TEMPERATURES:
        top = torch.softmax(logits / t, dim=-1).max().item()
        samples[t] = generate(model, [ids], max_new_tokens=n_tokens, temperature=t, seed=TOUR_SEED, crop=True)[0][
            len(ids):]
        lines.append(f"  temperature {t}: top token probability {top:.3f} -> {tokenizer.decode(samples[t])!r}")
    lines.append("low temperature sharpens the distribution (safer, repetitive); high flattens it (varied, riskier)")
    return TourStep("8. Sampling at two temperatures", lines, data={"samples": samples})


# -- small helpers ---------------------------------------------------------------------------


def _show(tokenizer: Any, token_id: int) -> str:
    return repr(viz.token_text(tokenizer, token_id))


def _numbers(values: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:+.3f}" for v in values.tolist()) + "]"


def _check(claim: str, ours: torch.Tensor, model_value: torch.Tensor) -> str:
    diff = (ours.float() - model_value.float()).abs().max().item()
    if diff > 1e-4:
        raise AssertionError(f"tour check failed: {claim} (max difference {diff:.2e})")
    return f"check: {claim} (max difference {diff:.1e})"
