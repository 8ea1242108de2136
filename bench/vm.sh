#!/usr/bin/env bash
# VM sandbox start-up of moat-runtime, broken down, against the limit and against runc, all in
# the same run on the same bundle (a busybox rootfs):
#   kernel   our guest kernel's build time: cold (as recorded when it was compiled, or built
#            again in a scratch cache with KERNEL_COLD=1) and cached (`assets kernel` again)
#   bare     QEMU + guest kernel + initramfs whose init powers off at once (`bare-boot`), for
#            Debian's kernel and for ours
# The sandbox measurements below boot our kernel (the default):
#   running  create→start→the container's first output line (process running)
#   http     create→start→first HTTP answer from the container, through a CNI-style veth in
#            a network namespace made for the run (no route out; torn down at exit)
#   runc     the same two measurements with runc on the same bundle
# and where a sandbox's time goes (from the daemon's timings.json and the guest's clock):
#   qemu start (daemon spawn → guest clock zero), kernel boot, agent ready, container start;
# and QEMU RSS/PSS per idle sandbox. Under TCG here; KVM where `moat-runtime check` says a
# guest boots under it (pass ACCEL=kvm).
# Usage: bench/vm.sh [N]    (root; scripts/guest-assets.sh first)
set -euo pipefail
N=${1:-10}
ACCEL=${ACCEL:-tcg}
cd "$(dirname "$0")/.."
RT=${MOAT_RUNTIME:-${CARGO_TARGET_DIR:-target}/debug/moat-runtime}
[ -x "$RT" ] || { echo "build moat-runtime first (cargo build -p moat-runtime)" >&2; exit 1; }
ASSETS=${MOAT_VM_ASSETS:-/var/lib/moat-runtime/assets}
W=$(mktemp -d /tmp/mvb.XXXXXX)
ROOT=$W/r
POD=mvb-pod-$$
PEER=mvb-peer-$$
cat >"$W/rt.toml" <<TOML
[hypervisor]
accel = "$ACCEL"
[assets]
dir = "$ASSETS"
kernel = "moat"
TOML
sed 's/^kernel = "moat"/kernel = "debian"/' "$W/rt.toml" >"$W/rt-debian.toml"
cp "$W/rt.toml" "$W/rt-template.toml"
printf '[factory]\ntemplate = true\n' >>"$W/rt-template.toml"
CFG=$W/rt.toml
rt() { "$RT" --root "$ROOT" --config "$CFG" "$@"; }

cleanup() {
    set +e
    for id in $(rt list -q 2>/dev/null); do rt delete --force "$id" >/dev/null 2>&1; done
    for id in $(runc --root "$W/runc" list -q 2>/dev/null); do runc --root "$W/runc" delete --force "$id"; done
    pkill -9 -f "$ROOT" 2>/dev/null
    ip netns del "$POD" 2>/dev/null
    ip netns del "$PEER" 2>/dev/null
    grep "$W" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT INT TERM

now() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }

# Bundle: busybox rootfs + runc's default spec.
B=$W/bundle
mkdir -p "$B/rootfs/bin" "$B/rootfs/var/www" "$B/rootfs"/{proc,sys,dev,etc,tmp}
cp /bin/busybox "$B/rootfs/bin/"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$B/rootfs/bin/$a"; done
echo "hello from the sandbox" >"$B/rootfs/var/www/index.html"
(cd "$B" && runc spec)
setargs() { # $1 = json args array, $2 = netns path or ""
    python3 - "$B/config.json" "$1" "$2" <<'PY'
import json, sys
p, args, ns = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = args
c["root"]["readonly"] = False
for n in c["linux"]["namespaces"]:
    if n["type"] == "network":
        if ns: n["path"] = ns
        else: n.pop("path", None)
json.dump(c, open(p, "w"))
PY
}

