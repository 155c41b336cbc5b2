"""ONNX -> .rknn with rknn-toolkit2, run by ``.venv-rknn/bin/python`` (never by the node).

Why a script run by path in its own interpreter: rknn-toolkit2 needs numpy<=1.26 and onnx<=1.18,
which cannot share the main venv, and that venv has no transformers, so this file imports only
the standard library, numpy and ``rknn`` (plus, by path, ``_rknn_runtime.py``: the backend's own
RKNNLite-facing code). :mod:`smolvlm_ros.engine.export.rknn` writes a JSON job and runs
``python rknn_convert.py job.json``; this writes the .rknn and a JSON report (times, toolkit
version, peak memory) and, when the job has ``simulate``, runs those uint8 NHWC tiles through
the simulator via :class:`SimulatorRKNNLite` and saves the outputs for the caller to compare.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

INPUT_NAME = "pixel_values"


class SimulatorRKNNLite:
    """Adapter, NOT the board's runtime: rknn-toolkit2's x86 simulator behind the methods of
    ``rknnlite.api.RKNNLite`` (load_rknn, init_runtime, inference, release), so that
    ``RKNNLiteRunner`` (the code the node runs on the board) is exercised unchanged here.

    The simulator can only run the model converted in the same process (it cannot load a
    stored .rknn file), so ``load_rknn`` accepts exactly the file this process just exported
    and fails like RKNNLite (``-1``) for any other; ``init_runtime`` starts the simulator
    (the core mask has no meaning there and is only recorded).
    """

    def __init__(self, rknn: Any, exported: Path) -> None:
        self.rknn = rknn
        self.exported = exported.resolve()
        self.core_mask: int | None = None

    def load_rknn(self, path: str) -> int:
        return 0 if Path(path).resolve() == self.exported else -1

    def init_runtime(self, core_mask: int = 0, **_: Any) -> int:
        self.core_mask = core_mask
        return self.rknn.init_runtime()  # no target: the simulator

    def inference(self, inputs: list, data_format: str = "nhwc") -> list | None:
        return self.rknn.inference(inputs=inputs, data_format=data_format)

    def release(self) -> None:
        """The RKNN object is the converter's; the job releases it once at the end."""


def _load_runtime_module(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("_rknn_runtime", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def convert(job: dict) -> dict:
    """Build ``job["rknn"]`` from ``job["onnx"]``; simulate if asked. Returns the report."""
    from rknn.api import RKNN

    report: dict[str, Any] = {"toolkit_version": version("rknn-toolkit2")}
    rknn = RKNN(verbose=False)
    try:
        quantize = job["dtype"] == "int8"
        rknn.config(
            mean_values=[job["mean"]],
            std_values=[job["std"]],
            target_platform=job["platform"],
            float_dtype="float16",
            **({"quantized_dtype": "w8a8"} if quantize else {}),
        )
        t0 = time.perf_counter()
        shape = job["input_shape_nchw"]
        if rknn.load_onnx(model=job["onnx"], inputs=[INPUT_NAME], input_size_list=[shape]) != 0:
            raise RuntimeError(f"rknn-toolkit2 could not load {job['onnx']}")
        t1 = time.perf_counter()
        if rknn.build(do_quantization=quantize, dataset=job.get("dataset")) != 0:
            raise RuntimeError(f"rknn-toolkit2 could not build {job['onnx']} for {job['platform']}")
        t2 = time.perf_counter()
        if rknn.export_rknn(job["rknn"]) != 0:
            raise RuntimeError(f"rknn-toolkit2 could not write {job['rknn']}")
        report.update(load_onnx_s=round(t1 - t0, 2), build_s=round(t2 - t1, 2))
        if job.get("simulate"):
            runtime = _load_runtime_module(job["runtime_module"])
            tiles = np.load(job["simulate"])
            adapter = SimulatorRKNNLite(rknn, Path(job["rknn"]))
            t3 = time.perf_counter()
            runner = runtime.RKNNLiteRunner(
                job["rknn"], job.get("core_mask", 0), lambda: adapter, [1, *tiles.shape[1:]]
            )
            outputs = runner.run(tiles)
            report["simulate_s"] = round(time.perf_counter() - t3, 2)
            report["simulated_tiles"] = int(tiles.shape[0])
            np.save(job["simulated"], outputs)
            if job.get("expect_refusal"):  # the runner must refuse a file it was not given
                try:
                    runtime.RKNNLiteRunner(job["expect_refusal"], 0, lambda: adapter, [1])
                    report["refusal"] = None
                except runtime.RKNNError as err:
                    report["refusal"] = str(err)
    finally:
        rknn.release()
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return report


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: rknn_convert.py JOB.json (written by smolvlm_ros.engine.export.rknn)")
        return 2
    job = json.loads(Path(argv[1]).read_text())
    report = convert(job)
    Path(job["report"]).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
