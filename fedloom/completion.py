"""`fedloom completion bash|zsh`: a shell completion script generated from the argparse tree.

The script holds, for every sub-command path (`node dataset`, `researcher run`...), the words
that may follow it: its sub-commands and options. zsh runs the same script through its bash
compatibility layer (`bashcompinit`), so both shells complete the same words.
"""

from __future__ import annotations

import argparse
import shlex

__all__ = ["completion_script", "register"]

_BASH = """\
# fedloom shell completion ({shell}). Install: eval "$(fedloom completion {shell})"
{preamble}_fedloom_words() {{
    case "$1" in
{cases}
    esac
}}

_fedloom() {{
    local cur path i word
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    path=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        case " $(_fedloom_words "$path") " in
            *" $word "*) [[ "$word" != -* ]] && path="$path $word" ;;
        esac
    done
    COMPREPLY=($(compgen -W "$(_fedloom_words "$path")" -- "$cur"))
}}

complete -o default -F _fedloom fedloom
"""

_ZSH_PREAMBLE = "autoload -U +X bashcompinit && bashcompinit\n"


def _paths(parser: argparse.ArgumentParser, path: str = "") -> dict[str, list[str]]:
    """Sub-command path -> the words that may follow it."""
    words: list[str] = []
    nested: dict[str, list[str]] = {}
    for action in parser._actions:
        words.extend(o for o in action.option_strings if o.startswith("--") or len(o) == 2)
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                words.append(name)
                nested.update(_paths(child, f"{path} {name}"))
    return {path: words, **nested}


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of `parser`'s command for `shell` ("bash" or "zsh")."""
    cases = "\n".join(
        f"        {shlex.quote(path)}) echo {shlex.quote(' '.join(words))} ;;"
        for path, words in _paths(parser).items()
    )
    preamble = _ZSH_PREAMBLE if shell == "zsh" else ""
    return _BASH.format(shell=shell, preamble=preamble, cases=cases)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `completion` command."""
    parser = sub.add_parser("completion", help="print a shell completion script (bash or zsh)")
    parser.add_argument("shell", choices=("bash", "zsh"))
    parser.set_defaults(func=_cmd_completion)


def _cmd_completion(args: argparse.Namespace) -> int:
    from fedloom.cli import build_parser

    print(completion_script(build_parser(), args.shell), end="")
    return 0
