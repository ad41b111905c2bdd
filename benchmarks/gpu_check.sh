#!/usr/bin/env bash
# Every GPU check of the project in one run, for one short call on a lent GPU machine, under one
# global deadline (default 570 s = 9.5 min of wall time, GPU_CHECK_BUDGET to change it).
#
#   bash benchmarks/gpu_check.sh            # logs under $OUT (or ./gpu_check): <step>.log, summary.md
#
# Essential steps (their time limits add up to 470 s; they need only python3 with numpy, scipy,
# cupy, scikit-image and pytest, and this checkout on PYTHONPATH, no install):
#   gpu_info, versions   nvidia-smi (driver, CUDA version); numpy/scipy/cupy/torch, the device CuPy sees
#   cupy_api             tests/test_cupy_api.py: every xp./cupyx name the estimators call exists in CuPy
#   gpu_tests            the `gpu`-marked tests: NumPy/CuPy parity of every estimator and kernels_gpu
#   estimate_<name>      benchmarks/estimate.py --device gpu for l0grad, pan-l0 and dark-channel at
#                        228 px, kernels 27 and 55: windows/s, peak device memory, and (--compare-cpu)
#                        the speed-up per window over NumPy on this host's CPUs and the median
#                        similarity of GPU and CPU estimates of the same windows
# Optional steps, run while time is left (each is skipped with a message when the deadline is near;
# they need the full install: ray, zarr, torch, ...):
#   install              started in the background at once (it overlaps the essential steps): a venv
#                        with the machine's packages visible and `pip install -e ".[cuda<major>]"`, the
#                        extra matching the driver's CUDA major version (nvidia-smi); if that fails,
#                        the project's dependencies without torch/torchvision (the machine's torch kept)
#   synth, label_gpu     a store sized from the l0grad rate measured above (about 60 s of labelling,
#                        at most 240 images x 121 windows: the paper's ~1,000 images do not fit this
#                        call), labelled with `goodregions label --device gpu`: windows/s end to end
#                        against the estimator's own rate (pool overhead)
#   train_window, train_image   `goodregions train --use-gpu` for a few hundred steps with each
#                        classifier architecture (the image one fails cleanly if --arch image is absent)
#   paper_gpu            benchmarks/paper_setting.py --preset gpu with the time that is left
#                        (resumable; needs Kodak24 and Levin's data: GPU_CHECK_KODAK, GPU_CHECK_LEVIN)
#
# Environment: PYTHON (python for the essential steps, default python3), GPU_CHECK_BUDGET (seconds,
# default 570), GPU_CHECK_NO_INSTALL=1 (no venv, no pip: the optional steps use PYTHON if it has the
# project's dependencies), GPU_CHECK_CUDA (12 or 13: override the driver's CUDA major version),
# GPU_CHECK_WORK (scratch folder, default a new one under /tmp), GPU_CHECK_LABEL_SECONDS (aimed
# labelling time, default 60), GPU_CHECK_MAX_IMAGES (largest store, default 240).  Without nvidia-smi nothing is installed, so a dry run on a CPU
# machine only checks the wiring: every GPU step fails fast with "CuPy or a CUDA device is not
# available", or is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
out="${OUT:-gpu_check}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
python="${PYTHON:-python3}"
budget="${GPU_CHECK_BUDGET:-570}"
deadline=$((SECONDS + budget))
work="${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
mkdir -p "$work"
venv="$work/venv"
status=0
names=() rcs=() secs=() notes=()

record() {  # record NAME RC SECONDS NOTE
    names+=("$1") rcs+=("$2") secs+=("$3") notes+=("${4:-}")
}

skip() {  # skip NAME REASON: a step that cannot run (logged, not a failure)
    echo "== $1: skipped: $2" | tee "$out/$1.log"
    record "$1" skip 0 "$2"
}

step() {  # step NAME LIMIT NEED COMMAND...: run with a time limit (cut to the deadline), log to $out/NAME.log
    local name=$1 limit=$2 need=$3
    shift 3
    local left=$((deadline - SECONDS))
    if ((left < need)); then
        skip "$name" "${left} s left before the deadline, the step needs ${need} s"
        return 0
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit} s, $((deadline - SECONDS)) s left): $*"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    local took=$((SECONDS - start))
    local note=""
    ((rc == 124 || rc == 137)) && note="time limit (${limit} s) reached"
    ((rc == 0)) || {
        echo "== $name failed (exit $rc) after ${took} s"
        status=1
    }
    record "$name" "$rc" "$took" "$note"
    return "$rc"
}

