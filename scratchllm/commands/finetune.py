"""``scratchllm finetune classify|instruct|dpo --checkpoint C --data FILE --out RUN``: a pretrained GPT becomes a
classifier, learns to follow instructions, or to prefer the chosen answer of each pair."""

from __future__ import annotations

import argparse

from scratchllm.commands._model import add_model_source


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a pretrained checkpoint for a task (classify, instruct, dpo)",
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
    add_model_source(c, "a pretrained checkpoint or run folder (newest)")
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
                   "(e.g. last-2), all, or lora (only LoRA adapters, the head's included: the book's appendix E)")
    add_lora_flags(c, "all")
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
    _register_instruct(tasks)
    _register_dpo(tasks)


def add_lora_flags(parser: argparse.ArgumentParser, targets: str) -> None:
    """``--lora-rank``, ``--lora-alpha``, ``--lora-targets``: the adapters of ``--train lora``."""
    parser.add_argument("--lora-rank", type=int, default=16, metavar="R", help="with --train lora: the adapters' "
                        "rank (default 16)")
    parser.add_argument("--lora-alpha", type=float, default=16.0, metavar="A", help="with --train lora: the "
                        "update's scale is alpha / rank (default 16)")
    parser.add_argument("--lora-targets", default=targets, metavar="LIST", help="with --train lora: which linear "
                        f"layers get adapters, some of attention,ffn,head, or all (default {targets})")


