#!/usr/bin/env bash
# Runs a command in a private network and mount namespace laid out for
# scripts/test-env.sh, and ends every process left in it afterwards:
#
#   scripts/test-ns.sh [COMMAND [ARG...]]     (default: bash)
#
# Inside:
#   - the network is only `lo`, up, with 127.0.0.1/8 and ::1, plus
#     192.0.2.10 and 192.0.2.11 (TEST-NET-1, RFC 5737): registries on
#     addresses that the engine does not treat as loopback, so that it uses
#     TLS or needs --insecure-registry, while no packet leaves the machine.
#     (No registry, crates.io or PyPI either: install and build first.)
#   - /etc/hosts is a private copy of the host's, plus
#     tls-registry.publishd.test and insecure-registry.publishd.test.
#   - /etc/docker is an empty private tmpfs with certs.d/ in it: the test
#     dockerds read their registry CAs (and write key.json) there, never the
#     host's. The mount point exists on the host already (docker.io and
#     docker-registry own /etc/docker), so the host's /etc gains nothing;
#     a tmpfs over a host directory is the least invasive choice that leaves
#     the host's own files there untouched and unread.
#   - /var and /run are overlays on the host's whose changes stay in this
#     namespace's memory: podman as root writes /var/lib/containers/cache
#     and /var/cache/containers whatever its config says, and dockerd makes
#     /run/docker/plugins.
#   - PUBLISHD_TEST_SMALL_FS names a tmpfs of 16 MiB of its own, for the
#     test of a database whose file system fills up (16: SQLite's WAL grows
#     to 4 MiB before it is checkpointed, and must fit beside the data).
# Mounts here never propagate to the host (unshare makes them private) and
# go away with the namespace.
set -euo pipefail

if [ "${1:-}" != --inside ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "test-ns.sh: needs root (unshare, mount)" >&2
    exit 1
  fi
  # The mount point of the namespace's scratch tmpfs; empty on the host.
  scratch=$(mktemp -d /tmp/publishd-ns.XXXXXX)
  rc=0
  unshare --net --mount --propagation private --fork "$0" --inside "$scratch" "$@" || rc=$?
  rmdir "$scratch" 2>/dev/null || true
  exit "$rc"
fi
shift
scratch=$1
shift

mount -t tmpfs -o mode=0700 publishd-test-ns "$scratch"

ip link set lo up
ip addr add 192.0.2.10/32 dev lo
ip addr add 192.0.2.11/32 dev lo

{
  grep -v 'publishd\.test' /etc/hosts || true
  grep -Eq '^127\.0\.0\.1[[:space:]](.*[[:space:]])?localhost([[:space:]]|$)' /etc/hosts ||
    echo '127.0.0.1 localhost'
  grep -Eq '^::1[[:space:]](.*[[:space:]])?localhost([[:space:]]|$)' /etc/hosts ||
    echo '::1 localhost'
  echo '192.0.2.10 tls-registry.publishd.test'
  echo '192.0.2.11 insecure-registry.publishd.test'
} >"$scratch/hosts"
mount --bind "$scratch/hosts" /etc/hosts

if [ ! -d /etc/docker ]; then
  echo "test-ns.sh: no /etc/docker on this host; scripts/test-env.sh install installs" >&2
  echo "docker.io and docker-registry, which create it" >&2
  exit 1
fi
mount -t tmpfs -o mode=0755 publishd-test-etc-docker /etc/docker
mkdir /etc/docker/certs.d

for d in var run; do
  mkdir -p "$scratch/$d/upper" "$scratch/$d/work"
  mount -t overlay -o "lowerdir=/$d,upperdir=$scratch/$d/upper,workdir=$scratch/$d/work" \
    "publishd-test-$d" "/$d"
done

mkdir "$scratch/small-fs"
mount -t tmpfs -o size=16m,mode=0755 publishd-test-small-fs "$scratch/small-fs"
export PUBLISHD_TEST_SMALL_FS=$scratch/small-fs

# Every process whose network namespace is this one was started in here
# (unshare itself, our parent, is in it too and waits for us).
end_leftovers() {
  local ns pid pids=()
  ns=$(readlink /proc/self/ns/net)
  for pid in /proc/[0-9]*; do
    pid=${pid#/proc/}
    if [ "$pid" != $$ ] && [ "$pid" != "$PPID" ] &&
      [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" = "$ns" ]; then
      pids+=("$pid")
    fi
  done
  ((${#pids[@]})) || return 0
  echo "test-ns.sh: ending processes left in the namespace: ${pids[*]}" >&2
  kill "${pids[@]}" 2>/dev/null || true
  sleep 2
  kill -9 "${pids[@]}" 2>/dev/null || true
}

export PUBLISHD_TEST_NS=1
# Outlive a Ctrl-C or SIGTERM of the command, to clean up after it; a trap
# that runs something (not '') leaves the command's own handling default.
trap : INT TERM
rc=0
"${@:-bash}" || rc=$?
end_leftovers
umount -l /run /var /etc/docker /etc/hosts "$scratch/small-fs" "$scratch" 2>/dev/null || true
exit "$rc"
