"""Commands layer, above every stage: the command line's parser and each command's own code.

- ``parser``: argparse, every command's options (``fix``'s only when the command is ``fix``);
- ``common``: the parsed command line turned into the library's terms (settings, the models);
- ``check``, ``stats``, ``fix``, ``docs`` (``rules``, ``rule``, ``schema``), ``demo``: one
  module per command, each a ``cmd_*(args, registry) -> int``.

``convlint.cli.main`` parses, picks the command and turns errors into exit codes. Argparse's
``Namespace`` stays in this layer: the library below it takes settings and options objects,
and no module below it imports ``convlint.cli`` or ``convlint.commands``. Output safety (the
report written to stdout or a file, inputs never overwritten) is ``convlint.output``, shared
with the runner.
"""

from __future__ import annotations

# Each command's module and function, imported when the command runs (start-up stays cheap:
# `rules` and `--help` import neither onnx nor numpy).
COMMANDS = {
    "check": ("convlint.commands.check", "cmd_check"),
    "fix": ("convlint.commands.fix", "cmd_fix"),
    "stats": ("convlint.commands.stats", "cmd_stats"),
    "rules": ("convlint.commands.docs", "cmd_rules"),
    "rule": ("convlint.commands.docs", "cmd_rule"),
    "schema": ("convlint.commands.docs", "cmd_schema"),
    "demo": ("convlint.commands.demo", "cmd_demo"),
}
