"""ctypes binding of Rockchip's RKLLM C API (librkllmrt.so, RKLLM runtime v1.3.0), the NPU
decoder of Rockchip's own SmolVLM stack.

Why ctypes: librkllmrt ships as an aarch64 shared library with a C header and no Python
package; a binding here needs nothing built on the board. Why only a binding so far: the
engine's language stage takes token ids and image embeddings, RKLLM takes a prompt *text* with
image tags and does its own tokenising, so wiring it in as a LanguageStage is a separate step
(README "Rockchip NPU"). What is here is checked: every struct's size and field offsets
against the v1.3.0 header compiled with g++ (test/test_rkllm_layout.py; LP64, the same on
aarch64 and x86-64), and the calls are declared with their C argument types so ctypes
converts and checks them.

The layouts follow ``rkllm-runtime/Linux/librkllm_api/include/rkllm.h`` of airockchip/rknn-llm
v1.3.0. Older runtimes (1.1, 1.2) have other structs (their rkllm_init takes the result
callback itself, not an RKLLMCallback struct) and must not be driven with this binding:
:func:`load` refuses a library without ``rkllm_set_cross_attn_params``, first declared in the
v1.3.0 header.
"""

from __future__ import annotations

import ctypes
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    Union,
    c_bool,
    c_char_p,
    c_float,
    c_int,
    c_int8,
    c_int32,
    c_size_t,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)

LLMHandle = c_void_p

# LLMCallState
RKLLM_RUN_NORMAL, RKLLM_RUN_WAITING, RKLLM_RUN_FINISH, RKLLM_RUN_ERROR = 0, 1, 2, 3
# RKLLMInputType
RKLLM_INPUT_PROMPT, RKLLM_INPUT_TOKEN, RKLLM_INPUT_EMBED, RKLLM_INPUT_MULTIMODAL = 0, 1, 2, 3
# RKLLMInferMode
RKLLM_INFER_GENERATE, RKLLM_INFER_GET_LAST_HIDDEN_LAYER, RKLLM_INFER_GET_LOGITS = 0, 1, 2

# SmolVLM's chat template as Rockchip's multimodal demo sets it (system, prefix, postfix).
SMOLVLM_CHAT_TEMPLATE = ("", "<|im_start|>", "<end_of_utterance>\nAssistant:")


class RKLLMExtendParam(Structure):
    _fields_ = [
        ("base_domain_id", c_int32),
        ("embed_flash", c_int8),
        ("enabled_cpus_num", c_int8),
        ("enabled_cpus_mask", c_uint32),
        ("n_batch", c_uint8),
        ("use_cross_attn", c_int8),
        ("reserved", c_uint8 * 104),
    ]


class RKLLMParam(Structure):
    _fields_ = [
        ("model_path", c_char_p),
        ("max_context_len", c_int32),
        ("max_new_tokens", c_int32),
        ("top_k", c_int32),
        ("n_keep", c_int32),
        ("top_p", c_float),
        ("temperature", c_float),
        ("repeat_penalty", c_float),
        ("frequency_penalty", c_float),
        ("presence_penalty", c_float),
        ("mirostat", c_int32),
        ("mirostat_tau", c_float),
        ("mirostat_eta", c_float),
        ("skip_special_token", c_bool),
        ("ignore_eos_token", c_bool),
        ("is_async", c_bool),
        ("extend_param", RKLLMExtendParam),
    ]


class RKLLMEmbedInput(Structure):
    _fields_ = [("embed", POINTER(c_float)), ("n_tokens", c_size_t)]


class RKLLMTokenInput(Structure):
    _fields_ = [("input_ids", POINTER(c_int32)), ("n_tokens", c_size_t)]


class RKLLMImageInput(Structure):
    """The anonymous ``image`` struct inside RKLLMMultiModalInput."""

    _fields_ = [
        ("image_embed", POINTER(c_float)),
        ("n_image_tokens", c_size_t),
        ("n_image", c_size_t),
        ("image_start", c_char_p),
        ("image_end", c_char_p),
        ("image_content", c_char_p),
        ("image_width", c_size_t),
        ("image_height", c_size_t),
    ]


class RKLLMVideoInput(Structure):
    """The anonymous ``video`` struct inside RKLLMMultiModalInput."""

    _fields_ = [
        ("video_embed", POINTER(c_float)),
        ("n_frame_tokens", c_size_t),
        ("n_frame_per_video", c_size_t),
        ("n_video", c_size_t),
        ("video_start", c_char_p),
        ("video_end", c_char_p),
        ("video_content", c_char_p),
        ("frame_width", c_size_t),
        ("frame_height", c_size_t),
    ]


class RKLLMMultiModalInput(Structure):
    _fields_ = [("prompt", c_char_p), ("image", RKLLMImageInput), ("video", RKLLMVideoInput)]


