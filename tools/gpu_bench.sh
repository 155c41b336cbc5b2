#!/usr/bin/env bash
# The benchmark on a lent GPU machine (H100/H200: Python 3.12 with CUDA torch, no internet, no ROS),
# prepared here so that the machine's minutes go to measuring.
#
#   tools/gpu_bench.sh download [DIR]   here, with a package index: the wheels of tools/gpu-wheels.txt
#                                       (and, with PHOTOS=1, tools/gpu-wheels-photos.txt) for
#                                       CPython 3.12 on manylinux x86_64 into DIR (default wheels/)
#   tools/gpu_bench.sh check [DIR]      here: installs DIR with --no-index into a scratch --target for
#                                       CPython 3.12, so a wheel missing from DIR fails here and not
#                                       on the GPU machine; lists the binary wheels
#   tools/gpu_bench.sh run [DIR]        on the GPU machine: installs DIR into /tmp/pydeps (no index)
#                                       and runs the bench for each model in MODELS (default
#                                       "random:256m random:2b"), bf16, cameras 1,4,8,16, 32 new
#                                       tokens; JSON, log and the GPU's name under $OUT
#
# Environment: OUT (default gpu_bench_out/), MODELS, CAMERAS (1,4,8,16), TOKENS (32), REPEATS (3),
# WARMUP (1), PHOTOS (1: also the photo wheels), PYTHON (python3), EXTRA_ARGS (more bench flags),
# DEVICE (cuda; cpu: a smoke test of this script without a GPU), DTYPE (bfloat16).
# Wheels and outputs stay out of git (.gitignore). On this workplace's device tool: carry wheels/
# (the core set is about 45 MB, under the 64 MiB a call may carry; the lent image already has the
# photo packages) and run `bash tools/gpu_bench.sh run` there, one model per call if time is short
# (MODELS=random:256m, then MODELS=random:2b). The set carries its own numpy (the venv's), which
# shadows the machine's under /tmp/pydeps; torch, OpenCV and scikit-image stay the machine's.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
PYDEPS=${PYDEPS:-/tmp/pydeps}
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64)
# From the wheel folder alone; no warnings about the installing interpreter's own packages.
QUIET_INSTALL=(--quiet --no-index --no-compile --no-warn-conflicts --root-user-action=ignore)

requirements() {
    local files=("$REPO/tools/gpu-wheels.txt")
    [[ ${PHOTOS:-0} == 1 ]] && files+=("$REPO/tools/gpu-wheels-photos.txt")
    local file
    for file in "${files[@]}"; do printf -- '-r\n%s\n' "$file"; done
}

# pip with no configuration and no PIP_* variables: a machine's own find-links or index (this
# one has some) must not fill a gap in the wheel folder unnoticed.
bare_pip() {
    env -i PATH="$PATH" HOME="${HOME:-/tmp}" PIP_CONFIG_FILE=/dev/null \
        PIP_DISABLE_PIP_VERSION_CHECK=1 "$@"
}

target_flags() {  # pip install flags for CPython 3.12 wheels on Linux x86_64, whatever runs pip
    printf -- '--python-version\n3.12\n--implementation\ncp\n--only-binary=:all:\n'
    local platform
    for platform in "${PLATFORMS[@]}"; do printf -- '--platform\n%s\n' "$platform"; done
}

download() {  # here, with the configured package index
    local dir=$1
    mkdir -p "$dir"
    local -a reqs flags
    mapfile -t reqs < <(requirements)
    mapfile -t flags < <(target_flags)
    "$PYTHON" -m pip download --no-deps "${flags[@]}" "${reqs[@]}" -d "$dir"
    du -sh "$dir"
}

check() {  # here: a complete, installable set for CPython 3.12, from DIR alone
    local dir scratch
    dir=$(cd "$1" && pwd)
    scratch=$(mktemp -d)
    local -a reqs flags
    mapfile -t reqs < <(requirements)
    mapfile -t flags < <(target_flags)
    (cd "$REPO" && bare_pip "$PYTHON" -m pip install "${QUIET_INSTALL[@]}" --find-links "$dir" \
        --target "$scratch" "${flags[@]}" "${reqs[@]}")
    echo "complete: every requirement and dependency installed from $dir alone (CPython 3.12)"
    echo "binary wheels (cp312 or abi3, manylinux x86_64):"
    ls "$dir" | grep -v -- '-py3-none-any\.whl$\|-py2\.py3-none-any\.whl$' | sed 's/^/  /' || true
    rm -rf "$scratch"
}

install_on_gpu() {
    local dir=$1
    local -a reqs
    mapfile -t reqs < <(requirements)
    (cd "$REPO" && bare_pip "$PYTHON" -m pip install "${QUIET_INSTALL[@]}" --find-links "$dir" \
        --target "$PYDEPS" --upgrade "${reqs[@]}")
}

preflight() {  # what runs the bench, in the log: versions, the GPU, and the imports it needs
    "$PYTHON" - "${DEVICE:-cuda}" <<'EOF'
import sys
import cv2, numpy, PIL, skimage, tokenizers, torch, transformers
print("python", sys.version.split()[0], "| torch", torch.__version__, "| transformers",
      transformers.__version__, "| tokenizers", tokenizers.__version__, "| numpy",
      numpy.__version__, "| opencv", cv2.__version__, "| scikit-image", skimage.__version__)
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device: this script is for the GPU machine")
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(), "| cuda", torch.version.cuda)
EOF
}

run() {
    local dir=$1
    local out=${OUT:-$REPO/gpu_bench_out}
    mkdir -p "$out"
    install_on_gpu "$dir"
    export PYTHONPATH="$PYDEPS${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    export SMOLVLM_ROS_CACHE=${SMOLVLM_ROS_CACHE:-/tmp/smolvlm_ros_cache}  # random checkpoints
    export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor_cache}
    preflight | tee "$out/environment.txt"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv \
        >> "$out/environment.txt" 2>&1 || true
    local model name
    for model in ${MODELS:-random:256m random:2b}; do
        name=${model//[^A-Za-z0-9._-]/-}
        echo "== $model"
        # shellcheck disable=SC2086  # EXTRA_ARGS: more bench flags, split on purpose
        (cd "$REPO" && "$PYTHON" -m smolvlm_ros.bench --model "$model" \
            --device "${DEVICE:-cuda}" --dtype "${DTYPE:-bfloat16}" \
            --cameras "${CAMERAS:-1,4,8,16}" --max-new-tokens "${TOKENS:-32}" \
            --repeats "${REPEATS:-3}" --warmup "${WARMUP:-1}" --json "$out/bench-$name.json" \
            ${EXTRA_ARGS:-}) 2>&1 | tee "$out/bench-$name.log"
    done
}

main() {
    local verb=${1:-}
    local dir=${2:-$REPO/wheels}
    case $verb in
        download) download "$dir" ;;
        check) check "$dir" ;;
        run) run "$dir" ;;
        *) sed -n '2,23p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
    esac
}

main "$@"
