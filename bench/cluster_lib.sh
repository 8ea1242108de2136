# Shared by the benchmarks that run a `moat cluster` (sourced, not run): tool checks, the
# release binary, a cluster with busybox imported, and its removal on exit. The caller sets
# ROOT (a fresh directory) and NAME (the script's name for messages) before sourcing.

need() { # tools...
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$NAME: $tool missing (scripts/deps.sh)" >&2; exit 1; }
  done
  [ "$(id -u)" = 0 ] || { echo "$NAME: needs root" >&2; exit 1; }
  [ -e "$ROOT" ] && { echo "$NAME: $ROOT exists (a previous run?); remove it first" >&2; exit 1; }
  return 0
}

# MOAT=path skips the build (e.g. a trial run with a debug build).
moat_binary() {
  if [ -z "${MOAT:-}" ]; then
    nice -n 10 cargo build --release -q --bin moat
    MOAT=$PWD/target/release/moat
  fi
}

log() { echo "# $*" >&2; }

CLUSTERS=()
# Deletes the clusters (and, if nothing is left mounted under it, ROOT); the EXIT trap.
clusters_down() {
  set +e
  for c in "${CLUSTERS[@]}"; do
    "$MOAT" cluster --root "$ROOT" delete --name "$c" >/dev/null 2>&1 ||
      echo "$NAME: deleting cluster $c failed; see $ROOT" >&2
  done
  if grep -q " $ROOT[/ ]" /proc/self/mountinfo; then
    echo "$NAME: mounts left under $ROOT; not removing it" >&2
  else
    rm -rf "$ROOT"
  fi
}

# The busybox image, imported into ROOT's image store (once).
busybox_image() {
  [ -e "$ROOT/images" ] && return 0
  mkdir -p "$ROOT"
  log "busybox image"
  bash scripts/busybox-image.sh "$ROOT/img" >/dev/null
  "$MOAT" image --root "$ROOT/images" import "$ROOT/img/busybox.oci.tar" \
    --name localhost/busybox:latest >/dev/null
}

cluster_up() { # name backend nodes
  busybox_image
  log "cluster $1 ($2, $3 nodes)"
  CLUSTERS+=("$1")
  "$MOAT" cluster --root "$ROOT" create --name "$1" --nodes "$3" --backend "$2" \
    --image-root "$ROOT/images" >/dev/null
}

# The pNN of the numbers given (nearest rank).
pct() { # p values...
  local p=$1
  shift
  printf '%s\n' "$@" | sort -n | awk -v p="$p" '{a[NR]=$1} END {i=int((NR-1)*p+0.5)+1; print a[i]}'
}