set_note() {  # set_note TEXT: the note of the last recorded step
    notes[${#notes[@]} - 1]="$1"
}

# ----------------------------------------------------------------------------- background install
cuda_major="${GPU_CHECK_CUDA:-}"
if [ -z "$cuda_major" ] && command -v nvidia-smi >/dev/null; then
    cuda_major=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\).*/\1/p' | head -n 1)
fi
install_pid=""
if [ "${GPU_CHECK_NO_INSTALL:-0}" = 1 ]; then
    echo "== install: not attempted (GPU_CHECK_NO_INSTALL=1)" | tee "$out/install.log"
elif [ -z "$cuda_major" ]; then
    echo "== install: not attempted (no nvidia-smi, so no GPU driver here)" | tee "$out/install.log"
else
    cat >"$work/install.sh" <<'EOF'
# install.sh REPO VENV CUDA_MAJOR PYTHON: a venv on PYTHON that sees its packages (CuPy, torch), plus this project
set -u
repo=$1 venv=$2 major=$3 base=$4
cd "$repo"
pip_opts=(--progress-bar off --timeout 20 --retries 1 --disable-pip-version-check)
echo "driver's CUDA major version: $major -> extra cuda$major"
if [ "$major" != 13 ]; then
    echo "warning: torch 2.14.1 from PyPI is a CUDA 13 build: with a CUDA $major driver it sees no GPU," \
        "so the train steps cannot use it"
fi
echo "venv on $base ($("$base" --version 2>&1))"
"$base" -m venv --system-site-packages "$venv" || exit 1
py="$venv/bin/python"
start=$SECONDS
if timeout 240 "$py" -m pip install "${pip_opts[@]}" -e ".[cuda$major]"; then
    echo "install: full (.[cuda$major]) in $((SECONDS - start)) s"
    exit 0
fi
echo "install: the full install failed after $((SECONDS - start)) s; now the dependencies without torch/torchvision"
mapfile -t deps < <("$py" -c '
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if not d.startswith(("torch", "torchvision"))))')
timeout 60 "$py" -m pip install "${pip_opts[@]}" --no-deps -e . &&
    timeout 200 "$py" -m pip install "${pip_opts[@]}" "${deps[@]}" "cupy-cuda${major}x>=14" &&
    echo "install: project deps without torch (the machine's torch kept) in $((SECONDS - start)) s"
EOF
    echo "== install: started in the background (log: $out/install.log)"
    # its own session, so that the whole install (pip and its children) can be stopped at the end
    session=()
    command -v setsid >/dev/null && session=(setsid)
    "${session[@]}" bash -c 'bash "$1" "$2" "$3" "$4" "$5" >"$6" 2>&1; echo $? >"$7"' _ "$work/install.sh" \
        "$repo" "$venv" "$cuda_major" "$(command -v "$python")" "$out/install.log" "$work/install.rc" &
    install_pid=$!
    install_start=$SECONDS
fi

ray_cli=""
cleanup() {
    [ -n "$install_pid" ] && { kill -TERM -- -"$install_pid" 2>/dev/null || kill -TERM "$install_pid" 2>/dev/null; }
    [ -n "$ray_cli" ] && timeout 30 "$ray_cli" stop --force >/dev/null 2>&1
}
trap cleanup EXIT

# ----------------------------------------------------------------------------- essential steps
step gpu_info 15 5 bash -c 'nvidia-smi && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv'
step versions 25 5 "$python" -c "
import numpy, scipy
print('python', __import__('sys').version.split()[0], 'numpy', numpy.__version__, 'scipy', scipy.__version__)
try:
    import torch
    print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'sees a GPU:', torch.cuda.is_available())
except Exception as e:
    print('torch: not usable here:', e)
from kernels_gpu.backend import gpu_available
try:
    import cupy
except ImportError as e:
    raise SystemExit(f'CuPy or a CUDA device is not available: {e}')
print('cupy', cupy.__version__)
if not gpu_available():
    raise SystemExit('CuPy or a CUDA device is not available')
rt = cupy.cuda.runtime
props = rt.getDeviceProperties(0)
print('device', props['name'].decode(), round(props['totalGlobalMem'] / 2**30, 1), 'GiB; CUDA runtime',
      rt.runtimeGetVersion(), 'driver', rt.driverGetVersion())
"
step cupy_api 20 5 "$python" -m pytest -rA -p no:cacheprovider tests/test_cupy_api.py
step gpu_tests 170 30 "$python" -m pytest -m gpu -v -rA --durations=10 -p no:cacheprovider \
    tests/test_parity.py tests/test_deconv_metrics.py
