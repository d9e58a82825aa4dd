#!/bin/sh
# Installs the Debian packages the test suite needs, when they are missing.
# Safe to run repeatedly; does nothing when everything is present.
#   docker-compose  the compose tests
#   postgresql      the findings-store tests start their own throwaway PostgreSQL server
#                   (Debian keeps initdb/pg_ctl under /usr/lib/postgresql/<version>/bin)
#   nmap            the nmap scanner adapter's tests (connect scans of 127.0.0.1 only)
#   chromium        the Web UI check (tests/test_webui_codec.py): Playwright drives
#                   /usr/bin/chromium; no browser build is downloaded
set -eu
missing=""
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || missing="$missing docker-compose"
have_initdb=""
for f in /usr/lib/postgresql/*/bin/initdb; do
  [ -x "$f" ] && have_initdb="yes"
done
[ -n "$have_initdb" ] || missing="$missing postgresql"
command -v nmap >/dev/null 2>&1 || missing="$missing nmap"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -z "$missing" ] && exit 0
echo "system-deps: installing$missing"
if [ "$(id -u)" = "0" ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
  echo "system-deps: need root or sudo to install:$missing" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