ip netns add "$POD"; ip netns add "$PEER"
ip -n "$PEER" link add vp0 type veth peer name eth0 netns "$POD"
ip -n "$PEER" addr add 10.42.251.1/24 dev vp0; ip -n "$PEER" link set vp0 up; ip -n "$PEER" link set lo up
ip -n "$POD" addr add 10.42.251.2/24 dev eth0; ip -n "$POD" link set eth0 up; ip -n "$POD" link set lo up

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "== our guest kernel's build"
FRAG=crates/moat-runtime/kernel/guest.config
KC=${MOAT_KERNEL_CACHE:-/var/cache/moat}
if [ "${KERNEL_COLD:-0}" = 1 ]; then
    KC=$W/kcache
    t0=$(now)
    "$RT" assets kernel --fragment "$FRAG" --cache "$KC" >/dev/null 2>"$W/kcold.err"
    echo "$(ms "$t0" "$(now)")" >"$W/kernel-cold"
    echo "measured" >"$W/kernel-cold-how"
else
    "$RT" assets kernel --fragment "$FRAG" --cache "$KC" >/dev/null 2>"$W/kcold.err"
    grep -o 'cold build [0-9]* s' "$W/kcold.err" | awk '{print $3 * 1000}' >"$W/kernel-cold"
    echo "recorded when it was built (KERNEL_COLD=1 builds it again)" >"$W/kernel-cold-how"
fi
t0=$(now)
"$RT" assets kernel --fragment "$FRAG" --cache "$KC" >/dev/null 2>/dev/null
echo "$(ms "$t0" "$(now)")" >"$W/kernel-cached"

echo "== bare boot ($ACCEL, $N runs each): Debian's kernel, ours"
bare() { "$RT" --root "$ROOT" --config "$1" bare-boot --accel "$ACCEL" --count "$N" | python3 -c 'import json,sys; [print(m) for m in json.load(sys.stdin)["ms"]]'; }
bare "$W/rt-debian.toml" >"$W/bare-debian"
bare "$W/rt.toml" >"$W/bare"

run_vm() { # $1 = id, $2 = mode (running|http)
    local id=$1 t0 t1
    t0=$(now)
    rt create --bundle "$B" "$id" >"$W/$id.out" 2>"$W/$id.err" </dev/null
    rt start "$id"
    if [ "$2" = running ]; then
        until grep -q started "$W/$id.out"; do sleep 0.002; done
    else
        until ip netns exec "$PEER" busybox wget -q -O /dev/null http://10.42.251.2:8080/ 2>/dev/null; do sleep 0.01; done
    fi
    t1=$(now)
    local tj; tj=$(cat "$ROOT"/.sb-*/timings.json)
    if [ "$2" = running ]; then
        local q; q=$(pgrep -f "sandbox-$id" | head -1)
        awk '/^Rss:/{r=$2} /^Pss:/{p=$2} END{print r, p}' "/proc/$q/smaps_rollup" >>"$W/mem$SUFFIX"
    fi
    echo "$(ms "$t0" "$t1") $tj" >>"$W/vm$SUFFIX-$2"
    rt kill "$id" KILL >/dev/null 2>&1 || true
    rt delete --force "$id"
}

run_runc() {
    local id=$1 t0 t1
    t0=$(now)
    runc --root "$W/runc" create --bundle "$B" "$id" >"$W/$id.out" 2>&1 </dev/null
    runc --root "$W/runc" start "$id"
    if [ "$2" = running ]; then
        until grep -q started "$W/$id.out"; do sleep 0.002; done
    else
        until ip netns exec "$PEER" busybox wget -q -O /dev/null http://10.42.251.2:8080/ 2>/dev/null; do sleep 0.01; done
    fi
    t1=$(now)
    echo "$(ms "$t0" "$t1")" >>"$W/runc-$2"
    runc --root "$W/runc" kill "$id" KILL 2>/dev/null || true
    sleep 0.05
    runc --root "$W/runc" delete --force "$id"
}

SUFFIX=
echo "== create → process running ($N runs each)"
setargs '["sh","-c","echo started; exec sleep 1000"]' ""
for i in $(seq "$N"); do run_vm "r$i" running; run_runc "c$i" running; done
echo "== create → first HTTP response through the pod veth ($N runs each)"
setargs '["httpd","-f","-p","8080","-h","/var/www"]' "/var/run/netns/$POD"
for i in $(seq "$N"); do run_vm "h$i" http; run_runc "d$i" http; done

