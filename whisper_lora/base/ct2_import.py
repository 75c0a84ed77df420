"""Import a CTranslate2 (faster-whisper) Whisper checkpoint into a transformers checkpoint.

A CTranslate2 ``model.bin`` (binary version 6) is laid out as::

    uint32 version | string spec-name | uint32 revision | uint32 n_variables
    n_variables x (string name | uint8 rank | rank x uint32 dim | uint8 dtype | uint32 nbytes | data)
    uint32 n_aliases | n_aliases x (string alias | string target)

where a string is ``uint16 length`` (including a trailing NUL) followed by UTF-8 bytes.
Self-attention q/k/v are fused in ``linear_0``, cross-attention k/v in ``linear_1``;
quantised variables carry a ``<name>_scale`` companion.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from whisper_lora.errors import ConversionError
from whisper_lora.languages import WHISPER_LANGUAGES

SUPPORTED_BINARY_VERSIONS = (5, 6)
# Order of CTranslate2's DataType enum.
_CT2_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # 5 = bfloat16
_BF16_ID = 5


class _ChainedReader:
    """Read several files (a model.bin split into parts) as one stream."""

    def __init__(self, paths: Iterable[Path]):
        self._files = [open(p, "rb") for p in paths]
        self._i = 0

    def read(self, n: int) -> bytes:
        out = b""
        while len(out) < n and self._i < len(self._files):
            chunk = self._files[self._i].read(n - len(out))
            if not chunk:
                self._i += 1
                continue
            out += chunk
        return out

    def close(self) -> None:
        for f in self._files:
            f.close()


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ConversionError(f"model.bin is truncated while reading {what} ({len(data)} of {n} bytes)")
    return data


def read_ct2_variables(paths: Path | Iterable[Path]) -> tuple[dict[str, np.ndarray], str]:
    """Parse a CTranslate2 model.bin (optionally split into parts) into named numpy arrays.

    Returns the variables (aliases resolved) and the spec name.
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    f = _ChainedReader(paths)
    try:

        def u(fmt: str, what: str):
            return struct.unpack(fmt, _read_exact(f, struct.calcsize(fmt), what))[0]

        def s(what: str) -> str:
            n = u("<H", what)
            return _read_exact(f, n, what)[:-1].decode("utf-8")

        version = u("<I", "version")
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise ConversionError(
                f"unsupported CTranslate2 binary version {version}; supported: {SUPPORTED_BINARY_VERSIONS}"
            )
        spec = s("spec name")
        u("<I", "spec revision")
        variables: dict[str, np.ndarray] = {}
        for _ in range(u("<I", "variable count")):
            name = s("variable name")
            shape = [u("<I", f"{name} shape") for _ in range(u("<B", f"{name} rank"))]
            dtype_id = u("<B", f"{name} dtype")
            nbytes = u("<I", f"{name} size")
            raw = _read_exact(f, nbytes, name)
            if dtype_id == _BF16_ID:
                arr = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            elif dtype_id < len(_CT2_DTYPES):
                arr = np.frombuffer(raw, _CT2_DTYPES[dtype_id])
            else:
                raise ConversionError(f"variable {name!r} has unknown dtype id {dtype_id}")
            variables[name] = arr.reshape(shape)
        for _ in range(u("<I", "alias count")):
            alias, target = s("alias"), s("alias target")
            variables[alias] = variables[target]
    finally:
        f.close()
    return variables, spec


