#!/bin/sh
# Install the edgesentry edge agent on a gateway (Raspberry Pi OS / Debian): a venv under /opt/edgesentry,
# a system user, /etc/edgesentry for the config and the broker password, and the systemd unit.
# Usage (from a checkout or an unpacked source archive, as root):
#   sudo deploy/install-gateway.sh [--config agent.toml] [--password-file FILE] [--extra edge|edge-tflite]
#                                  [--source PIP_SPEC] [--prefix /opt/edgesentry] [--no-service] [--dry-run]
# Re-running upgrades the agent in place and keeps an existing config and password.
# See docs/install-gateway.md.
set -eu

PREFIX=/opt/edgesentry
ETC=/etc/edgesentry
USER_NAME=edgesentry
HERE=$(cd "$(dirname "$0")/.." && pwd)
SOURCE=$HERE
EXTRA=""
CONFIG=""
PASSWORD_FILE=""
SERVICE=1
DRY=0

die() { echo "install-gateway: $*" >&2; exit 1; }
run() { if [ "$DRY" = 1 ]; then echo "+ $*"; else "$@"; fi; }

while [ $# -gt 0 ]; do
    case "$1" in
        --config) CONFIG=$2; shift 2 ;;
        --password-file) PASSWORD_FILE=$2; shift 2 ;;
        --extra) EXTRA=$2; shift 2 ;;
        --source) SOURCE=$2; shift 2 ;;
        --prefix) PREFIX=$2; shift 2 ;;
        --no-service) SERVICE=0; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

[ "$DRY" = 1 ] || [ "$(id -u)" = 0 ] || die "run as root (sudo $0 ...)"
[ -z "$CONFIG" ] || [ -f "$CONFIG" ] || die "no such config file: $CONFIG"
[ -z "$PASSWORD_FILE" ] || [ -f "$PASSWORD_FILE" ] || die "no such password file: $PASSWORD_FILE"

# 64-bit userland gets LiteRT; a 32-bit one (armv7l Raspberry Pi OS) has no LiteRT wheels: tflite-runtime.
if [ -z "$EXTRA" ]; then
    if [ "$(getconf LONG_BIT)" = 32 ]; then EXTRA=edge-tflite; else EXTRA=edge; fi
fi
case "$EXTRA" in edge|edge-tflite) ;; *) die "--extra must be edge or edge-tflite" ;; esac

PY=$(command -v python3) || die "python3 not found: apt-get install -y python3 python3-venv"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "Python >= 3.11 needed ($("$PY" -V)); Raspberry Pi OS Bookworm ships 3.11"
"$PY" -m venv --help >/dev/null 2>&1 || die "python3-venv missing: apt-get install -y python3-venv"

echo "install-gateway: $EXTRA extra, $("$PY" -V), venv $PREFIX/venv, config $ETC"
if ! id "$USER_NAME" >/dev/null 2>&1; then
    run useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$USER_NAME"
fi
run mkdir -p "$PREFIX"
[ -x "$PREFIX/venv/bin/python" ] || run "$PY" -m venv "$PREFIX/venv"
run "$PREFIX/venv/bin/pip" install --quiet --upgrade pip
# Piwheels (preconfigured on Raspberry Pi OS in /etc/pip.conf) supplies the 32-bit ARM wheels.
run "$PREFIX/venv/bin/pip" install --quiet --upgrade "$SOURCE[$EXTRA]"
if [ -d "$HERE/docs" ]; then run mkdir -p "$PREFIX/docs" && run cp "$HERE/docs/install-gateway.md" "$PREFIX/docs/"; fi

# Config: readable by the agent's group only; the password lives apart as a systemd credential (root only,
# handed to the service by LoadCredential=, so the agent user never reads the file itself).
run install -d -m 0750 -o root -g "$USER_NAME" "$ETC"
run install -d -m 0700 -o root -g root "$ETC/credentials"
if [ -n "$CONFIG" ] && [ ! -f "$ETC/agent.toml" ]; then
    run install -m 0640 -o root -g "$USER_NAME" "$CONFIG" "$ETC/agent.toml"
fi
if [ -n "$PASSWORD_FILE" ]; then
    run install -m 0600 -o root -g root "$PASSWORD_FILE" "$ETC/credentials/broker-password"
elif [ ! -f "$ETC/credentials/broker-password" ]; then
    run install -m 0600 -o root -g root /dev/null "$ETC/credentials/broker-password"
fi

if [ "$SERVICE" = 1 ]; then
    UNIT=/etc/systemd/system/edge-agent.service
    if [ "$DRY" = 1 ]; then
        echo "+ install $HERE/deploy/systemd/edge-agent.service -> $UNIT (prefix $PREFIX)"
    else
        sed "s|/opt/edgesentry|$PREFIX|g" "$HERE/deploy/systemd/edge-agent.service" > "$UNIT"
        chmod 0644 "$UNIT"
    fi
    run systemctl daemon-reload
fi

cat <<EOF

Installed. Next:
  1. Edit $ETC/agent.toml (device_id, trusted_keys, profile, [broker] url/username,
     password_credential = "broker-password", state_dir = "/var/lib/edgesentry").
  2. Check the gateway:
       sudo CREDENTIALS_DIRECTORY=$ETC/credentials $PREFIX/venv/bin/edge-agent doctor --config $ETC/agent.toml
  3. Start the service:   sudo systemctl enable --now edge-agent
     Follow it:           journalctl -u edge-agent -f
EOF
