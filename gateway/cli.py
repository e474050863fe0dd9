"""``poolgate``: the operator's command line. Each subcommand lives in ``gateway/commands/``.

Imports of heavy modules happen inside the commands, so ``poolgate --help`` stays instant.
"""

from __future__ import annotations

import importlib

import click

#: subcommand name -> "module:attribute" (a click command or group). One line per command.
COMMANDS: dict[str, str] = {
    "db": "gateway.commands.db:db",
    "serve": "gateway.commands.serve:serve",
    "pools": "gateway.commands.pools:pools",
    "replay": "gateway.commands.replay:replay",
    "keys": "gateway.commands.keys:keys",
    "train-offline": "gateway.commands.train_offline:train_offline",
    "evaluate": "gateway.commands.evaluate:evaluate",
    "train": "gateway.commands.train:train",
    "routers": "gateway.commands.routers:routers",
    "report": "gateway.commands.report:report",
    "feedback": "gateway.commands.feedback:feedback",
    "embeddings": "gateway.commands.embeddings:embeddings",
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup)
@click.version_option(package_name="poolgate")
def main() -> None:
    """poolgate: an OpenAI-compatible gateway that routes each request to the right model."""


if __name__ == "__main__":
    main()
