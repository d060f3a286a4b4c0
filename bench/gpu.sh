#!/usr/bin/env bash
# The GPU check of issue 12, in one run of under 8 minutes on one H100/H200 (bench/gpu_bench.py says
# what it measures): our ORPO step (real loop, DeepSpeed ZeRO-2, bf16, ~1.1B random-init Llama) with
# MFU against 989 TFLOP/s, TRL's ORPOTrainer on the same batches, vLLM generation on the same model.
#
#   bench/gpu.sh [--out results.json]   on the GPU machine
#   bench/gpu.sh --dry-run              the plumbing on CPU: tiny model, a few steps (the test suite runs this)
#   bench/gpu.sh --fetch-wheels         here, where pip reaches an index: put the wheels the GPU machine
#                                       lacks (deepspeed, trl, datasets and their small deps) into .whl/
#
# Missing packages are installed from .whl/ when it holds wheels, else from pip's index when one is
# reachable; a section whose package is still missing prints why and the others run. vLLM (a ~400 MB
# wheel pinning its own torch) and flash-attn (source only on PyPI) do not fit in a carried folder:
# without them the vLLM section is skipped and attention is sdpa.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=.whl
SITE=${GPU_BENCH_SITE:-/tmp/orpo_gpu_site}

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    mkdir -p "$WHEELS"
    # The GPU image's python is 3.12; pins follow this environment's versions.
    pins=$($PY - <<'EOF'
from importlib.metadata import version
names = ["trl", "datasets", "dill", "multiprocess", "hjson", "pydantic", "pydantic-core", "annotated-types",
         "typing-inspection"]
print(" ".join(f"{n}=={version(n)}" for n in names))
EOF
)
    $PY -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" $pins || exit 1
    # DeepSpeed is an sdist: build a pure-Python wheel (ops compile at first use, none is used here).
    DS_BUILD_OPS=0 $PY -m pip wheel --no-deps --no-build-isolation -w "$WHEELS" \
        "deepspeed==$($PY -c 'from importlib.metadata import version; print(version("deepspeed"))')" || exit 1
    du -sh "$WHEELS"
    exit 0
fi

if [[ " $* " != *" --dry-run "* ]]; then
    missing=$($PY - <<'EOF'
import importlib.util
print(" ".join(n for n in ("deepspeed", "trl", "datasets") if importlib.util.find_spec(n) is None))
EOF
)
    if [[ -n "$missing" ]]; then
        if compgen -G "$WHEELS/*.whl" >/dev/null; then
            echo "[gpu.sh] installing from $WHEELS: $missing" >&2
            $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
                "$WHEELS"/*.whl || echo "[gpu.sh] wheel install failed; sections needing $missing will be skipped" >&2
            export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        else
            echo "[gpu.sh] trying pip for: $missing" >&2
            timeout 240 $PY -m pip install -q $missing \
                || echo "[gpu.sh] no index reachable; sections needing $missing will be skipped" >&2
        fi
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# 7.5 min for the bench itself: the installs above take seconds from wheels.
exec timeout 450 $PY bench/gpu_bench.py "$@"
