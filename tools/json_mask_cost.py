"""Per-token cost of xgrammar's JSON-schema mask on SmolVLM's tokenizer (the `json` answer type).

Feeds a fixed JSON answer through the grammar matcher token by token, filling and applying the
allowed-token mask at each step, as decoding does, and prints the cost per token.

    .venv/bin/python tools/json_mask_cost.py [--model random:256m] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import xgrammar

from smolvlm_ros.models.loading import load_model

SCHEMA = {
    "type": "object",
    "properties": {
        "door": {"enum": ["open", "closed"]},
        "people": {"type": "integer", "minimum": 0, "maximum": 99},
        "note": {"type": "string", "maxLength": 40},
    },
    "required": ["door", "people"],
    "additionalProperties": False,
}
ANSWER = {"door": "open", "people": 3, "note": "a cup on the table"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:256m")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    loaded = load_model(args.model, device="cpu", dtype="float32")
    tokenizer = loaded.processor.tokenizer
    vocab = loaded.model.config.text_config.vocab_size
    started = time.perf_counter()
    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
    grammar = xgrammar.GrammarCompiler(info).compile_json_schema(
        json.dumps(SCHEMA), any_whitespace=False
    )
    compile_s = time.perf_counter() - started
    tokens = tokenizer(json.dumps(ANSWER), add_special_tokens=False)["input_ids"]
    per_token = []
    for _ in range(args.repeats):
        matcher = xgrammar.GrammarMatcher(grammar)
        bitmask = xgrammar.allocate_token_bitmask(1, vocab)
        logits = torch.zeros(1, vocab)
        started = time.perf_counter()
        for token in tokens:
            matcher.fill_next_token_bitmask(bitmask)
            xgrammar.apply_token_bitmask_inplace(logits, bitmask)
            if not matcher.accept_token(token):
                raise SystemExit(f"the grammar refused token {token}: schema and answer disagree")
        per_token.append((time.perf_counter() - started) / len(tokens))
    print(
        f"{args.model}: vocabulary {vocab}, {len(tokens)} answer tokens, schema compiled in "
        f"{compile_s:.2f} s; mask per token: median {1000 * statistics.median(per_token):.2f} ms "
        f"over {args.repeats} runs"
    )


if __name__ == "__main__":
    main()
