#!/bin/sh
# One-shot setup for deploy/compose.yaml (service hub-init); safe to run again (keeps keys, CA, passwords).
set -eu
home="${EDGESENTRY_HOME:-/var/lib/edgesentry/hub}"
pg_password="$(cat /run/secrets/postgres_password)"
if [ ! -f "$home/hub.toml" ]; then
  cloud-hub --home "$home" init --broker mqtts://mosquitto:8883 \
    --database-url "postgresql+psycopg://edgesentry:${pg_password}@postgres/edgesentry"
else
  cloud-hub --home "$home" db upgrade
fi
# TLS listener on 8883, CA + server certificate for the names gateways and the hub use, accounts, ACL.
cloud-hub --home "$home" broker-config --out /broker --host mosquitto --host "${BROKER_PUBLIC_HOST:-localhost}" \
  --hub-url mqtts://mosquitto:8883 --run-as mosquitto
cloud-hub --home "$home" web-user set admin --password-stdin < /run/secrets/dashboard_password
echo "hub-init: done (dashboard user: admin)"
