#!/usr/bin/env bash
# Every GPU check of the project in one run, for one short call on a GPU machine:
# the `gpu`-marked parity tests (CuPy against NumPy and the golden files) and the
# speed of each estimator on a batch of 121 windows of 228 px at kernel size 27.
#
#   bash benchmarks/gpu_check.sh            # logs under $OUT, or ./gpu_check
#
# Needs only python3 with numpy, scipy, cupy, scikit-image, imageio and pytest (no
# Ray, zarr or torch: the checks import kernels_gpu and the Levin test data alone),
# so it runs from a plain checkout with PYTHONPATH set, without installing.  Each
# step has its own time limit, so one that hangs does not cost the others.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python="${PYTHON:-python3}"
status=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, remember a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "== $name failed (exit $rc)"; status=1; }
}

step gpu_info 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step versions 60 "$python" -c "import numpy, scipy, cupy; print('numpy', numpy.__version__, 'scipy', scipy.__version__, 'cupy', cupy.__version__)"
step gpu_tests 240 "$python" -m pytest -m gpu -v -p no:cacheprovider tests/test_parity.py tests/test_deconv_metrics.py
for estimator in l0grad pan-l0 dark-channel; do
    step "estimate_$estimator" 150 "$python" benchmarks/estimate.py --device gpu --estimator "$estimator" \
        --kernel-sizes 27 --single 3
done
exit "$status"
