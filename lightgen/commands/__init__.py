"""The command modules of the `lightgen` CLI, all typer, each registering its command (group) on the app.

``train`` (train, sample) · ``dpo`` (dpo, dpo pairs) · ``data`` (data build|show) · ``geneval`` (prompts,
sample, evaluate, summary, import) · ``sweep`` · ``runs`` (export, import) · ``bench``. A command parses and
checks its arguments, then calls the library (``lightgen.pipeline``, ``lightgen.sweep``, …); errors go
through ``lightgen.cliutil.user_errors``.
"""

from lightgen.commands import bench, data, dpo, geneval, runs, sweep, train

COMMANDS = (data, train, dpo, geneval, sweep, bench, runs)