def _dequantize(variables: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Turn every weight into float32, undoing int8/int16 quantisation with its scale."""
    out: dict[str, torch.Tensor] = {}
    for name, value in variables.items():
        if name.endswith("_scale"):
            continue
        scale = variables.get(name + "_scale")
        arr = value.astype(np.float32)
        if scale is not None:
            scale = scale.astype(np.float32)
            if scale.ndim == 0:
                arr = arr / scale
            else:  # per output row; conv weights were flattened to 2-D for the scale
                arr = (arr.reshape(arr.shape[0], -1) / scale[:, None]).reshape(arr.shape)
        out[name] = torch.from_numpy(np.ascontiguousarray(arr))
    return out


def _count_layers(names: Iterable[str], prefix: str) -> int:
    idx = {int(m.group(1)) for n in names if (m := re.match(re.escape(prefix) + r"(\d+)/", n))}
    return max(idx) + 1 if idx else 0


def ct2_to_state_dict(variables: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], dict]:
    """Map CTranslate2 Whisper variables onto a ``WhisperForConditionalGeneration`` state dict.

    Returns the state dict and the ``WhisperConfig`` keyword arguments it implies.
    """
    v = _dequantize(variables)
    try:
        d_model = v["decoder/embeddings/weight"].shape[1]
        dims = dict(
            vocab_size=v["decoder/embeddings/weight"].shape[0],
            num_mel_bins=v["encoder/conv1/weight"].shape[1],
            d_model=d_model,
            encoder_layers=_count_layers(v, "encoder/layer_"),
            decoder_layers=_count_layers(v, "decoder/layer_"),
            encoder_attention_heads=int(variables["encoder/num_heads"]),
            decoder_attention_heads=int(variables["decoder/num_heads"]),
            encoder_ffn_dim=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
            decoder_ffn_dim=v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
            max_source_positions=v["encoder/position_encodings/encodings"].shape[0],
            max_target_positions=v["decoder/position_encodings/encodings"].shape[0],
        )
    except KeyError as e:
        raise ConversionError(f"not a CTranslate2 Whisper checkpoint: variable {e} is missing") from None

    sd: dict[str, torch.Tensor] = {}

    def lin(dst: str, src: str, bias: bool = True) -> None:
        sd[f"{dst}.weight"] = v[f"{src}/weight"]
        if bias:
            sd[f"{dst}.bias"] = v[f"{src}/bias"]

    def norm(dst: str, src: str) -> None:
        sd[f"{dst}.weight"] = v[f"{src}/gamma"]
        sd[f"{dst}.bias"] = v[f"{src}/beta"]

    def qkv(dst: str, src: str) -> None:  # fused [q; k; v], k without bias
        w, b = v[f"{src}/weight"].chunk(3, 0), v[f"{src}/bias"].chunk(3, 0)
        for name, wi, bi in zip(("q_proj", "k_proj", "v_proj"), w, b, strict=True):
            sd[f"{dst}.{name}.weight"] = wi.clone()
            if name != "k_proj":
                sd[f"{dst}.{name}.bias"] = bi.clone()

    def kv(dst: str, src: str) -> None:  # fused [k; v], k without bias
        (wk, wv), (_, bv) = v[f"{src}/weight"].chunk(2, 0), v[f"{src}/bias"].chunk(2, 0)
        sd[f"{dst}.k_proj.weight"], sd[f"{dst}.v_proj.weight"] = wk.clone(), wv.clone()
        sd[f"{dst}.v_proj.bias"] = bv.clone()

    def ffn(dst: str, src: str) -> None:
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")
        lin(f"{dst}.fc1", f"{src}/ffn/linear_0")
        lin(f"{dst}.fc2", f"{src}/ffn/linear_1")

    enc, dec = "model.encoder", "model.decoder"
    lin(f"{enc}.conv1", "encoder/conv1")
    lin(f"{enc}.conv2", "encoder/conv2")
    sd[f"{enc}.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    norm(f"{enc}.layer_norm", "encoder/layer_norm")
    for i in range(dims["encoder_layers"]):
        dst, src = f"{enc}.layers.{i}", f"encoder/layer_{i}"
        qkv(f"{dst}.self_attn", f"{src}/self_attention/linear_0")
        lin(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        ffn(dst, src)

    sd[f"{dec}.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    sd[f"{dec}.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    norm(f"{dec}.layer_norm", "decoder/layer_norm")
    for i in range(dims["decoder_layers"]):
        dst, src = f"{dec}.layers.{i}", f"decoder/layer_{i}"
        qkv(f"{dst}.self_attn", f"{src}/self_attention/linear_0")
        lin(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        lin(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
        kv(f"{dst}.encoder_attn", f"{src}/attention/linear_1")
        lin(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
        norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        ffn(dst, src)
    # proj_out is tied to embed_tokens (CTranslate2 stores it as an alias).
    return sd, dims


def model_bin_parts(model_dirs: list[Path]) -> list[Path]:
    """The model.bin of the directories, or their ``model.bin.partN`` pieces in order."""
    for d in model_dirs:
        if (d / "model.bin").exists():
            return [d / "model.bin"]
    parts = [p for d in model_dirs for p in d.glob("model.bin.part*") if p.suffix[5:].isdigit()]
    if not parts:
        found = ", ".join(sorted(p.name for d in model_dirs for p in d.iterdir())) or "nothing"
        dirs = ", ".join(map(str, model_dirs))
        raise ConversionError(f"no model.bin (or model.bin.partN) in {dirs}; found: {found}")
    parts.sort(key=lambda p: int(p.suffix[5:]))
    numbers = [int(p.suffix[5:]) for p in parts]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise ConversionError(f"model.bin parts are not consecutive: {[p.name for p in parts]}")
    return parts


def _first_file(model_dirs: list[Path], name: str) -> Path | None:
    return next((d / name for d in model_dirs if (d / name).exists()), None)


def build_tokenizer(tokenizer_json: Path, vocab_size: int):
    """Build a ``WhisperTokenizer`` from a faster-whisper ``tokenizer.json``."""
    from transformers import AddedToken, WhisperTokenizer

    data = json.loads(tokenizer_json.read_text())
    model = data["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = WhisperTokenizer(vocab=model["vocab"], merges=merges)
    specials = sorted(data.get("added_tokens", []), key=lambda t: t["id"])
    tok.add_tokens([AddedToken(t["content"], special=True, normalized=False) for t in specials], special_tokens=True)
    n_ts = vocab_size - len(tok)
    if n_ts > 0:
        tok.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", normalized=False, special=False) for i in range(n_ts)])
    for t in specials:
        got = tok.convert_tokens_to_ids(t["content"])
        if got != t["id"]:
            raise ConversionError(f"token {t['content']!r} got id {got}, expected {t['id']}")
    if len(tok) != vocab_size:
        raise ConversionError(f"tokenizer has {len(tok)} tokens, the model {vocab_size}")
    return tok


def build_generation_config(tok, ct2_config: dict, dims: dict, multilingual: bool):
    """A Whisper ``GenerationConfig`` that supports ``generate(language=..., task=...)``."""
    from transformers import GenerationConfig

    ids = tok.convert_tokens_to_ids
    eot = ids("<|endoftext|>")
    lang_ids = set(ct2_config.get("lang_ids", []))
    lang_to_id = {}
    if multilingual:
        for code in WHISPER_LANGUAGES:
            tid = ids(f"<|{code}|>")
            if tid is not None and tid != tok.unk_token_id and (not lang_ids or tid in lang_ids):
                lang_to_id[f"<|{code}|>"] = tid
    gen = GenerationConfig(
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        decoder_start_token_id=ids("<|startoftranscript|>"),
        max_length=dims["max_target_positions"],
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, eot])),
        alignment_heads=[list(h) for h in ct2_config.get("alignment_heads", [])],
        is_multilingual=multilingual,
    )
    if multilingual:
        gen.lang_to_id = lang_to_id
        gen.task_to_id = {"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")}
    return gen


def convert_ct2_checkpoint(src_dirs: str | Path | list[Path], out_dir: str | Path) -> Path:
    """Convert a CTranslate2 Whisper checkpoint into a transformers checkpoint at ``out_dir``.

    ``src_dirs`` is one directory or several (a checkpoint whose ``model.bin.partN`` pieces
    are spread over several packages). The output is written atomically.
    """
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from whisper_lora.atomic import atomic_directory

    src_dirs = [Path(src_dirs)] if isinstance(src_dirs, (str, Path)) else [Path(d) for d in src_dirs]
    out_dir = Path(out_dir)
    for d in src_dirs:
        if not d.is_dir():
            raise ConversionError(f"CTranslate2 model directory {d} does not exist")
    parts = model_bin_parts(src_dirs)
    variables, spec = read_ct2_variables(parts)
    if spec != "WhisperSpec":
        raise ConversionError(f"{parts[0]} holds a {spec!r} model; only 'WhisperSpec' can be imported")
    sd, dims = ct2_to_state_dict(variables)
    multilingual = dims["vocab_size"] >= 51865
    cfg_path = _first_file(src_dirs, "config.json")
    ct2_config = json.loads(cfg_path.read_text()) if cfg_path else {}
    tok_path = _first_file(src_dirs, "tokenizer.json")
    if tok_path is None:
        raise ConversionError(
            f"no tokenizer.json in {', '.join(map(str, src_dirs))}; faster-whisper checkpoints ship one"
        )
    tok = build_tokenizer(tok_path, dims["vocab_size"])
    gen = build_generation_config(tok, ct2_config, dims, multilingual)

    config = WhisperConfig(
        **dims,
        pad_token_id=gen.pad_token_id,
        bos_token_id=gen.bos_token_id,
        eos_token_id=gen.eos_token_id,
        decoder_start_token_id=gen.decoder_start_token_id,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in missing if k != "proj_out.weight"]
    if missing or unexpected:
        raise ConversionError(f"state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.generation_config = gen
    fe = WhisperFeatureExtractor(feature_size=dims["num_mel_bins"])
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        fe.save_pretrained(tmp)
        source = {"source": [str(d) for d in src_dirs], "parts": [p.name for p in parts]}
        (tmp / "ct2_source.json").write_text(json.dumps(source, indent=2))
    return out_dir
