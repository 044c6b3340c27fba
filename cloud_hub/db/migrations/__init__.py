"""Alembic environment of the hub database (``env.py``, ``script.py.mako``, ``versions/``).

Run through :mod:`cloud_hub.db.migrate` (``cloud-hub db upgrade``); there is no alembic.ini.
"""
