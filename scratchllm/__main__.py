"""``python -m scratchllm`` (and ``torchrun -m scratchllm``) run the CLI."""

from scratchllm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