class _RKLLMInputUnion(Union):
    _fields_ = [
        ("prompt_input", c_char_p),
        ("embed_input", RKLLMEmbedInput),
        ("token_input", RKLLMTokenInput),
        ("multimodal_input", RKLLMMultiModalInput),
    ]


class RKLLMInput(Structure):
    _anonymous_ = ("_input",)
    _fields_ = [
        ("role", c_char_p),
        ("enable_thinking", c_bool),
        ("input_type", c_int),  # RKLLMInputType (a C enum: int-sized)
        ("_input", _RKLLMInputUnion),
    ]


class RKLLMLoraParam(Structure):
    _fields_ = [("lora_adapter_name", c_char_p)]


class RKLLMPromptCacheParam(Structure):
    _fields_ = [("save_prompt_cache", c_int), ("prompt_cache_path", c_char_p)]


class RKLLMSamplingParam(Structure):
    _fields_ = [
        ("top_k", c_int32),
        ("top_p", c_float),
        ("temperature", c_float),
        ("repeat_penalty", c_float),
        ("frequency_penalty", c_float),
        ("presence_penalty", c_float),
        ("mirostat", c_int32),
        ("mirostat_tau", c_float),
        ("mirostat_eta", c_float),
    ]


class RKLLMInferParam(Structure):
    _fields_ = [
        ("mode", c_int),  # RKLLMInferMode
        ("lora_params", POINTER(RKLLMLoraParam)),
        ("prompt_cache_params", POINTER(RKLLMPromptCacheParam)),
        ("sampling_params", POINTER(RKLLMSamplingParam)),
        ("keep_history", c_int),
        ("max_new_tokens", c_int32),
    ]


class RKLLMResultLastHiddenLayer(Structure):
    _fields_ = [("hidden_states", POINTER(c_float)), ("embd_size", c_int), ("num_tokens", c_int)]


class RKLLMResultLogits(Structure):
    _fields_ = [("logits", POINTER(c_float)), ("vocab_size", c_int), ("num_tokens", c_int)]


class RKLLMPerfStat(Structure):
    _fields_ = [
        ("prefill_time_ms", c_float),
        ("prefill_tokens", c_int),
        ("generate_time_ms", c_float),
        ("generate_tokens", c_int),
        ("memory_usage_mb", c_float),
    ]


class RKLLMResult(Structure):
    _fields_ = [
        ("text", c_char_p),
        ("token_id", c_int32),
        ("last_hidden_layer", RKLLMResultLastHiddenLayer),
        ("logits", RKLLMResultLogits),
        ("perf", RKLLMPerfStat),
    ]


LLMResultCallback = CFUNCTYPE(c_int, POINTER(RKLLMResult), c_void_p, c_int)
LLMTokenizerCallback = CFUNCTYPE(c_int, c_void_p, c_char_p, c_int32, POINTER(c_int32), c_int32)
LLMGetEmbedCallback = CFUNCTYPE(c_int, c_void_p, POINTER(c_int32), c_uint64, c_void_p, c_uint64)


class RKLLMCallback(Structure):
    _fields_ = [
        ("result_callback", LLMResultCallback),
        ("result_userdata", c_void_p),
        ("tokenizer_callback", LLMTokenizerCallback),
        ("tokenizer_userdata", c_void_p),
        ("embed_callback", LLMGetEmbedCallback),
        ("embed_userdata", c_void_p),
    ]


# The calls this project uses: (name, return type, argument types).
PROTOTYPES = (
    ("rkllm_createDefaultParam", RKLLMParam, ()),
    ("rkllm_init", c_int, (POINTER(LLMHandle), POINTER(RKLLMParam), POINTER(RKLLMCallback))),
    ("rkllm_run", c_int, (LLMHandle, POINTER(RKLLMInput), POINTER(RKLLMInferParam), c_void_p)),
    ("rkllm_abort", c_int, (LLMHandle,)),
    ("rkllm_clear_kv_cache", c_int, (LLMHandle, c_int, POINTER(c_int), POINTER(c_int))),
    ("rkllm_set_chat_template", c_int, (LLMHandle, c_char_p, c_char_p, c_char_p)),
    ("rkllm_destroy", c_int, (LLMHandle,)),
)
# Present from v1.3.0 on (with the RKLLMCallback struct this binding passes to rkllm_init).
_V13_SYMBOL = "rkllm_set_cross_attn_params"


def load(path: str = "librkllmrt.so") -> ctypes.CDLL:
    """librkllmrt with its prototypes declared; OSError when absent, RuntimeError when it is
    older than the v1.3 API these structs describe."""
    library = ctypes.CDLL(path)
    if not hasattr(library, _V13_SYMBOL):
        raise RuntimeError(
            f"{path} predates RKLLM runtime v1.3.0 (no {_V13_SYMBOL}): its structs differ "
            "from this binding's; install librkllmrt.so from airockchip/rknn-llm v1.3.0"
        )
    for name, restype, argtypes in PROTOTYPES:
        function = getattr(library, name)
        function.restype, function.argtypes = restype, list(argtypes)
    return library