def lora_settings(args: argparse.Namespace) -> dict:
    """The settings' LoRA fields from the flags."""
    targets = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    return {"lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha, "lora_targets": targets}


def _register_instruct(tasks: argparse._SubParsersAction) -> None:
    c = tasks.add_parser(
        "instruct",
        help="instruction tuning: the model learns to answer (the book's chapter 7)",
        description="Fine-tune --checkpoint to follow instructions (the book's chapter 7): each record of --data "
        "becomes a prompt in --template and its response, closed by <|endoftext|>; batches are padded with "
        "<|padding|> to their longest text and only the first target after each text (its end) is scored, the "
        "padding is not. The records are split in file order as the book does (85% train, 10% test, the rest "
        "validation). Prints the held-out loss before and after; RUN gets checkpoints (with the template, for "
        "`scratchllm chat`), metrics.jsonl, loss.png, results.json and responses.json (the model's answer to "
        "every test prompt), and with --judge-url the judge's 0-100 scores (the book's prompt).",
    )
    add_model_source(c, "a pretrained checkpoint or run folder (newest)")
    c.add_argument("--data", required=True, metavar="FILE|book-instructions",
                   help="a .json array or .jsonl file of {instruction, input, output} records (the book's format) "
                   "or {messages: [...]} conversations; or book-instructions: the book's 1,100 records, downloaded "
                   "into the data cache")
    c.add_argument("--out", required=True, metavar="RUN", help="the run folder to write")
    c.add_argument("--template", default="alpaca", metavar="NAME",
                   help="the prompt template: alpaca (the book's, default) or chat (### User / ### Assistant)")
    c.add_argument("--epochs", type=int, default=2, metavar="N", help="passes over the training split (default 2)")
    c.add_argument("--batch-size", type=int, default=8, metavar="B", help="records per step (default 8)")
    c.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate, constant (default 5e-5, the book's)")
    c.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay (default 0.1)")
    c.add_argument("--train", choices=("all", "lora"), default="all",
                   help="all: every weight (the book's, default); lora: only LoRA adapters, the rest frozen")
    add_lora_flags(c, "attention,ffn")
    c.add_argument("--mask-prompt", action="store_true", help="learn only the responses: the prompt's targets "
                   "are not scored (the book's exercise 7.2)")
    c.add_argument("--eval-every", type=int, default=0, metavar="STEPS",
                   help="steps between validation losses (default: four times per epoch)")
    c.add_argument("--max-new-tokens", type=int, default=256, metavar="N",
                   help="the longest answer to each test prompt in responses.json (default 256; 0: none)")
    c.add_argument("--judge-url", default=None, metavar="URL", help="an OpenAI-compatible endpoint (e.g. Ollama's "
                   "http://localhost:11434/v1) whose model scores each test answer from 0 to 100")
    c.add_argument("--judge-model", default=None, metavar="NAME", help="the judge's model name (e.g. llama3)")
    c.add_argument("--seed", type=int, default=123, help="the order of the batches (default 123, the book's)")
    c.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32", help="default fp32")
    c.add_argument("--cache-dir", default=None, metavar="DIR", help="where book-instructions is downloaded")
    c.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    c.add_argument("--quiet", action="store_true", help="no progress bar or evaluation lines")
    c.set_defaults(func=run_instruct)


def run_classify(args: argparse.Namespace) -> int:
    from scratchllm.commands._model import load_model_source, source_name
    from scratchllm.errors import ScratchLLMError
    from scratchllm.finetune.classify import ClassifySettings, describe_epochs, fine_tune
    from scratchllm.finetune.labelled import balance, label_names, load_examples, split_examples

    settings = ClassifySettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                weight_decay=args.weight_decay, train=args.train, pooling=args.pooling,
                                padding=args.padding, seed=args.seed, precision=args.precision,
                                truncate=not args.no_truncate, **lora_settings(args))
    columns = [name.strip() for name in args.columns.split(",")] if args.columns else None
    examples = load_examples(args.data, text_column=args.text_column, label_column=args.label_column,
                             columns=columns, cache_dir=args.cache_dir)
    label_names(examples, args.data)  # one class only: say so before loading the model
    if args.balance:
        examples = balance(examples, seed=args.seed)
    splits = split_examples(examples, seed=args.seed)
    model, tokenizer = load_model_source(args)
    if tokenizer is None:
        raise ScratchLLMError(f"{source_name(args)} holds no tokenizer, so the texts cannot be encoded")
    print(f"{args.data}: {len(examples):,} examples; train {len(splits[0]):,}, validation {len(splits[1]):,}, "
          f"test {len(splits[2]):,}")
    result = fine_tune(model, tokenizer, splits, args.out, settings, resume=args.resume, progress=not args.quiet)
    for line in describe_epochs(result):
        print(line)
    print(f"test accuracy {result.test_accuracy:.2%} (loss {result.test_loss:.4f}) over {len(splits[2]):,} texts; "
          f"{result.trainable_params:,} parameters trained in {result.seconds:.0f} s; labels: "
          f"{', '.join(result.labels)}; figures in {args.out}/results.json, accuracy.png, confusion.png")
    return 0


def _register_dpo(tasks: argparse._SubParsersAction) -> None:
    c = tasks.add_parser(
        "dpo",
        help="preference tuning with DPO: prefer the chosen answer over the rejected (the book's bonus chapter)",
        description="Tune an instruction-tuned --checkpoint with direct preference optimisation on --data: for each "
        "prompt the model learns to give its chosen answer a higher log-probability, relative to a frozen copy of "
        "where it started, than the rejected one (loss -log sigmoid(beta * margin); log 2 = 0.693 at the start). "
        "The records are split as the book does (85% train, 10% test, the rest validation). Prints the loss, "
        "rewards and margin before and after; RUN gets checkpoints, metrics.jsonl (loss_chosen_reward, "
        "loss_rejected_reward, loss_margin per step), loss.png and results.json.",
    )
    add_model_source(c, "an instruction-tuned run or checkpoint")
    c.add_argument("--data", required=True, metavar="FILE|book-preferences",
                   help="a .json array or .jsonl file of {prompt or instruction/input, chosen, rejected} records (the "
                   "book's preference format), or book-preferences: the book's 1,100 pairs, downloaded into the cache")
    c.add_argument("--out", required=True, metavar="RUN", help="the run folder to write")
    c.add_argument("--template", default=None, metavar="NAME",
                   help="the prompt template (default: the one --checkpoint was tuned with, else alpaca)")
    c.add_argument("--beta", type=float, default=0.1, help="how far from the reference the model may move: the "
                   "margin's scale in the loss (default 0.1, the book's)")
    c.add_argument("--epochs", type=int, default=1, metavar="N", help="passes over the training pairs (default 1)")
    c.add_argument("--batch-size", type=int, default=8, metavar="B", help="pairs per step (default 8)")
    c.add_argument("--lr", type=float, default=5e-6, help="AdamW learning rate, constant (default 5e-6, the book's)")
    c.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01, the book's)")
    c.add_argument("--eval-every", type=int, default=5, metavar="STEPS", help="steps between validation losses "
                   "(default 5, the book's)")
    c.add_argument("--seed", type=int, default=123, help="the order of the batches (default 123)")
    c.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32", help="default fp32")
    c.add_argument("--cache-dir", default=None, metavar="DIR", help="where book-preferences is downloaded")
    c.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    c.add_argument("--quiet", action="store_true", help="no progress bar or evaluation lines")
    c.set_defaults(func=run_dpo)


def run_dpo(args: argparse.Namespace) -> int:
    from scratchllm.commands._model import load_model_source, source_name
    from scratchllm.errors import ScratchLLMError
    from scratchllm.finetune.dpo import DPOSettings, describe, tune
    from scratchllm.finetune.records import book_split, load_records
    from scratchllm.finetune.templates import DEFAULT_TEMPLATE, checkpoint_template

    stored = checkpoint_template(args.checkpoint) if args.checkpoint else None  # a classifier is refused here
    template = args.template or (stored.name if stored else DEFAULT_TEMPLATE)
    settings = DPOSettings(template=template, beta=args.beta, epochs=args.epochs, batch_size=args.batch_size,
                           lr=args.lr, weight_decay=args.weight_decay, eval_every=args.eval_every, seed=args.seed,
                           precision=args.precision)
    records = load_records(args.data, cache_dir=args.cache_dir)
    splits = book_split(records)
    model, tokenizer = load_model_source(args)
    if tokenizer is None:
        raise ScratchLLMError(f"{source_name(args)} holds no tokenizer, so the records cannot be encoded")
    print(f"{args.data}: {len(records):,} pairs; train {len(splits[0]):,}, validation {len(splits[1]):,}, "
          f"test {len(splits[2]):,}; template {template}, beta {args.beta:g}")
    result = tune(model, tokenizer, splits, args.out, settings, resume=args.resume, progress=not args.quiet)
    for line in describe(result):
        print(line)
    print(f"{result.trainable_params:,} parameters trained in {result.seconds:.0f} s; figures in "
          f"{args.out}/results.json and metrics.jsonl")
    return 0


def run_instruct(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict
    from pathlib import Path

    from scratchllm.commands._model import check_language_model, load_model_source, source_name
    from scratchllm.errors import ScratchLLMError
    from scratchllm.fileio import atomic_write_json
    from scratchllm.finetune.instruct import RESULTS_FILE, InstructSettings, describe_losses, fine_tune
    from scratchllm.finetune.judge import judge_responses
    from scratchllm.finetune.records import book_split, load_records

    if (args.judge_url is None) != (args.judge_model is None):
        raise ScratchLLMError("--judge-url and --judge-model go together: give both, or neither")
    settings = InstructSettings(template=args.template, train=args.train, **lora_settings(args), epochs=args.epochs,
                                batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                                mask_prompt=args.mask_prompt,
                                eval_every=args.eval_every, max_new_tokens=args.max_new_tokens, seed=args.seed,
                                precision=args.precision)
    records = load_records(args.data, cache_dir=args.cache_dir)
    splits = book_split(records)
    model, tokenizer = load_model_source(args)
    check_language_model(model, tokenizer, source_name(args), "the records",
                         hint="instruction tuning starts from a language model")
    print(f"{args.data}: {len(records):,} records; train {len(splits[0]):,}, validation {len(splits[1]):,}, "
          f"test {len(splits[2]):,}")
    result = fine_tune(model, tokenizer, splits, args.out, settings, resume=args.resume, progress=not args.quiet)
    for line in describe_losses(result):
        print(line)
    print(f"{result.trainable_params:,} parameters trained in {result.seconds:.0f} s; answers to the test prompts in "
          f"{result.responses}")
    if args.judge_url is not None:
        answers = json.loads(Path(result.responses).read_text(encoding="utf-8"))
        judged = judge_responses(answers, args.judge_url, args.judge_model, progress=not args.quiet)
        results = {**asdict(result), "judge": {"model": judged.model, "mean": judged.mean, "scores": judged.scores,
                                                "unparsed": judged.unparsed}}
        atomic_write_json(Path(args.out) / RESULTS_FILE, results)
        mean = "no score" if judged.mean is None else f"mean score {judged.mean:.2f} / 100"
        print(f"judge {judged.model}: {mean} over {judged.scored} of {len(answers)} answers"
              + (f" ({len(judged.unparsed)} replies were not a number from 0 to 100)" if judged.unparsed else ""))
    return 0
