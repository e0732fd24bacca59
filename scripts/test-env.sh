#!/usr/bin/env bash
# Brings up, privately, the real parts the integration tests talk to:
# a Docker engine (Debian's docker.io) and two registries (Debian's
# docker-registry), one open and one behind htpasswd basic auth.
#
#   scripts/test-env.sh up DIR     start everything under DIR, write DIR/env
#   scripts/test-env.sh down DIR   stop everything started under DIR
#
# DIR/env holds the PUBLISHD_TEST_* variables the tests read. Nothing here
# touches a system-wide Docker socket or the system registry service.
set -euo pipefail

cmd=${1:?usage: test-env.sh up|down DIR}
dir=${2:?usage: test-env.sh up|down DIR}

need_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker-registry >/dev/null || missing+=(docker-registry)
  command -v htpasswd >/dev/null || missing+=(apache2-utils)
  command -v curl >/dev/null || missing+=(curl)
  command -v python3 >/dev/null || missing+=(python3)
  if ((${#missing[@]})); then
    if [ "$(id -u)" != 0 ]; then
      echo "missing packages: ${missing[*]} (run as root to install them)" >&2
      exit 1
    fi
    echo "installing: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_for() {
  local what=$1 probe=$2
  for _ in $(seq 1 100); do
    if eval "$probe" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "$what did not come up; its log:" >&2
  return 1
}

start_registry() {
  local name=$1 port=$2 auth=$3
  mkdir -p "$dir/$name/data"
  {
    echo "version: 0.1"
    echo "log: {level: warn}"
    echo "storage:"
    echo "  filesystem: {rootdirectory: $dir/$name/data}"
    echo "  delete: {enabled: true}"
    echo "http: {addr: 127.0.0.1:$port}"
    if [ "$auth" = yes ]; then
      echo "auth:"
      echo "  htpasswd: {realm: publishd-test, path: $dir/$name/htpasswd}"
    fi
  } >"$dir/$name/config.yml"
  docker-registry serve "$dir/$name/config.yml" >"$dir/$name/log" 2>&1 &
  echo $! >"$dir/$name/pid"
  wait_for "registry $name" "curl -s -o /dev/null http://127.0.0.1:$port/v2/" || { cat "$dir/$name/log" >&2; exit 1; }
}

# start_dockerd NAME SOCKET: a private dockerd with its state under $dir/NAME.
# SOCKET stays short: unix socket paths are limited to 108 bytes.
start_dockerd() {
  local name=$1 sock=$2
  mkdir -p "$dir/$name"
  dockerd --data-root "$dir/$name/data" --exec-root "$dir/$name/exec" \
    --pidfile "$dir/$name/pid" -H "unix://$sock" \
    --iptables=false --ip6tables=false --bridge=none \
    >"$dir/$name/log" 2>&1 &
  wait_for "dockerd ($name)" "curl -sf --unix-socket $sock http://d/_ping" || { tail -n 30 "$dir/$name/log" >&2; exit 1; }
}

up() {
  need_packages
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)

  # The engine the tests publish through.
  start_dockerd docker "$dir/d.sock"
  # A second engine with no images at all, for the schemathesis run: no
  # generated job can name an image that exists, so nothing is ever pushed.
  start_dockerd empty "$dir/e.sock"

  local open_port auth_port user=publisher
  # The password is chosen so that the standard base64 of the auth JSON holds
  # '+' and '/': the engine wants URL-safe base64, and this catches a client
  # that sends the standard alphabet.
  local password='s3cr?t>>>???~~~>?>?'
  open_port=$(free_port)
  start_registry open "$open_port" no
  mkdir -p "$dir/auth"
  htpasswd -Bbn "$user" "$password" >"$dir/auth/htpasswd"
  auth_port=$(free_port)
  start_registry auth "$auth_port" yes

  # A docker credential helper the credential tests name in a config: it
  # answers for the auth registry only, like a real helper with one entry.
  mkdir -p "$dir/bin"
  cat >"$dir/bin/docker-credential-publishd-test" <<HELPER
#!/bin/sh
[ "\$1" = get ] || exit 1
read -r server
if [ "\$server" = "127.0.0.1:$auth_port" ]; then
  printf '{"ServerURL":"%s","Username":"%s","Secret":"%s"}' "\$server" "$user" '$password'
else
  echo "credentials not found in native keychain"
  exit 1
fi
HELPER
  chmod +x "$dir/bin/docker-credential-publishd-test"

  cat >"$dir/env" <<ENV
export PUBLISHD_TEST_DOCKER_HOST=unix://$dir/d.sock
export PUBLISHD_TEST_EMPTY_DOCKER_HOST=unix://$dir/e.sock
export PUBLISHD_TEST_REGISTRY=127.0.0.1:$open_port
export PUBLISHD_TEST_AUTH_REGISTRY=127.0.0.1:$auth_port
export PUBLISHD_TEST_AUTH_USER=$user
export PUBLISHD_TEST_AUTH_PASSWORD='$password'
export PUBLISHD_TEST_ENV_DIR=$dir
export PATH=$dir/bin:\$PATH
ENV
  echo "test environment up: $dir/env" >&2
}

stop_pidfile() {
  local f=$1
  [ -f "$f" ] || return 0
  local pid
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

down() {
  [ -d "$dir" ] || return 0
  stop_pidfile "$dir/open/pid"
  stop_pidfile "$dir/auth/pid"
  stop_pidfile "$dir/docker/pid"
  stop_pidfile "$dir/empty/pid"
  # dockerd leaves overlay mounts behind if it was killed hard.
  grep -o " $dir/[^ ]*" /proc/mounts 2>/dev/null | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$dir"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  *) echo "usage: test-env.sh up|down DIR" >&2; exit 2 ;;
esac
