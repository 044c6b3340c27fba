"""The hub home directory: config, database, signing key, model artifacts and bundles."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from cloud_hub import db
from cloud_hub.config import DEFAULT_TOML, HubConfig, load_hub_config
from cloud_hub.db import migrate
from shared import signing
from shared.schema import load

DEFAULT_HOME = Path(os.environ.get("EDGESENTRY_HOME", "~/.edgesentry")).expanduser()


class HubHomeError(RuntimeError):
    pass


@dataclass
class HubHome:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "hub.toml"

    @property
    def key_path(self) -> Path:
        return self.path / "keys" / "hub_ed25519.pem"

    @property
    def public_key_path(self) -> Path:
        return self.path / "keys" / "hub_ed25519.pub"

    @property
    def models_dir(self) -> Path:
        return self.path / "models"

    @property
    def bundles_dir(self) -> Path:
        return self.path / "bundles"

    def init(self, broker_url: str = "mqtt://127.0.0.1:1883", force: bool = False, database_url: str = "") -> bool:
        """Create the home and its database schema. Returns False if it exists: then only the schema is
        upgraded. ``database_url`` (SQLAlchemy URL, e.g. PostgreSQL) goes into hub.toml; empty = SQLite."""
        if self.config_path.exists() and not force:
            self.upgrade_db()
            return False
        self.path.mkdir(parents=True, exist_ok=True)
        text = DEFAULT_TOML.format(broker_url=broker_url)
        if database_url:
            comment, _, rest = text.partition("\n")
            text = f"{comment}\n{tomli_w.dumps({'database_url': database_url})}\n{rest}"
        self.config_path.write_text(text)
        if not self.key_path.exists():
            key = signing.generate_private_key()
            signing.save_private_key(key, self.key_path)
            self.public_key_path.write_text(signing.public_key_b64(key) + "\n")
        self.models_dir.mkdir(exist_ok=True)
        self.bundles_dir.mkdir(exist_ok=True)
        self.upgrade_db()
        return True

    def require(self) -> None:
        if not self.config_path.exists():
            raise HubHomeError(f"no hub at {self.path}: run `cloud-hub init --home {self.path}` first")

    def config(self) -> HubConfig:
        self.require()
        return load_hub_config(self.config_path)

    def update_config(self, changes: dict[str, dict[str, Any]]) -> HubConfig:
        """Merge ``{section: {key: value}}`` into hub.toml, validate, write atomically (mode 0600: it can
        hold the hub's broker password).  Comments in the file are not kept."""
        self.require()
        data = tomllib.loads(self.config_path.read_text())
        for section, values in changes.items():
            data.setdefault(section, {}).update(values)
        cfg = load(HubConfig, data)  # refuse to write a config the hub could not load
        tmp = self.config_path.with_suffix(".toml.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("# edgesentry hub configuration; see docs/architecture.md. Rewritten by cloud-hub broker-config.\n")
            fh.write(tomli_w.dumps(data))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.config_path)
        return cfg

    @property
    def broker_dir(self) -> Path:
        """Where the broker's passwd/acl/conf/TLS files live (hub.toml [fleet] broker_dir)."""
        configured = self.config().fleet.broker_dir
        return Path(configured).expanduser() if configured else self.path / "broker"

    def database_url(self) -> str:
        return self.config().database_url or f"sqlite:///{self.path / 'hub.db'}"

    def engine(self) -> Engine:
        """This process's one engine for the hub database (cached per URL)."""
        return db.engine_for(self.database_url())

    def upgrade_db(self) -> tuple[str | None, str]:
        """Create or upgrade the schema to the newest revision (`init`, `serve`, `cloud-hub db upgrade`)."""
        return migrate.upgrade(self.engine())

    def sessions(self) -> sessionmaker:  # type: ignore[type-arg]
        """Sessions on the hub database; raises :class:`DatabaseSchemaError` (naming `cloud-hub db upgrade`)
        if its schema is not the newest."""
        engine = self.engine()
        migrate.require_current(engine)
        return db.session_factory(engine)

    def signing_key(self) -> Ed25519PrivateKey:
        return signing.load_private_key(self.key_path)

    def public_key(self) -> str:
        return self.public_key_path.read_text().strip()
