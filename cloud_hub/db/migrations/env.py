"""Alembic runs this for every command; :mod:`cloud_hub.db.migrate` hands it an open connection."""

from __future__ import annotations

from alembic import context

from cloud_hub.db.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through cloud_hub.db.migrate (`cloud-hub db upgrade`), not bare alembic")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: batch mode copies the table ("move and copy").
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    compare_server_default=True,
)
with context.begin_transaction():
    context.run_migrations()
