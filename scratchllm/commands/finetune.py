"""``scratchllm finetune classify --checkpoint C --data FILE --out RUN``: a pretrained GPT becomes a classifier."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained checkpoint for a task (classify)",
        description="Fine-tune a pretrained checkpoint for a task; one sub-command per task.",
    )
    tasks = p.add_subparsers(dest="task", metavar="TASK")
    tasks.required = True
    c = tasks.add_parser(
        "classify",
        help="text classification: a new head with one row per class (the book's chapter 6)",
        description="Fine-tune --checkpoint as a text classifier on --data (the book's chapter 6): a new output head "
        "with one row per label, trained with the last transformer block and the final norm (--train); the logits "
        "at each text's last real token are its prediction; batches are padded with <|padding|> to their longest "
        "text. The examples are shuffled (--seed) and split 70/10/20 into train, validation and test; each epoch "
        "prints train and validation accuracy, the end the test accuracy. RUN gets checkpoints (with the label "
        "names), metrics.jsonl, results.json, accuracy.png and confusion.png.",
    )
    c.add_argument("--checkpoint", required=True, metavar="PATH", help="a pretrained checkpoint or run folder (newest)")
    c.add_argument("--data", required=True, metavar="FILE|sms-spam",
                   help="a .csv, .tsv or .jsonl file of labelled texts, or sms-spam: the book's SMS Spam Collection, "
                   "downloaded from UCI into the data cache")
    c.add_argument("--out", required=True, metavar="RUN", help="the run folder to write")
    c.add_argument("--text-column", default="text", metavar="NAME", help="the column holding the text (default text)")
    c.add_argument("--label-column", default="label", metavar="NAME", help="the column holding the label "
                   "(default label)")
    c.add_argument("--columns", default=None, metavar="A,B", help="the column names of a CSV/TSV file without a "
                   "header row, e.g. label,text")
    c.add_argument("--balance", action="store_true", help="keep as many examples of each label as the rarest has "
                   "(the book: 747 ham + 747 spam), drawn with --seed")
    c.add_argument("--epochs", type=int, default=5, metavar="N", help="passes over the training split (default 5)")
    c.add_argument("--batch-size", type=int, default=8, metavar="B", help="texts per step (default 8)")
    c.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate, constant (default 5e-5, the book's)")
    c.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default 0.1)")
    c.add_argument("--train", default="last-block", metavar="WHAT",
                   help="what trains besides the new head: last-block (with the final norm; default), last-N blocks "
                   "(e.g. last-2), or all")
    c.add_argument("--pooling", choices=("last", "mean"), default="last",
                   help="last: the logits of the last real token (default); mean: their mean over the real tokens")
    c.add_argument("--padding", choices=("longest", "context"), default="longest",
                   help="pad each batch to its longest text (default) or to the model's whole context")
    c.add_argument("--no-truncate", action="store_true", help="refuse a text longer than the model's context "
                   "(default: read its first context_length tokens, and say how many texts were cut)")
    c.add_argument("--seed", type=int, default=123, help="the split, the balance, the order and the new head "
                   "(default 123, the book's)")
    c.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32", help="default fp32")
    c.add_argument("--cache-dir", default=None, metavar="DIR", help="where sms-spam is downloaded")
    c.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    c.add_argument("--quiet", action="store_true", help="no progress bar or evaluation lines")
    c.set_defaults(func=run_classify)


def run_classify(args: argparse.Namespace) -> int:
    from scratchllm.checkpoint import load_checkpoint
    from scratchllm.errors import ScratchLLMError
    from scratchllm.finetune.classify import ClassifySettings, describe_epochs, fine_tune
    from scratchllm.finetune.labelled import balance, label_names, load_examples, split_examples

    settings = ClassifySettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                weight_decay=args.weight_decay, train=args.train, pooling=args.pooling,
                                padding=args.padding, seed=args.seed, precision=args.precision,
                                truncate=not args.no_truncate)
    columns = [name.strip() for name in args.columns.split(",")] if args.columns else None
    examples = load_examples(args.data, text_column=args.text_column, label_column=args.label_column,
                             columns=columns, cache_dir=args.cache_dir)
    label_names(examples, args.data)  # one class only: say so before loading the model
    if args.balance:
        examples = balance(examples, seed=args.seed)
    splits = split_examples(examples, seed=args.seed)
    model, tokenizer = load_checkpoint(args.checkpoint)
    if tokenizer is None:
        raise ScratchLLMError(f"{args.checkpoint} holds no tokenizer/ folder, so the texts cannot be encoded")
    print(f"{args.data}: {len(examples):,} examples; train {len(splits[0]):,}, validation {len(splits[1]):,}, "
          f"test {len(splits[2]):,}")
    result = fine_tune(model, tokenizer, splits, args.out, settings, resume=args.resume, progress=not args.quiet)
    for line in describe_epochs(result):
        print(line)
    print(f"test accuracy {result.test_accuracy:.2%} (loss {result.test_loss:.4f}) over {len(splits[2]):,} texts; "
          f"{result.trainable_params:,} parameters trained in {result.seconds:.0f} s; labels: "
          f"{', '.join(result.labels)}; figures in {args.out}/results.json, accuracy.png, confusion.png")
    return 0
