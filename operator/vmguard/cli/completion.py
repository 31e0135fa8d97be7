"""``vmguard completion bash|zsh|fish``: the shell code that completes ``vmguard`` and
``kubectl-vmguard`` commands and options.

The script asks the program itself (argcomplete's protocol: the shell runs ``vmguard``
with ``_ARGCOMPLETE`` set, :func:`vmguard.cli.main.main` answers from the parser), so
completions never go stale. Install with ``source <(vmguard completion bash)`` or put
the output where the shell loads completions (``docs/cli.md``).
"""

from __future__ import annotations

import argparse
from typing import Any

SHELLS = ("bash", "zsh", "fish")
PROGRAMS = ["vmguard", "kubectl-vmguard"]


def _run(args: argparse.Namespace) -> int:
    import argcomplete

    code = argcomplete.shellcode(PROGRAMS, shell=args.shell)
    if not code.strip() and args.shell == "zsh":
        # argcomplete before 3 completes zsh through zsh's bash compatibility layer.
        code = "autoload -U +X bashcompinit && bashcompinit\n" + argcomplete.shellcode(PROGRAMS)
    print(code, end="")
    return 0


def register(sub: Any) -> None:
    """Add ``completion`` to the top-level sub-parsers."""
    p = sub.add_parser("completion", help="print the shell completion script (bash, zsh, fish)")
    p.add_argument("shell", choices=SHELLS, help="the shell to complete for")
    p.set_defaults(func=_run)
