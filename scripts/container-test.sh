#!/usr/bin/env bash
# The container image, tested (issue 11): the Dockerfile's own runtime stage,
# built on a local Debian base with the publishd binary built on the host,
# run against the test engine through its mounted socket, publishes a job
# to the test registry.
#
#   scripts/container-test.sh base   make the local Debian base, unless it is
#                                    cached (needs the network: run it before
#                                    the namespace; scripts/test.sh does)
#   scripts/container-test.sh        the test
#
# No base image can be pulled here. The base is Debian's own: debootstrap
# --variant=minbase --include=ca-certificates, its root file system cached as
# $PUBLISHD_TEST_CACHE/debian-SUITE-minbase-ARCH.tar.gz (made again only when
# missing) and imported on the test engine with debian:bookworm-slim's PATH
# and CMD. The image is the real Dockerfile, built with BuildKit, which builds
# only the stages the target needs, and
#   --build-arg BASE=<that base>
#   --build-arg BINARY=<an image holding the host's binary as /usr/local/bin/publishd>
# so that the build stage (rust:1-bookworm, a release build) is skipped and
# the runtime stage is the one `docker build .` runs. The base has the CA
# bundle already, so the stage's apt-get step does not run.
#
# The test then runs the image (--network host in the test namespace, the
# engine's socket mounted, /data a directory, an API token, a free port),
# waits for /readyz, imports a small image on the engine, publishes it in
# a job, and checks that the job succeeded, that the registry serves the
# tag with the job's digest, that the engine holds no name or image the job
# made (temporary or target), and that the container stops cleanly on
# SIGTERM. It
# removes the container and every image it made, also when it fails, and
# exits non-zero with the reason on any failure.
#
# Inside the test namespace with the test environment up
# (PUBLISHD_TEST_ENV_DIR, as in scripts/test-isolated.sh) it uses that
# environment; inside one without, it starts its own. Outside the namespace
# it makes the base, builds the binary and runs itself in a fresh namespace.
#
#   PUBLISHD_CONTAINER_TEST_BIN   the binary (default: target/debug/publishd)
#   PUBLISHD_TEST_CACHE           the base's cache (default: /var/cache/publishd-test)
#   PUBLISHD_TEST_DEBIAN_MIRROR   debootstrap's mirror (default: http://deb.debian.org/debian)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

