#!/usr/bin/env bash
# Builds a small busybox container image from Debian's busybox-static, with no registry:
#   OUTDIR/busybox.oci.tar     oci-archive (oci-layout + index.json ref "latest")
#   OUTDIR/busybox.docker.tar  docker-archive (RepoTags localhost/busybox:latest)
#   OUTDIR/layer.tar           the single uncompressed layer
# Deterministic: sorted entries, fixed mtimes, numeric root owners, so the digests are
# stable across runs and machines with the same busybox binary.
set -euo pipefail

OUTDIR=${1:?usage: busybox-image.sh OUTDIR}
BUSYBOX=${BUSYBOX:-/bin/busybox}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
[ -x "$BUSYBOX" ] || { echo "busybox-image: $BUSYBOX not found (apt-get install busybox-static)" >&2; exit 1; }

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/rootfs
mkdir -p "$ROOT"/{bin,etc,tmp,var/www,proc,sys,dev,root}
cp "$BUSYBOX" "$ROOT/bin/busybox"
chmod 0755 "$ROOT/bin/busybox"
for applet in $("$ROOT/bin/busybox" --list); do
    [ "$applet" = busybox ] && continue
    ln -sf busybox "$ROOT/bin/$applet"
done
cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
EOF
echo '<html><body>hello from moat busybox</body></html>' >"$ROOT/var/www/index.html"
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"

LAYER=$WORK/layer.tar
(cd "$ROOT" && tar --sort=name --mtime='@0' --owner=0 --group=0 --numeric-owner \
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -cf "$LAYER" .)

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

LAYER_SHA=$(sha "$LAYER")
LAYER_SIZE=$(size "$LAYER")

CONFIG=$WORK/config.json
printf '%s' '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":null,"Cmd":["sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:'"$LAYER_SHA"'"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"scripts/busybox-image.sh"}],"created":"1970-01-01T00:00:00Z"}' >"$CONFIG"
CONFIG_SHA=$(sha "$CONFIG")
CONFIG_SIZE=$(size "$CONFIG")

# --- oci-archive ---
OCI=$WORK/oci
mkdir -p "$OCI/blobs/sha256"
cp "$LAYER" "$OCI/blobs/sha256/$LAYER_SHA"
cp "$CONFIG" "$OCI/blobs/sha256/$CONFIG_SHA"
MANIFEST=$WORK/manifest.json
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$CONFIG_SHA"'","size":'"$CONFIG_SIZE"'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:'"$LAYER_SHA"'","size":'"$LAYER_SIZE"'}]}' >"$MANIFEST"
MANIFEST_SHA=$(sha "$MANIFEST")
MANIFEST_SIZE=$(size "$MANIFEST")
cp "$MANIFEST" "$OCI/blobs/sha256/$MANIFEST_SHA"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$OCI/oci-layout"
printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$MANIFEST_SHA"'","size":'"$MANIFEST_SIZE"',"annotations":{"org.opencontainers.image.ref.name":"latest"},"platform":{"architecture":"amd64","os":"linux"}}]}' >"$OCI/index.json"
(cd "$OCI" && tar --sort=name --mtime='@0' --owner=0 --group=0 --numeric-owner \
    -cf "$OUTDIR/busybox.oci.tar.tmp" oci-layout index.json blobs)
mv "$OUTDIR/busybox.oci.tar.tmp" "$OUTDIR/busybox.oci.tar"

# --- docker-archive ---
DOCK=$WORK/docker
mkdir -p "$DOCK/$LAYER_SHA"
cp "$LAYER" "$DOCK/$LAYER_SHA/layer.tar"
cp "$CONFIG" "$DOCK/$CONFIG_SHA.json"
printf '%s' '[{"Config":"'"$CONFIG_SHA"'.json","RepoTags":["localhost/busybox:latest"],"Layers":["'"$LAYER_SHA"'/layer.tar"]}]' >"$DOCK/manifest.json"
(cd "$DOCK" && tar --sort=name --mtime='@0' --owner=0 --group=0 --numeric-owner \
    -cf "$OUTDIR/busybox.docker.tar.tmp" manifest.json "$CONFIG_SHA.json" "$LAYER_SHA")
mv "$OUTDIR/busybox.docker.tar.tmp" "$OUTDIR/busybox.docker.tar"

cp "$LAYER" "$OUTDIR/layer.tar"
echo "busybox-image: manifest sha256:$MANIFEST_SHA layer sha256:$LAYER_SHA -> $OUTDIR"
