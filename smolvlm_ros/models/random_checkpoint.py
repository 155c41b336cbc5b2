"""Build ``random:<shape>`` checkpoints offline.

No model hub is reachable where tests and benchmarks run, yet they must exercise the real
architecture and the real loading path. So we build, from nothing but code, a complete Hugging
Face checkpoint directory (config, random weights, tokenizer, processor, chat template) for a
:class:`~smolvlm_ros.models.shapes.ModelShape` and load it back with ``from_pretrained`` exactly
like a downloaded checkpoint. The build is deterministic (fixed corpus and seed) and cached on
disk, keyed by shape and :data:`BUILD_VERSION`.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path

from smolvlm_ros.models.shapes import BASE_SPECIAL_TOKENS, ModelShape

# Bump when the build changes, so stale caches are rebuilt rather than reused.
BUILD_VERSION = 1
MARKER_FILE = "smolvlm_ros_random.json"
SEED = 0

# The chat template of the public SmolVLM checkpoints.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# A fixed training text, so the BPE merges (and therefore token ids) never depend on the machine.
_CORPUS = """\
A robot drives down the hallway and its camera sees a person holding a red cup near the door.
The image shows a kitchen with a table, two chairs, a window and a plant on the counter.
What is in front of the robot? There is a box on the floor, and a cat sitting next to it.
Describe the scene in one sentence. A man in a white suit stands on a grey surface under a
black sky; a flag and a rocket are behind him. Is the path clear? No, a chair blocks the way.
How many people are in the room? Three people are talking near a large screen on the wall.
The warehouse has shelves full of boxes, a forklift, and bright lights on the ceiling.
A cup of coffee sits on a saucer on a wooden table next to a spoon.
Outside, cars are parked along the street, trees line the sidewalk and the sky is blue.
"""

# Filler syllables: the random model's unused vocabulary becomes pronounceable pseudo-words, so
# its (meaningless) output still reads as text rather than as placeholder tokens.
_ONSETS = ["b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]
_VOWELS = ["a", "e", "i", "o", "u"]


def _pseudo_words():
    syllables = [o + v for o in _ONSETS for v in _VOWELS]
    for length in itertools.count(2):
        for parts in itertools.product(syllables, repeat=length):
            yield "".join(parts)


def build_tokenizer(shape: ModelShape):
    """A byte-level BPE tokenizer with the shape's vocabulary size and special-token ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    trainer = trainers.BpeTrainer(
        vocab_size=1000,
        special_tokens=list(BASE_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    seed_tok = Tokenizer(models.BPE())
    seed_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    seed_tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    trained = json.loads(seed_tok.to_str())["model"]
    vocab: dict[str, int] = dict(trained["vocab"])
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]

    words = _pseudo_words()
    while len(vocab) < shape.base_vocab_size:
        word = next(words)
        for candidate in ("Ġ" + word, word):  # "Ġ" is the byte-level space
            if candidate not in vocab and len(vocab) < shape.base_vocab_size:
                vocab[candidate] = len(vocab)

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(shape.added_tokens))
    assert tok.get_vocab_size() == shape.vocab_size, tok.get_vocab_size()

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
        model_max_length=shape.max_position_embeddings,
        chat_template=CHAT_TEMPLATE,
    )


def build_processor(shape: ModelShape):
    """An Idefics3Processor configured like the public checkpoint of this shape."""
    from transformers import Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import (
        Idefics3ImageProcessorPil,
    )

    image_processor = Idefics3ImageProcessorPil(
        do_resize=True,
        size={"longest_edge": shape.processor_longest_edge},
        resample=1,  # Lanczos, as the public checkpoints
        do_image_splitting=True,
        max_image_size={"longest_edge": shape.image_size},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pad=True,
    )
    return Idefics3Processor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(shape),
        image_seq_len=shape.tokens_per_tile,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(shape: ModelShape):
    """The Idefics3Config of this shape."""
    from transformers import Idefics3Config

    eou = shape.token_id("<end_of_utterance>")
    return Idefics3Config(
        vision_config=dict(
            hidden_size=shape.vision_hidden,
            intermediate_size=shape.vision_intermediate,
            num_hidden_layers=shape.vision_layers,
            num_attention_heads=shape.vision_heads,
            image_size=shape.image_size,
            patch_size=shape.patch_size,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=shape.vocab_size,
            hidden_size=shape.text_hidden,
            intermediate_size=shape.text_intermediate,
            num_hidden_layers=shape.text_layers,
            num_attention_heads=shape.text_heads,
            num_key_value_heads=shape.text_kv_heads,
            head_dim=shape.head_dim,
            max_position_embeddings=shape.max_position_embeddings,
            rope_parameters={"rope_theta": shape.rope_theta, "rope_type": "default"},
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=eou,
            pad_token_id=2,
        ),
        scale_factor=shape.scale_factor,
        image_token_id=shape.token_id(shape.image_token),
        tie_word_embeddings=False,
        pad_token_id=2,
        bos_token_id=1,
        eos_token_id=eou,
    )


def build_checkpoint(shape: ModelShape, out_dir: Path) -> Path:
    """Write a complete random-weight checkpoint of ``shape`` to ``out_dir``."""
    import torch
    from transformers import GenerationConfig, Idefics3ForConditionalGeneration

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    model = Idefics3ForConditionalGeneration(build_config(shape)).eval()
    eou = shape.token_id("<end_of_utterance>")
    model.generation_config = GenerationConfig(
        bos_token_id=1, eos_token_id=[2, eou], pad_token_id=2, do_sample=False
    )
    # The public checkpoints are stored in bfloat16; so are ours (half the disk, same loading).
    model.to(torch.bfloat16).save_pretrained(out_dir)
    build_processor(shape).save_pretrained(out_dir)
    marker = {"shape": shape.name, "build_version": BUILD_VERSION, "seed": SEED}
    (out_dir / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")
    return out_dir


def cache_root() -> Path:
    """Where built checkpoints live: $SMOLVLM_ROS_CACHE, else ~/.cache/smolvlm_ros."""
    root = os.environ.get("SMOLVLM_ROS_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "smolvlm_ros"


def ensure_random_checkpoint(shape: ModelShape, root: Path | None = None) -> Path:
    """The cached checkpoint directory of ``shape``, building it on first use.

    Built in a temporary sibling and renamed into place, so concurrent builders (a test and a
    node process, say) never see a half-written directory.
    """
    target = (root or cache_root()) / f"random-{shape.name}-v{BUILD_VERSION}"
    if (target / MARKER_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build_checkpoint(shape, staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / MARKER_FILE).is_file():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