# The VM factory ([factory] template = true): sandboxes restored from a template VM saved
# once its agent was ready. The first run builds the template and is not counted.
CFG=$W/rt-template.toml
SUFFIX=-tpl
echo "== from the VM template: building it (not measured), then $N runs each"
setargs '["sh","-c","echo started; exec sleep 1000"]' ""
run_vm warm running
: >"$W/vm-tpl-running"; : >"$W/mem-tpl"
for i in $(seq "$N"); do run_vm "tr$i" running; done
setargs '["httpd","-f","-p","8080","-h","/var/www"]' "/var/run/netns/$POD"
for i in $(seq "$N"); do run_vm "th$i" http; done

python3 - "$W" <<'PY'
import json, os, statistics as st, sys
w = sys.argv[1]
def nums(f): return [float(l.split()[0]) for l in open(os.path.join(w, f)) if l.strip()]
def vm(f):
    rows = []
    for l in open(os.path.join(w, f)):
        total, tj = l.split(" ", 1)
        rows.append((float(total), json.loads(tj)))
    return rows
cold = nums("kernel-cold")
how = open(os.path.join(w, "kernel-cold-how")).read().strip()
print(f"our guest kernel build: cold {cold[0] / 1000:.0f} s ({how}), cached {nums('kernel-cached')[0]:.0f} ms" if cold else "our guest kernel build: cold time unknown")
bare = st.median(nums("bare"))
deb = st.median(nums("bare-debian"))
print(f"bare boot (QEMU start → guest powered off), Debian's kernel p50 {deb:7.0f} ms")
print(f"bare boot (QEMU start → guest powered off), our kernel      p50 {bare:7.0f} ms   ratio ours / Debian's {bare / deb:4.2f} (goal <= 0.6)")
print("\nsandboxes below boot our kernel")
for mode in ("running", "http"):
    rows = vm(f"vm-{mode}")
    tot = st.median(r[0] for r in rows)
    q = st.median(r[1]["helloMs"] - r[1]["guestReadyMs"] for r in rows)
    k = st.median(r[1]["guestInitMs"] for r in rows)
    a = st.median(r[1]["guestReadyMs"] - r[1]["guestInitMs"] for r in rows)
    c = st.median(r[0] - r[1]["helloMs"] for r in rows)
    runc = st.median(nums(f"runc-{mode}"))
    print(f"\ncreate → {'process running' if mode == 'running' else 'first HTTP response'}")
    print(f"  moat-runtime p50 {tot:7.0f} ms   (qemu start {q:.0f} + kernel boot {k:.0f} + agent ready {a:.0f} + container start {c:.0f})")
    print(f"  runc         p50 {runc:7.0f} ms")
    print(f"  ratio moat-runtime / bare boot  {tot / bare:5.2f}  (overhead above our bare boot {100 * (tot - bare) / bare:+.0f} %, goal <= +15 %)")
    print(f"  ratio moat-runtime / runc       {tot / runc:5.1f}")
mem = [l.split() for l in open(os.path.join(w, "mem"))]
print(f"\nQEMU per idle cold sandbox: RSS p50 {st.median(float(m[0]) for m in mem) / 1024:.0f} MiB (goal <= 128 MiB), PSS p50 {st.median(float(m[1]) for m in mem) / 1024:.0f} MiB")
print("\nfrom the VM template ([factory] template = true; restored, not booted)")
for mode in ("running", "http"):
    rows = vm(f"vm-tpl-{mode}")
    tot = st.median(r[0] for r in rows)
    h = st.median(r[1]["helloMs"] for r in rows)
    runc = st.median(nums(f"runc-{mode}"))
    print(f"  create → {'process running' if mode == 'running' else 'first HTTP response':19} p50 {tot:6.0f} ms   (restore + resume {h:.0f} + container start {tot - h:.0f})")
    print(f"    ratio / bare boot {tot / bare:5.2f} ({100 * (tot - bare) / bare:+.0f} %, goal <= +15 %); ratio / runc {tot / runc:5.1f}")
mem = [l.split() for l in open(os.path.join(w, "mem-tpl"))]
print(f"  QEMU per sandbox: RSS p50 {st.median(float(m[0]) for m in mem) / 1024:.0f} MiB, PSS p50 {st.median(float(m[1]) for m in mem) / 1024:.0f} MiB (template pages shared)")
PY
