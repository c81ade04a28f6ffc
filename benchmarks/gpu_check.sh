#!/bin/bash
# Build pylenet on a GPU machine and run the whole test suite there, CUDA tests included.
# Usage: bash benchmarks/gpu_check.sh [extra pytest args]
#   PYLENET_DATA   folder with mnist/ (default: ./.gpudata, a git-ignored copy of the data)
#   OUT            where logs go (default: ./gpu-logs)
#   TESTS          test files/folders, relative to the repository (default: tests)
#   BENCH=1        also run `pylenet bench --device cuda --epoch` (pylenet vs PyTorch + cuDNN)
#   SANITIZE=1     also run compute-sanitizer (memcheck, racecheck) over the CUDA kernel tests
#   GRAPHS=0       skip the second run of tests/test_cuda_training.py with PYLENET_CUDA_GRAPHS=1
# Builds for the local GPU only (sm from nvidia-smi), which is what a user's `pip install .`
# does not do: it keeps the build short inside a device lease.
set -o pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu-logs}
mkdir -p "$OUT"
export PYLENET_DATA=${PYLENET_DATA:-$PWD/.gpudata}
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
export CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=${cc:-90} -DPYLENET_CUDA=ON"
export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
# The device image's default CXX (a wrapper) links libstdc++ statically into _C.so, which then
# crashes formatting numbers (found on an H100 lease); the system compiler does not.
if [ -x /usr/bin/g++-13 ]; then export CC=/usr/bin/gcc-13 CXX=/usr/bin/g++-13 CUDAHOSTCXX=/usr/bin/g++-13; fi
rm -rf build
t0=$(date +%s)
$PY -m pip install --no-build-isolation --no-deps -v . > "$OUT/build.log" 2>&1 || { tail -60 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"; grep -iE "warning|spill" "$OUT/build.log" | grep -v "^ *$" | head -20
REPO=$PWD
cd /tmp  # import the installed build, not the source folder
$PY -c "import pylenet; print(pylenet.build_info()); print('cuda available:', pylenet.cuda.is_available())"
paths=$(for t in ${TESTS:-tests}; do echo "$REPO/$t"; done)
timeout ${TEST_TIMEOUT:-420} $PY -m pytest -q -rs --durations=12 -p no:cacheprovider $paths "$@" 2>&1 | tee "$OUT/pytest.log" | tail -${TAIL:-80}
status=$?
if [ "${GRAPHS:-1}" = 1 ]; then  # the GPU training tests again, every epoch's full steps as CUDA graph replays
  PYLENET_CUDA_GRAPHS=1 timeout ${GRAPHS_TIMEOUT:-180} $PY -m pytest -q -rs -p no:cacheprovider \
    "$REPO/tests/test_cuda_training.py" 2>&1 | tee "$OUT/pytest-graphs.log" | tail -${TAIL:-30}
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if [ "${BENCH:-0}" = 1 ]; then
  (cd "$REPO" && timeout ${BENCH_TIMEOUT:-240} $PY -m pylenet bench --device cuda --steps ${BENCH_STEPS:-200} --repeats 5 --epoch \
     --out "$OUT/cuda-bench.json" 2>&1 | tail -20)
fi
if [ "${SANITIZE:-0}" = 1 ]; then
  for tool in memcheck racecheck; do
    timeout ${SANITIZE_TIMEOUT:-150} compute-sanitizer --tool $tool --print-limit 20 $PY -m pytest -q -x -p no:cacheprovider \
      "$REPO/tests/test_cuda.py" "$REPO/tests/test_cuda_training.py" -k "${SANITIZE_K:-not 17x1x28 and not 9x20 and not 99_percent}" \
      2>&1 | tee "$OUT/sanitizer-$tool.log" | tail -8
  done
fi
exit $status
