"""Sizes and field offsets of RKLLM's C structs as g++ lays them out from the real header, next
to what the ctypes binding (smolvlm_ros/engine/backends/_rkllm.py) declares.

    python tools/rkllm_layout.py /path/to/rkllm.h [--write test/data/rkllm_layout.json]

The header is airockchip/rknn-llm's rkllm-runtime/Linux/librkllm_api/include/rkllm.h (not
copied into this repository). The program compiled here prints sizeof/offsetof for every struct
and field the binding declares; ``--write`` stores that as the reference the unit test
(test/test_rkllm_layout.py) compares the binding with, so the test runs without the header.
Exit status 1 when the binding and the header disagree.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smolvlm_ros.engine.backends import _rkllm

# ctypes struct -> the C type expression (anonymous members are reached through their parent).
C_TYPES = {
    "RKLLMImageInput": "decltype(RKLLMMultiModalInput::image)",
    "RKLLMVideoInput": "decltype(RKLLMMultiModalInput::video)",
}
SKIP = {"_RKLLMInputUnion"}


def structs() -> list[type]:
    return [
        value
        for name, value in vars(_rkllm).items()
        if isinstance(value, type)
        and issubclass(value, ctypes.Structure | ctypes.Union)
        and value not in (ctypes.Structure, ctypes.Union)
        and name not in SKIP
    ]


def binding_layout() -> dict:
    layout = {}
    for struct in structs():
        fields = {}
        for name, *_ in struct._fields_:
            if name == "_input":  # RKLLMInput's anonymous union: its members sit at its offset
                offset = struct._input.offset
                for member, *_ in _rkllm._RKLLMInputUnion._fields_:
                    fields[member] = offset
                continue
            fields[name] = getattr(struct, name).offset
        layout[struct.__name__] = {"size": ctypes.sizeof(struct), "offsets": fields}
    return layout


def header_layout(header: Path) -> dict:
    # <cstddef> first: the header uses size_t without including it.
    lines = ["#include <cstddef>", "#include <cstdio>", f'#include "{header}"', "int main() {"]
    for struct, entry in binding_layout().items():
        c_type = C_TYPES.get(struct, struct)
        lines.append(f'printf("{struct} size %zu\\n", sizeof({c_type}));')
        for field in entry["offsets"]:
            lines.append(f'printf("{struct} {field} %zu\\n", offsetof({c_type}, {field}));')
    lines.append("return 0; }")
    with tempfile.TemporaryDirectory() as work:
        source, program = Path(work) / "layout.cpp", Path(work) / "layout"
        source.write_text("\n".join(lines))
        subprocess.run(["g++", "-std=c++17", "-o", str(program), str(source)], check=True)
        output = subprocess.run([str(program)], check=True, capture_output=True, text=True)
    layout: dict = {}
    for line in output.stdout.splitlines():
        struct, field, value = line.split()
        entry = layout.setdefault(struct, {"size": 0, "offsets": {}})
        if field == "size":
            entry["size"] = int(value)
        else:
            entry["offsets"][field] = int(value)
    return layout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("header", type=Path)
    parser.add_argument("--write", type=Path, help="store the header's layout as JSON here")
    args = parser.parse_args()
    real, ours = header_layout(args.header.resolve()), binding_layout()
    if args.write:
        args.write.write_text(json.dumps(real, indent=1, sort_keys=True) + "\n")
    bad = [name for name in real if real[name] != ours.get(name)]
    for name in real:
        print(f"{name:28} size {real[name]['size']:4}  {'ok' if name not in bad else 'DIFFERS'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
