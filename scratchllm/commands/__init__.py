"""One module per CLI command; each defines ``register(subparsers)``.

A command module only parses its arguments, calls the library and prints: the work itself
lives in the pipeline-stage packages, usable from Python without the CLI.
"""
