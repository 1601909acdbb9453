"""The client credential file: where the control plane is, which CA vouches
for it, and the bearer token to present.

The control plane writes one for its administrator on first start; `muster
login` writes one for anybody else. It is JSON so that every language reads
it without a YAML library (the Node.js example does). Keys use camelCase like
the rest of muster's files:

    {"server": "10.0.0.1:50051", "caCert": "-----BEGIN CERTIFICATE-----...",
     "token": "mst_..."}

`insecure: true` instead of `caCert` talks plaintext to a control plane
started with `--insecure` on loopback.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from muster.common.files import write_private


class ConfigError(ValueError):
    """The credential file is missing, unreadable or malformed."""


@dataclass(frozen=True)
class ClientConfig:
    """Where and how to reach a control plane."""

    server: str
    ca_pem: str = ""
    token: str = ""
    insecure: bool = False

    def to_json(self) -> str:
        """The file's content."""
        doc: dict[str, object] = {"server": self.server}
        if self.insecure:
            doc["insecure"] = True
        else:
            doc["caCert"] = self.ca_pem
        if self.token:
            doc["token"] = self.token
        return json.dumps(doc, indent=2) + "\n"

    def save(self, path: Path) -> None:
        """Write with mode 0600: the file holds a secret."""
        write_private(path, self.to_json().encode())


def load(path: Path) -> ClientConfig:
    """Read a credential file, naming the file and the problem on any error."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"credential file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read credential file {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"credential file {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"credential file {path} must hold a JSON object")
    unknown = set(doc) - {"server", "caCert", "token", "insecure"}
    if unknown:
        raise ConfigError(f"credential file {path}: unknown field '{sorted(unknown)[0]}'")
    for key in ("server", "caCert", "token"):
        if key in doc and not isinstance(doc[key], str):
            raise ConfigError(f"credential file {path}: '{key}' must be a string")
    insecure = doc.get("insecure", False)
    if not isinstance(insecure, bool):
        raise ConfigError(f"credential file {path}: 'insecure' must be true or false")
    if not doc.get("server"):
        raise ConfigError(f"credential file {path} has no 'server'")
    if not insecure and not doc.get("caCert"):
        raise ConfigError(f"credential file {path} has no 'caCert' (or 'insecure': true)")
    return ClientConfig(doc["server"], doc.get("caCert", ""), doc.get("token", ""), insecure)


def data_home() -> Path:
    """$XDG_DATA_HOME, else ~/.local/share."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


def config_home() -> Path:
    """$XDG_CONFIG_HOME, else ~/.config."""
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def default_state_dir() -> Path:
    """The control plane's default state directory (database, CA, admin credentials)."""
    return data_home() / "muster"


ADMIN_FILE = "admin.json"
"""Name of the administrator's credential file in the control plane's state directory."""
