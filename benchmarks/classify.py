"""Classification (the book's chapter 6): a pretrained scratchllm GPT fine-tuned on labelled texts,
beside a TF-IDF + logistic-regression baseline on the same split, in the same run.

Rows (each on the same 70/10/20 split, seed 123, of the balanced subset when ``--balance``):

- tfidf-logreg: scikit-learn's TfidfVectorizer (word 1-2-grams, sublinear tf) + LogisticRegression,
  fitted on the train split; the reference a fine-tuned model has to beat to be worth its cost.
- pretrained: ``--checkpoint`` fine-tuned by ``scratchllm.finetune.classify.fine_tune`` with each
  ``--lr`` given (the book's recipe: last block + final norm + new head, last-token logits).
- random: the same shape with fresh weights, fine-tuned the same way (the book's "random initial
  weights" ablation), with ``--random``.

The book's figures on its own data (GPT-2 124M, 5 epochs, lr 5e-5) are printed beside them:
train 97.21%, validation 97.32%, test 95.67%; from random weights, test 93.67%.

    .venv/bin/python benchmarks/classify.py --checkpoint runs/pretrained \\
        --data ../shared/data/sms-spam/SMSSpamCollection --columns label,text --balance --random
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from scratchllm.checkpoint import load_checkpoint
from scratchllm.finetune.classify import ClassifySettings, fine_tune
from scratchllm.finetune.labelled import balance, label_names, load_examples, split_examples
from scratchllm.model import GPT, GPTConfig

BOOK = {"tfidf-logreg": None, "pretrained": (0.9721, 0.9732, 0.9567), "random": (None, None, 0.9367)}


def tfidf_baseline(train, val, test) -> dict[str, float]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x_train = vectorizer.fit_transform([t for t, _ in train])
    classifier = LogisticRegression(C=10.0, max_iter=2000).fit(x_train, [lab for _, lab in train])

    def acc(part):
        return float((classifier.predict(vectorizer.transform([t for t, _ in part])) ==
                      [lab for _, lab in part]).mean())

    return {"train": acc(train), "val": acc(val), "test": acc(test), "seconds": time.perf_counter() - start,
            "params": int(x_train.shape[1]) + 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a pretrained checkpoint or run folder")
    parser.add_argument("--data", default="sms-spam", help="sms-spam (downloaded) or a labelled file")
    parser.add_argument("--columns", default=None, help="column names of a file without a header row")
    parser.add_argument("--balance", action="store_true", help="the book's balanced subset")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, nargs="+", default=[5e-5], help="one fine-tuning row per value")
    parser.add_argument("--train", default="last-block")
    parser.add_argument("--random", action="store_true", help="also fine-tune the same shape from random weights")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    columns = args.columns.split(",") if args.columns else None
    examples = load_examples(args.data, columns=columns)
    if Path(args.data).is_file():
        print(f"{args.data}: sha256 {hashlib.sha256(Path(args.data).read_bytes()).hexdigest()}")
    label_names(examples, args.data)
    if args.balance:
        examples = balance(examples, seed=123)
    splits = split_examples(examples, seed=123)
    print(f"{len(examples)} examples: train {len(splits[0])}, validation {len(splits[1])}, test {len(splits[2])}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")

    rows = [("tfidf-logreg", "-", tfidf_baseline(*splits))]
    pretrained, tokenizer = load_checkpoint(args.checkpoint)
    models = [("pretrained", pretrained)]
    if args.random:
        torch.manual_seed(0)
        models.append(("random", GPT(GPTConfig.from_dict(pretrained.config.to_dict()))))
    for name, model in models:
        for lr in args.lr:
            settings = ClassifySettings(epochs=args.epochs, lr=lr, train=args.train)
            with tempfile.TemporaryDirectory() as run:
                r = fine_tune(copy.deepcopy(model), tokenizer, splits, run, settings, progress=False)
            last = r.epochs[-1]
            rows.append((name, f"{lr:g}", {"train": last["train_accuracy"], "val": last["val_accuracy"],
                                           "test": r.test_accuracy, "seconds": r.seconds,
                                           "params": r.trainable_params, "truncated": r.truncated}))
            print(f"  {name} lr {lr:g}: test {r.test_accuracy:.2%} in {r.seconds:.0f} s", flush=True)

    print(f"\nmodel: {pretrained.config.n_layers} layers x {pretrained.config.d_model}, context "
          f"{pretrained.config.context_length}, {pretrained.num_params():,} parameters; {args.epochs} epochs, "
          f"--train {args.train}")
    print(f"| {'row':<13} | {'lr':>6} | {'trained params':>14} | {'train':>7} | {'val':>7} | {'test':>7} | "
          f"{'seconds':>7} | book test |")
    print(f"|{'-' * 15}|{'-' * 8}|{'-' * 16}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 11}|")
    for name, lr, r in rows:
        book = BOOK[name][2] if BOOK[name] else None
        print(f"| {name:<13} | {lr:>6} | {r['params']:>14,} | {r['train']:>7.2%} | {r['val']:>7.2%} | "
              f"{r['test']:>7.2%} | {r['seconds']:>7.1f} | {f'{book:.2%}' if book else '-':>9} |")
    if args.json:
        Path(args.json).write_text(json.dumps([{"row": n, "lr": lr, **r} for n, lr, r in rows], indent=1) + "\n")


if __name__ == "__main__":
    main()
