"""The CLI starts light: what only some commands need (YAML, cryptography,
the buffers' HTTP client, the control plane and agent packages) is imported
when such a command runs, not at every start."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("yaml", "cryptography", "aiohttp", "controlplane", "agent")


def probe(code: str) -> list[str]:
    """The lines a fresh interpreter prints running `code`."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.splitlines()


def test_starting_the_cli_imports_nothing_only_some_commands_need() -> None:
    out = probe(
        "import sys\n"
        "from muster_cli.main import main\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    assert out == [""], f"imported at start: {out}"


def test_yaml_output_and_spec_files_still_load_it() -> None:
    out = probe(
        "import sys\n"
        "from muster_cli.output import dump\n"
        "print(dump({'a': 1}, 'yaml'))\n"
        "print('yaml' in sys.modules)\n"
    )
    assert out == ["a: 1", "True"]


def test_a_command_loads_its_own_module_only() -> None:
    out = probe(
        "import sys\n"
        "from muster_cli.main import main\n"
        "sys.argv = ['muster', 'run', 'show', '--help']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "others = ('auth', 'buffers', 'codespecs', 'images', 'nodes')\n"
        "print(','.join(m for m in others if 'muster_cli.' + m in sys.modules))\n"
        "print('muster_cli.runs' in sys.modules)\n"
    )
    assert out[-2:] == ["", "True"], out
