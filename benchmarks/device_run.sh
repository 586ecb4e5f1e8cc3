#!/usr/bin/env bash
# The GPU run of issue 32 in one go (at most 6 minutes on one H200): the benchmark, then the suite's CUDA checks.
#
# Prepared on a machine without a GPU; run by a session whose task is lent one. Before the call, here, in the
# repository root (see /work/.library/device/README.md, "a Python package missing there"):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     albumentations==2.0.8 albucore==0.0.24 simsimd stringzilla pydantic pydantic-core annotated-types \
#     typing-inspection jsonschema jsonschema-specifications referencing rpds-py attrs orjson
#   (the exact versions: constraints.txt; check the list against KINDS.md's packages and
#   `unzip -p .whl/NAME-*.whl '*/METADATA' | grep ^Requires-Dist`; one version of each)
#
# then: device.run(command="bash benchmarks/device_run.sh", carry=[".whl"], timeout_s=420). Figures and logs come
# back under $OUT: gpu.txt (the benchmark's lines, for BENCHMARKS.md with the machine's name), tests.txt.
set -u -o pipefail
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH="$PWD:/tmp/site"
else
    export PYTHONPATH="$PWD"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/machine.txt"
python3 -c "import torch, torchvision, timm; print(torch.__version__, torchvision.__version__, timm.__version__)" \
    | tee -a "$OUT/machine.txt"

# 1. The benchmark (about 4 minutes: building the 500 px release is the first of them).
timeout 270 python3 -m benchmarks.gpu 2>&1 | tee "$OUT/gpu.txt"

# 2. The CUDA checks of the suite: the uint8 path, --decode gpu (nvJPEG) against --decode cpu, deterministic resume
#    on the GPU, the tests that pin the CPU, bf16 tolerance, torchrun on one GPU failing in one line, and batches
#    from the workers' shared slots through the pin thread.
timeout 110 python3 -m pytest -q -p no:cacheprovider -x \
    tests/test_feed.py tests/test_gpu_decode.py tests/test_predict_ddp.py tests/test_sharedbatch.py \
    "tests/test_train.py::test_deterministic_resume_on_cuda_ends_with_the_same_weights" \
    "tests/test_train.py::test_resume_ends_with_the_same_weights" \
    "tests/test_trainer_options.py::test_accumulation_gives_the_update_of_a_larger_batch" \
    "tests/test_predict.py::test_predict_matches_the_straightforward_computation" \
    "tests/test_predict.py::test_unreadable_images_get_uniform_rows_and_are_counted" \
    2>&1 | tee "$OUT/tests.txt"