if [ "${rcs[-1]}" = 0 ] && ! grep -q " passed" "$out/gpu_tests.log"; then
    echo "== gpu_tests: no gpu test ran (all skipped: CuPy or a CUDA device is not available)"
    rcs[${#rcs[@]} - 1]=5
    set_note "all skipped"
    status=1
fi
step estimate_l0grad 60 20 "$python" benchmarks/estimate.py --device gpu --estimator l0grad \
    --kernel-sizes 27 55 --single 3 --compare-cpu 8
for estimator in pan-l0 dark-channel; do
    step "estimate_$estimator" 90 30 "$python" benchmarks/estimate.py --device gpu --estimator "$estimator" \
        --kernel-sizes 27 55 --single 2 --compare-cpu 4
done

# the windows/s of l0grad at kernel size 27 (the table row "| 27 | 121 | batch s | windows/s | ...")
l0grad_rate=$(awk -F'|' '$2 ~ /^ *27 *$/ {gsub(/ /, "", $5); print $5; exit}' "$out/estimate_l0grad.log" 2>/dev/null)

# ----------------------------------------------------------------------------- optional steps
vpy=""
if [ -n "$install_pid" ]; then
    left=$((deadline - SECONDS - 150)) # keep time for synth + label at least
    echo "== waiting for the install (at most $((left > 0 ? left : 0)) s)"
    while [ ! -f "$work/install.rc" ] && ((left > 0)); do
        sleep 2
        left=$((left - 2))
    done
    if [ -f "$work/install.rc" ] && [ "$(cat "$work/install.rc")" = 0 ]; then
        vpy="$venv/bin/python"
        record install 0 $((SECONDS - install_start)) "$(grep '^install:' "$out/install.log" | tail -n 1)"
    elif [ -f "$work/install.rc" ]; then
        record install "$(cat "$work/install.rc")" $((SECONDS - install_start)) "failed: see install.log"
        status=1
    else
        record install running $((SECONDS - install_start)) "not finished before the deadline"
    fi
elif "$python" -c "import ray, zarr, click, torch, pipeline, training" >/dev/null 2>&1; then
    vpy="$python" # no install: PYTHON already has the project's dependencies
fi
# Ray left behind by a step cut at its time limit is stopped, but only Ray of this script's own venv:
# with PYTHON's packages (no install) another user of them may have a Ray running
[ "$vpy" = "$venv/bin/python" ] && [ -x "$venv/bin/ray" ] && ray_cli="$venv/bin/ray"

gr=("$vpy" -c "from goodregions.cli import main; main()") # the goodregions command line of that python
store="$work/store"
label_ok=0
if [ -z "$vpy" ]; then
    for name in synth label_gpu train_window train_image paper_gpu; do
        skip "$name" "needs the full install (ray, zarr, torch), which is not there: see install.log"
    done
else
    step venv_versions 30 10 "$vpy" -c "
import ray, torch, zarr
print('ray', ray.__version__, 'zarr', zarr.__version__, 'torch', torch.__version__, 'CUDA', torch.version.cuda,
      'torch sees a GPU:', torch.cuda.is_available())
try:
    import cupy
    print('cupy', cupy.__version__)
except Exception as e:
    print('cupy: not importable:', e)
"
    # the store: as many images as l0grad labels in about GPU_CHECK_LABEL_SECONDS at the rate measured above,
    # at most GPU_CHECK_MAX_IMAGES (240: one training epoch of ~700 steps; the paper's 972 would need
    # ~300 s of labelling at 400 windows/s and ~3,000 steps per epoch, more than this call has)
    images=$(awk -v r="${l0grad_rate:-0}" -v s="${GPU_CHECK_LABEL_SECONDS:-60}" -v m="${GPU_CHECK_MAX_IMAGES:-240}" '
        BEGIN { n = (r > 0) ? int(r * s / 121) : 48; if (n > m) n = m; if (n < 16) n = 16; print n }')
    pairs=$images
    ((images >= 972)) && pairs=all
    cores=$(nproc)
    ((cores > 8)) && cores=8
    echo "== store: $images images of 450 px (18 built-in pictures x 54 kernels, $pairs pairs), 121 windows each;" \
        "l0grad measured at ${l0grad_rate:-?} windows/s"
    if step synth 60 30 "${gr[@]}" synth "$store" --num-kernels 54 --pairs "$pairs" --workers "$cores" -q; then
        step label_gpu 150 40 "${gr[@]}" label "$store" --device gpu -q && label_ok=1
        [ -n "$ray_cli" ] && timeout 30 "$ray_cli" stop --force >/dev/null 2>&1
        rate=$(sed -n 's/.*(\([0-9.]*\) windows\/s).*/\1/p' "$out/label_gpu.log" | tail -n 1)
        [ -n "$rate" ] && set_note "$rate windows/s end to end vs ${l0grad_rate:-?} windows/s for the estimator alone"
    else
        skip label_gpu "no store (synth failed)"
    fi

    estimator_id=$("${gr[@]}" estimators --json 2>/dev/null |
        "$vpy" -c "import json, sys; print(next(e['id'] for e in json.load(sys.stdin) if e['name'] == 'l0grad'))" \
            2>/dev/null)
    torch_gpu=$("$vpy" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null)
    # a few hundred SGD steps: about 0.8 x 121 x images / 32 = 3 x images steps per epoch
    epochs=$(((300 + 3 * images - 1) / (3 * images)))
    ((epochs > 5)) && epochs=5
    for arch in window image; do
        if [ "$label_ok" != 1 ]; then
            skip "train_$arch" "no labelled store (label_gpu did not finish)"
        elif [ "$torch_gpu" != 1 ]; then
            skip "train_$arch" "torch sees no CUDA device (Ray Train would wait for a GPU forever)"
        else
            step "train_$arch" 120 60 "${gr[@]}" train "$store" -e "$estimator_id" -o "$work/model_$arch" \
                --arch "$arch" --epochs "$epochs" --batch-size 32 --use-gpu --data-workers 4 --cpus-per-worker 2
            rc=${rcs[-1]} took=${secs[-1]}
            [ -n "$ray_cli" ] && timeout 30 "$ray_cli" stop --force >/dev/null 2>&1
            if [ "$rc" = 0 ] && ((took > 0)); then
                set_note "$(awk -v n="$images" -v e="$epochs" -v t="$took" 'BEGIN {
                    printf "%d epochs, ~%.0f train windows/s end to end (Ray start, validation and Hu-Yang fit included)",
                    e, 0.8 * 121 * n * e / t }')"
            fi
            cp "$work/model_$arch/metrics.csv" "$out/train_$arch.metrics.csv" 2>/dev/null
            # per-epoch times, where Ray Train wrote them (result.json of the trial)
            "$vpy" - "$work/model_$arch" <<'EOF' 2>/dev/null | tee -a "$out/train_$arch.log"
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).rglob("result.json")):
    times = [json.loads(line).get("time_this_iter_s") for line in path.read_text().splitlines() if line.strip()]
    print(f"{path.parent.name}: seconds per epoch (training + validation):", [round(t, 1) for t in times if t])
