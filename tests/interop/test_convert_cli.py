import shutil

import pytest
import torch

from scratchllm.checkpoint import load_checkpoint
from scratchllm.cli import main
from scratchllm.generate import generate

transformers = pytest.importorskip("transformers")
TEXT = "Hello, world! The café's naïve 🤖 said:\n\n  ok"


def test_convert_from_hf_and_back_runs_in_transformers_with_the_tokenizer(tmp_path, gpt2_files):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_positions=64, n_embd=32, n_layer=2, n_head=2)).eval()
    with torch.no_grad():  # GPT-2's init leaves near-ties between logits; larger weights make greedy decisive
        for p in hf.parameters():
            p.mul_(8)
    hf.save_pretrained(tmp_path / "hf")
    # Hugging Face's vocab.json and merges.txt are OpenAI's encoder.json and vocab.bpe
    shutil.copy(gpt2_files[0], tmp_path / "hf" / "vocab.json")
    shutil.copy(gpt2_files[1], tmp_path / "hf" / "merges.txt")

    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0
    model, tok = load_checkpoint(tmp_path / "ckpt")
    model.eval()
    ids = tok.encode(TEXT)
    with torch.no_grad():
        assert (model(torch.tensor([ids])) - hf(torch.tensor([ids])).logits).abs().max() < 1e-4

    assert main(["convert", "--to-hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "export")]) == 0
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "export").eval()
    assert hf_tok(TEXT)["input_ids"] == ids
    prompt = torch.tensor([ids])
    theirs = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=10, do_sample=False)
    ours = generate(model, [ids], 10)[0]
    assert theirs[0].tolist() == ours
    assert hf_tok.decode(theirs[0]) == tok.decode(ours)


def test_convert_needs_one_direction(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--out", "x"])
    assert "--from-hf" in capsys.readouterr().err
