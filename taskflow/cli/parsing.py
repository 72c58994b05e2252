"""The shape of every command's help: a one-line summary in ``taskflow
--help``, then on ``taskflow COMMAND --help`` a description, every option with
its default, and examples.

A command module adds its commands through :class:`Commands`; options every
command shares (``--log-format``) come from one parent parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

Example = tuple[str, str]  # (command line, what it does)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and epilogs (examples, tables),
    with room for long option names before their help."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=34)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        # argparse measures the subcommands' names without their extra indent,
        # so a name as long as "scheduler" pushes its summary to the next line.
        if isinstance(action, argparse._SubParsersAction):
            longest = max((len(name) for name in action.choices), default=0)
            self._action_max_length = max(
                self._action_max_length, longest + self._current_indent + 4
            )


def format_examples(examples: Sequence[Example]) -> str:
    lines = ["examples:"]
    for command, what in examples:
        lines += [f"  {command}", f"      {what}"]
    return "\n".join(lines)


def common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-format",
        choices=("json", "text"),
        default=None,
        help="log lines on stderr; default: TASKFLOW_LOG_FORMAT, else text on a "
        "terminal and json otherwise",
    )
    return common


class Commands:
    """Where command modules add their subcommands (``add``) and groups of
    subcommands (``group``, as ``taskflow tasks show|retry|cancel``)."""

    def __init__(
        self,
        subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
        common: argparse.ArgumentParser,
    ) -> None:
        self._subparsers = subparsers
        self._common = common

    def add(
        self,
        name: str,
        *,
        summary: str,
        description: str | None = None,
        examples: Sequence[Example] = (),
    ) -> argparse.ArgumentParser:
        """``summary`` is the line in the command list; ``description`` opens
        the command's own help (default: the summary)."""
        return self._subparsers.add_parser(
            name,
            help=summary,
            description=description or summary[0].upper() + summary[1:] + ".",
            epilog=format_examples(examples) if examples else None,
            parents=[self._common],
            formatter_class=HelpFormatter,
        )

    def group(
        self,
        name: str,
        *,
        summary: str,
        description: str | None = None,
        examples: Sequence[Example] = (),
    ) -> Commands:
        parser = self._subparsers.add_parser(
            name,
            help=summary,
            description=description or summary[0].upper() + summary[1:] + ".",
            epilog=format_examples(examples) if examples else None,
            formatter_class=HelpFormatter,
        )
        return Commands(
            parser.add_subparsers(
                dest=f"{name}_command", required=True, metavar="COMMAND", title="commands"
            ),
            self._common,
        )