suite=bookworm
cache=${PUBLISHD_TEST_CACHE:-/var/cache/publishd-test}
mirror=${PUBLISHD_TEST_DEBIAN_MIRROR:-http://deb.debian.org/debian}
base_tar=$cache/debian-$suite-minbase-$(dpkg --print-architecture).tar.gz
bin=${PUBLISHD_CONTAINER_TEST_BIN:-${CARGO_TARGET_DIR:-$repo/target}/debug/publishd}
started=$SECONDS

fail() {
  echo "container-test.sh: FAILED: $*" >&2
  exit 1
}

step() {
  printf '== container test (%ds): %s\n' $((SECONDS - started)) "$*"
}

# make_base: the base's root file system tarball, unless it is cached.
make_base() {
  [ -s "$base_tar" ] && return 0
  [ -z "${PUBLISHD_TEST_NS:-}" ] ||
    fail "no cached base ($base_tar) and no network in the test namespace: run scripts/container-test.sh base first"
  command -v debootstrap >/dev/null || fail "debootstrap is missing: run scripts/test-env.sh install"
  [ "$(id -u)" = 0 ] || fail "debootstrap needs root"
  mkdir -p "$cache"
  local root
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  step "debootstrap --variant=minbase $suite from $mirror, to be cached as $base_tar"
  if ! debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror" >"$root.log" 2>&1; then
    tail -n 20 "$root.log" >&2
    remove_root "$root"
    fail "debootstrap failed (the last lines of its log are above)"
  fi
  # What debian:bookworm-slim drops too: downloaded packages, package lists.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  mkdir -p "$root/var/lib/apt/lists/partial"
  tar -C "$root" --numeric-owner -czf "$base_tar.tmp" .
  mv "$base_tar.tmp" "$base_tar"
  remove_root "$root"
  step "base cached: $(du -h "$base_tar" | cut -f1)"
}

# remove_root DIR: debootstrap mounts /proc and /sys in its target and may
# leave them mounted when it fails: unmount first, never cross into them.
remove_root() {
  grep -o " $1/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf --one-file-system "$1" "$1.log"
}

if [ "${1:-}" = base ]; then
  make_base
  exit 0
fi
[ $# = 0 ] || { echo "usage: scripts/container-test.sh [base]" >&2; exit 2; }

if [ -z "${PUBLISHD_TEST_NS:-}" ]; then
  scripts/test-env.sh install
  make_base
  if [ -z "${PUBLISHD_CONTAINER_TEST_BIN:-}" ]; then
    # The token server too: scripts/test-env.sh up starts one.
    cargo build --locked --bin publishd --bin token-server --workspace
  fi
  exec scripts/test-ns.sh "$0"
fi

[ -s "$base_tar" ] || fail "no cached base ($base_tar): run scripts/container-test.sh base first (it needs the network)"
[ -x "$bin" ] || fail "$bin is not built (cargo build --bin publishd)"

dir=$(mktemp -d /tmp/publishd-container-test.XXXXXX)
own_env=0
run_id=$(date +%s)-$$
base_image=publishd-test/debian:$suite-$run_id
binary_image=publishd-test/container-binary:$run_id
image=publishd-test/publishd:$run_id
source_image=publishd-test/container-source:$run_id
container=publishd-container-test-$run_id
images=("$image" "$binary_image" "$source_image" "$base_image")

# remove_made: the container and the images this run made, and the build
# cache of its builds (the test engine's own: nothing else builds with
# BuildKit there). Quiet: it also runs after a failure, on whatever exists.
remove_made() {
  docker rm -f "$container" >/dev/null 2>&1 || true
  docker rmi -f "${images[@]}" >/dev/null 2>&1 || true
  docker builder prune -af >/dev/null 2>&1 || true
}
cleanup() {
  local rc=$?
  if [ -n "${DOCKER_HOST:-}" ]; then
    if ((rc)) && docker container inspect "$container" >/dev/null 2>&1; then
      echo "container-test.sh: the container's log:" >&2
      docker logs --tail 30 "$container" >&2 2>&1 || true
    fi
    remove_made
  fi
  if ((own_env)); then scripts/test-env.sh down "$dir/env-dir"; fi
  rm -rf --one-file-system "$dir"
}
trap cleanup EXIT

if [ -n "${PUBLISHD_TEST_ENV_DIR:-}" ] && [ -f "$PUBLISHD_TEST_ENV_DIR/env" ]; then
  # shellcheck disable=SC1091
  . "$PUBLISHD_TEST_ENV_DIR/env"
else
  own_env=1
  step "starting the test environment"
  scripts/test-env.sh up "$dir/env-dir" 2>"$dir/env-up.log" || { cat "$dir/env-up.log" >&2; exit 1; }
  # shellcheck disable=SC1091
  . "$dir/env-dir/env"
fi
export DOCKER_HOST=$PUBLISHD_TEST_DOCKER_HOST
sock=${DOCKER_HOST#unix://}
# The docker CLI's own config: empty, never the host's.
export DOCKER_CONFIG=$dir/docker-config
mkdir -p "$DOCKER_CONFIG"
reg=$PUBLISHD_TEST_REGISTRY

# A docker CLI that builds with BuildKit: one with the buildx plugin, or one
# older than 23.0, where BuildKit is built in (Debian's docker.io 20.10, in
# /usr/bin, possibly behind a newer CLI without buildx on the PATH).
build=()
for cli in docker /usr/bin/docker; do
  command -v "$cli" >/dev/null || continue
  if "$cli" buildx version >/dev/null 2>&1; then
    build=("$cli" buildx build --load)
    break
  fi
  major=$("$cli" --version | sed -n 's/^Docker version \([0-9]*\)\..*/\1/p')
  if [ -n "$major" ] && ((major < 23)); then
    build=(env DOCKER_BUILDKIT=1 "$cli" build)
    break
  fi
done
((${#build[@]})) || fail "no docker CLI here builds with BuildKit (a CLI with the buildx plugin, or Debian's docker.io 20.10 as /usr/bin/docker)"

step "importing the base ($base_tar) as $base_image"
docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'CMD ["bash"]' "$base_tar" "$base_image" >/dev/null || fail "docker import of the base failed"

step "importing $bin as $binary_image"
tar -C "$(dirname "$bin")" -ch --owner=0 --group=0 --numeric-owner \
  --transform 's,.*,usr/local/bin/publishd,' "$(basename "$bin")" |
  docker import - "$binary_image" >/dev/null || fail "docker import of the binary failed"

step "building the Dockerfile's runtime stage: ${build[*]} --build-arg BASE=$base_image --build-arg BINARY=$binary_image"
# --network host: the test engine has no bridge network for the RUN step.
if ! "${build[@]}" --progress plain --network host --build-arg "BASE=$base_image" --build-arg "BINARY=$binary_image" \
  -t "$image" -f Dockerfile . >"$dir/build.log" 2>&1; then
  tail -n 30 "$dir/build.log" >&2
  fail "the image build failed (the last lines of its log are above)"
fi
grep -q 'cargo build' "$dir/build.log" &&
  fail "the build ran the build stage: BuildKit should have skipped it"
config=$(docker image inspect -f '{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{json .Config.Volumes}}' "$image")
[ "$config" = '["publishd"] ["serve"] {"/data":{}}' ] || fail "the image's entrypoint, command, volumes: $config"

step "running it: --network host, $sock mounted"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
token=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
mkdir "$dir/data"
docker run -d --name "$container" --network host \
  -v "$sock:/var/run/docker.sock" -v "$dir/data:/data" \
  -e "PUBLISHD_LISTEN=0.0.0.0:$port" -e "PUBLISHD_API_TOKENS=$token" \
  "$image" >/dev/null || fail "docker run failed"
url=http://127.0.0.1:$port
api=(curl -sS --max-time 10 -H "Authorization: Bearer $token")

ready=0
for _ in $(seq 1 150); do
  if curl -sf --max-time 2 -o /dev/null "$url/readyz"; then ready=1; break; fi
  [ "$(docker inspect -f '{{.State.Running}}' "$container")" = true ] || break
  sleep 0.2
done
((ready)) || fail "the container did not answer $url/readyz within 30 s (state: $(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$container"))"

step "publishing $source_image to $reg/container-test-$run_id/app:v1"
mkdir "$dir/layer"
echo "publishd container test $run_id" >"$dir/layer/hello"
tar -C "$dir/layer" -c . | docker import - "$source_image" >/dev/null || fail "docker import of the source image failed"
# What the engine holds before the job: names and image ids (the engine may
# be shared with the test suite, so compare, do not expect it empty).
engine_state() {
  {
    docker images -a --format '{{.Repository}}:{{.Tag}}' | grep -v '^<none>:<none>$' || true
    docker images -a -q --no-trunc
  } | sort -u
}
engine_state >"$dir/engine.before"
spec=$(printf '{"repo":"%s/container-test-%s","repo_mode":"multirepo","images":[{"name":"app","source":"%s"}],"tags":[{"strategy":"custom","value":"v1"}]}' \
  "$reg" "$run_id" "$source_image")
code=$("${api[@]}" -o "$dir/job.json" -w '%{http_code}' -H 'Content-Type: application/json' -d "$spec" "$url/api/v1/jobs") ||
  fail "POST /api/v1/jobs: curl failed"
[ "$code" = 202 ] || fail "POST /api/v1/jobs answered $code: $(cat "$dir/job.json")"
job_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$dir/job.json")

status=''
for _ in $(seq 1 300); do
  "${api[@]}" -f -o "$dir/job.json" "$url/api/v1/jobs/$job_id" || fail "GET /api/v1/jobs/$job_id failed"
  status=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["status"])' "$dir/job.json")
  case $status in succeeded | failed | cancelled) break ;; esac
  sleep 0.2
done
[ "$status" = succeeded ] || fail "job $job_id: $status after up to 60 s: $(cat "$dir/job.json")"
read -r reference digest < <(python3 -c 'import json,sys
t=json.load(open(sys.argv[1]))["targets"]
assert len(t)==1 and t[0]["status"]=="succeeded", t
print(t[0]["reference"], t[0]["digest"])' "$dir/job.json") || fail "job $job_id: unexpected targets: $(cat "$dir/job.json")"
[ "$reference" = "$reg/container-test-$run_id/app:v1" ] || fail "job $job_id published $reference"
[[ "$digest" == sha256:* ]] || fail "job $job_id: no digest: $(cat "$dir/job.json")"

step "checking the registry and the engine"
manifest_url=http://$reg/v2/container-test-$run_id/app/manifests/v1
code=$(curl -sS --max-time 10 -D "$dir/manifest.headers" -o /dev/null -w '%{http_code}' \
  -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' "$manifest_url") || fail "GET $manifest_url: curl failed"
[ "$code" = 200 ] || fail "GET $manifest_url answered $code"
served=$(tr -d '\r' <"$dir/manifest.headers" | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *//p')
[ "$served" = "$digest" ] || fail "the registry serves v1 as ${served:-nothing}, the job says $digest"
engine_state >"$dir/engine.after"
leftovers=$(comm -13 "$dir/engine.before" "$dir/engine.after" | tr '\n' ' ')
[ -z "$leftovers" ] || fail "the job left names or images on the engine: $leftovers"
docker image inspect "$source_image" >/dev/null 2>&1 || fail "the source image $source_image is gone from the engine"

step "stopping the container (SIGTERM)"
docker stop -t 30 "$container" >/dev/null || fail "docker stop failed"
exit_code=$(docker inspect -f '{{.State.ExitCode}}' "$container")
[ "$exit_code" = 0 ] || fail "the container exited with $exit_code on SIGTERM"

step "removing the container, the images and the build cache it made"
remove_made
curl -s -o /dev/null --max-time 10 -X DELETE "http://$reg/v2/container-test-$run_id/app/manifests/$digest" || true
for i in "${images[@]}"; do
  ! docker image inspect "$i" >/dev/null 2>&1 || fail "could not remove $i from the engine"
done
! docker container inspect "$container" >/dev/null 2>&1 || fail "could not remove the container $container"
step "passed"
