"""What int8, int4 (and bf16) cost in accuracy on the openvino backend, against float32.

    python -m smolvlm_ros.tools.quantization_accuracy --model <checkpoint> [--tokens 16]

For every photograph (:mod:`smolvlm_ros.photos`) and prompt, float32 (the export run in f32:
token for token the torch path) makes a greedy answer. Each variant then reads that same
answer (teacher forcing, so one early difference does not make every later position differ):
at each position the cosine between its logits and float32's, and whether its top-1 token is
float32's. Also: the cosine of the image embeddings, and how many of the variant's own greedy
answers are identical to float32's. Printed as one Markdown table; ``--json`` keeps the rows.

On ``random:<shape>`` weights the logits are nearly flat, so top-1 agreement understates what a
trained checkpoint keeps (tiny margins flip); run it on the real checkpoint you deploy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

PROMPTS = (
    "Describe this image in one sentence.",
    "What is the main object in the picture?",
    "Is there a person in this image? Answer yes or no.",
)
VARIANTS = (
    ("float32", "int8"),
    ("float32", "int4"),
    ("bfloat16", "none"),
    ("bfloat16", "int8"),
    ("bfloat16", "int4"),
)


def _engine(loaded, quantization: str, dtype: str, threads: int):
    from smolvlm_ros.engine import Engine
    from smolvlm_ros.engine.backends.openvino_backend import OpenVINOBackend
    from smolvlm_ros.engine.backends.registry import choose
    from smolvlm_ros.engine.export import ensure_export

    backend = OpenVINOBackend(ensure_export(loaded, quantization), loaded, dtype, threads)
    return Engine(loaded, backend, backend_choice=choose("openvino", "cpu"))


def _pass(engine, frames, tokens: int, answers=None) -> dict:
    """Image embeddings, greedy answers and the logits over ``answers`` (own ones if None)."""
    import torch

    out = {"embeddings": [], "answers": [], "logits": []}
    for frame in frames:
        plan = engine.plan(frame)
        pixels = engine.preprocess_image(frame, plan)
        image = engine.backend.vision.encode(
            pixels["pixel_values"][0], pixels["pixel_attention_mask"][0]
        )
        out["embeddings"].append(image)
        for prompt in PROMPTS:
            result = engine.caption(frame, prompt, max_new_tokens=tokens, min_new_tokens=tokens)
            out["answers"].append(result.token_ids)
            forced = answers[len(out["logits"])] if answers else result.token_ids
            ids = torch.cat([engine.prompt_ids(prompt, [plan]), torch.tensor(forced)])[None]
            language = engine.backend.language
            logits = language.tail_logits(ids, torch.ones_like(ids), image, len(forced))
            out["logits"].append(logits[0])
    engine.clear_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    from smolvlm_ros.engine import Frame
    from smolvlm_ros.engine.backends.openvino_backend import cpu_threads
    from smolvlm_ros.models.loading import _cpu_has_native_bf16, load_model
    from smolvlm_ros.photos import PHOTO_NAMES, photo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:256m")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    loaded = load_model(args.model, "cpu", "float32", weights=False)
    threads = cpu_threads(args.threads)
    frames = [Frame(photo(name), camera=name) for name in PHOTO_NAMES]
    reference = _pass(_engine(loaded, "none", "float32", threads), frames, args.tokens)
    rows = []
    for dtype, quantization in VARIANTS:
        if dtype == "bfloat16" and not _cpu_has_native_bf16():
            continue
        engine = _engine(loaded, quantization, dtype, threads)
        got = _pass(engine, frames, args.tokens, reference["answers"])
        cos = torch.nn.functional.cosine_similarity
        pairs = zip(reference["embeddings"], got["embeddings"], strict=True)
        image_cos = [float(cos(a.flatten(), b.flatten(), dim=0)) for a, b in pairs]
        logit_cos, agree = [], []
        for ref, var in zip(reference["logits"], got["logits"], strict=True):
            logit_cos += cos(ref, var, dim=-1).tolist()
            agree += (ref.argmax(-1) == var.argmax(-1)).tolist()
        same = sum(a == b for a, b in zip(reference["answers"], got["answers"], strict=True))
        rows.append(
            {
                "variant": engine.backend.dtype,
                "image_cosine_mean": statistics.mean(image_cos),
                "image_cosine_min": min(image_cos),
                "logit_cosine_mean": statistics.mean(logit_cos),
                "logit_cosine_min": min(logit_cos),
                "top1_agreement": sum(agree) / len(agree),
                "identical_answers": f"{same}/{len(got['answers'])}",
            }
        )
        del engine
    print(f"# {args.model}: {len(frames)} photos x {len(PROMPTS)} prompts, {args.tokens} tokens "
          "teacher-forced on the float32 answer")  # fmt: skip
    print("| variant | image emb. cosine mean / min | logit cosine mean / min | top-1 agreement "
          "| identical greedy answers |\n|---|---|---|---|---|")  # fmt: skip
    for r in rows:
        print(f"| {r['variant']} | {r['image_cosine_mean']:.4f} / {r['image_cosine_min']:.4f} | "
              f"{r['logit_cosine_mean']:.4f} / {r['logit_cosine_min']:.4f} | "
              f"{100 * r['top1_agreement']:.1f}% | {r['identical_answers']} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
