#!/bin/sh
# Debian packages the test suite uses: Chromium (browser tests), the Fashion-MNIST files, a PostgreSQL
# server (tune's shared-study test starts a throw-away cluster) and bubblewrap (the sandbox of
# `mnistlab check/grade --execute`).
set -e
missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -d /usr/share/datasets/fashion-mnist ] || missing="$missing dataset-fashion-mnist"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
command -v bwrap >/dev/null || missing="$missing bubblewrap"
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing Debian packages:$missing"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
else
  echo "warning: install these Debian packages for the full test suite:$missing" >&2
fi