EOF
        fi
    done

    kodak="${GPU_CHECK_KODAK:-}"
    levin="${GPU_CHECK_LEVIN:-}"
    for root in "$repo/../shared/data" "$repo/shared/data"; do
        [ -z "$kodak" ] && [ -d "$root/kodak24" ] && kodak="$root/kodak24"
        [ -z "$levin" ] && [ -d "$root/levin2009" ] && levin="$root/levin2009"
    done
    if [ -z "$kodak" ] || [ -z "$levin" ]; then
        skip paper_gpu "no Kodak24 or Levin folder (set GPU_CHECK_KODAK and GPU_CHECK_LEVIN)"
    elif [ "$torch_gpu" != 1 ]; then
        skip paper_gpu "torch sees no CUDA device"
    else
        # whatever time is left, 15 s kept for the summary; resumable, so a cut run still reports its steps
        left=$((deadline - SECONDS - 15))
        step paper_gpu "$left" 60 "$vpy" benchmarks/paper_setting.py --work "$work/paper" --kodak "$kodak" \
            --levin "$levin" --preset gpu
        [ -n "$ray_cli" ] && timeout 30 "$ray_cli" stop --force >/dev/null 2>&1
        mkdir -p "$out/paper_steps"
        cp "$work/paper/steps/"*.json "$out/paper_steps/" 2>/dev/null
        cp "$work/paper/report.md" "$out/paper_report.md" 2>/dev/null
    fi
fi

# ----------------------------------------------------------------------------- summary
{
    echo "## gpu_check: $(date -u +%FT%TZ), ${SECONDS} s in all (deadline ${budget} s)"
    echo
    echo "| step | exit | seconds | note |"
    echo "|---|---|---|---|"
    for i in "${!names[@]}"; do
        echo "| ${names[$i]} | ${rcs[$i]} | ${secs[$i]} | ${notes[$i]} |"
    done
    echo
    for estimator in l0grad pan-l0 dark-channel; do
        [ -f "$out/estimate_$estimator.log" ] || continue
        echo "estimate $estimator:"
        grep -E '^\| (kernel|[0-9]+) ' "$out/estimate_$estimator.log" | sed 's/^/    /'
    done
    echo "targets: l0grad >= 400 windows/s at kernel 27; pan-l0 >= 30x its CPU per-window time" \
        "(column 'GPU vs CPU per window')"
} | tee "$out/summary.md"
exit "$status"
