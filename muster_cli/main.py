"""`muster` command line: Tyger's verbs and flags over the muster.v1 gRPC API."""

from __future__ import annotations

import sys

import click

from muster_cli.app import cli  # its commands' modules load when one runs
from muster_cli.client import fail
from muster_cli.specfile import SpecError


def main(argv: list[str] | None = None) -> None:
    """Entry point: every error is one line on stderr and a non-zero exit code."""
    try:
        cli.main(args=argv, prog_name="muster", standalone_mode=False)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx:
            click.echo(exc.ctx.get_help())
            sys.exit(2)
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
        fail(f"{exc.format_message()}{hint}", 2)
    except click.exceptions.Abort:
        fail("aborted", 130)
    except click.ClickException as exc:
        fail(exc.format_message())
    except SpecError as exc:
        fail(str(exc))
    except (ValueError, OverflowError) as exc:  # a value protobuf cannot hold
        fail(f"invalid value: {exc}")


if __name__ == "__main__":
    main()
