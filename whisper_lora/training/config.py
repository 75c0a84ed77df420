"""Typed training configuration, validated in one place; YAML recipe configs map onto it 1:1."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path

from whisper_lora.base.attention import ATTENTIONS
from whisper_lora.base.model import PRECISIONS, pick_device
from whisper_lora.base.resolve import DEFAULT_BASE
from whisper_lora.data.perturb import SNR_RANGE, SPEED_RANGE
from whisper_lora.data.readers import FORMATS, describe_source
from whisper_lora.errors import ConfigError, format_choices
from whisper_lora.inference.decode import MAX_NEW_TOKENS
from whisper_lora.languages import resolve_language
from whisper_lora.training.encoder_cache import CACHE_PRECISIONS, CACHE_STORAGES
from whisper_lora.training.lora import LoraSpec
from whisper_lora.training.schedule import LR_DECAYS

MIXED_PRECISIONS = ("no", "bf16", "auto")
LANGUAGE_TOKENS = ("proxy", "new")  # how a language Whisper lacks is decoded (training/language_token.py)
SCORE_PRECISIONS = ("auto", "train", *PRECISIONS)
DEFAULT_MAX_STEPS = 300  # the step budget when neither max_steps nor max_minutes is given
_INVALID = "invalid training config:\n  - "


# settings whose ``auto`` is resolved for the machine (``train.resolve_auto_settings``); a resume keeps the run's own
AUTO_SETTINGS = ("precision", "gradient_checkpointing", "batch_size", "trim_padding")


@dataclass
class TrainConfig:
    """Everything ``train_adapter`` needs; every field has a working default but ``language``/``data``."""

    language: str  # ISO code or alias of the language the adapter is for (sw, ary, cs, gn, ...)
    data: str | object  # corpus root (DVoice, Common Voice, audiofolder, save_to_disk), manifest, or a datasets object
    out: str | None = None  # adapter directory; default adapters/<language>
    # new: the embedding row of <|xx|> starts as the proxy's and is trained with the adapter (training/language_token.py)
    language_token: str = "proxy"  # a language Whisper lacks decodes with: proxy (a Whisper token), new (<|xx|>)
    proxy: str | None = None  # that Whisper language (None: the language table's, else Whisper's ID of the train clips)
    base: str = DEFAULT_BASE  # base model: short name, local path or hub id
    precision: str = "auto"  # base weights: auto (chosen for the device, see profile.py), int8, nf4, bf16, fp32
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    lora: LoraSpec = field(default_factory=LoraSpec)  # adapter shape and placement
    data_format: str = "auto"  # auto, dvoice, commonvoice, manifest, audiofolder, datasets
    split_fractions: tuple[float, float] = (0.1, 0.1)  # dev/test shares when a corpus has none
    max_bad_fraction: float = 0.1  # fail when more rows than this are unusable
    seed: int = 0  # data order, dropout and splits
    max_steps: int | None = None  # optimizer steps; None: 300, or no step cap when max_minutes is set
    max_minutes: float | None = None  # stop earlier when this wall-clock budget is spent
    batch_size: int | str = "auto"  # utterances per optimizer step (across all processes); auto: profile.py
    batch_by_duration: bool = True  # batches of similar-length clips (data/sampler.py): less padding when trimmed
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    lr_decay: str = "budget"  # linear decay to 0 at the end of: budget (max_steps or max_minutes, first), steps
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool | str = "auto"  # recompute activations (use_reentrant=False); auto: profile.py
    cache_encoder: bool = True  # run the encoder layers below the first adapter once per utterance
    cache_precision: str = "auto"  # encoder for that pass: auto (bf16 where fast, else fp32), bf16, fp32, base
    cache_storage: str = "disk"  # disk (16-bit, memory-mapped, reused across runs) or memory (exact)
    cache_dir: str | None = None  # disk cache root (None: $WHISPER_LORA_CACHE/encoder)
    lean_backward: bool = True  # backward through frozen int8/nf4 layers without keeping their inputs
    mixed_precision: str = "auto"  # bf16 autocast of the training forward: auto (where bf16 is fast), bf16, no
    # SDPA back-ends of the training step (base/attention.py): auto (on CUDA flash, memory-efficient, math: not cuDNN,
    # whose host cost per call stalled the GPU), torch (torch's own choice), or one of flash, efficient, cudnn, math
    attention: str = "auto"
    eval_every: int = 100  # steps between dev evaluations (0: only at the end); each costs time from max_minutes
    eval_samples: int = 32  # dev utterances decoded per evaluation
    max_new_tokens: int = MAX_NEW_TOKENS  # scoring decodes as transcribe does (decode.py): tokens a window at most
    # base dev and test scoring decode with: auto (on a CPU an int8 base loaded as eval and transcribe load it, the
    # adapter copied onto it; on a GPU the training model), train (the training model), or int8, fp32, ... (a copy)
    score_precision: str = "auto"
    timestamp_share: float = 0.0  # share of training utterances with timestamped labels spanning the clip
    trim_padding: float | str | None = "auto"  # encode the audio + this many seconds, not the 30 s window
    # (trim.py); None: 30 s windows; auto: 1 s where every encoder layer is adapted (profile.py)
    spec_augment: bool = False  # SpecAugment time masks on the log-mel input of training steps (transformers')
    speed_perturb: tuple[float, ...] = ()  # extra copy of each training clip per speed, e.g. (0.9, 1.1) (perturb.py)
    noise_snr_db: tuple[float, ...] = ()  # extra copy of each training clip per white-noise level (SNR in dB)
    checkpoint_every: int = 50  # steps between resumable checkpoints (0: never)
    final_eval: bool = True  # score base and adapter on the test split and store it in the metadata
    language_profile: bool = True  # store how the training speech sounds to the base, for auto routing
    num_threads: int | None = None  # torch CPU threads (None: torch's default)

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSpec.from_dict(self.lora)
        self.split_fractions = tuple(self.split_fractions)
        self.speed_perturb = tuple(self.speed_perturb or ())
        self.noise_snr_db = tuple(self.noise_snr_db or ())
        if self.trim_padding == "none":
            self.trim_padding = None
        problems = []
        try:
            lang = resolve_language(self.language)
        except ConfigError as e:
            problems.append(str(e))
            lang = None
        problems += self._token_problems(lang)
        if self.precision not in ("auto", *PRECISIONS):
            problems.append(f"precision={self.precision!r}; valid: {format_choices(('auto', *PRECISIONS))}")
        if self.gradient_checkpointing not in (True, False, "auto"):
            problems.append(f"gradient_checkpointing={self.gradient_checkpointing!r}; valid: true, false, auto")
        if self.cache_precision not in CACHE_PRECISIONS:
            problems.append(f"cache_precision={self.cache_precision!r}; valid: {format_choices(CACHE_PRECISIONS)}")
        if self.cache_storage not in CACHE_STORAGES:
            problems.append(f"cache_storage={self.cache_storage!r}; valid: {format_choices(CACHE_STORAGES)}")
        if self.score_precision not in SCORE_PRECISIONS:
            problems.append(f"score_precision={self.score_precision!r}; valid: {format_choices(SCORE_PRECISIONS)}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            problems.append(f"mixed_precision={self.mixed_precision!r}; valid: {format_choices(MIXED_PRECISIONS)}")
        if self.attention not in ATTENTIONS:
            problems.append(f"attention={self.attention!r}; valid: {format_choices(ATTENTIONS)}")
        if self.lr_decay not in LR_DECAYS:
            problems.append(f"lr_decay={self.lr_decay!r}; valid: {format_choices(LR_DECAYS)}")
        if self.data_format not in FORMATS:
            problems.append(f"data_format={self.data_format!r}; valid: {format_choices(FORMATS)}")
        if self.max_steps is None and self.max_minutes is None:
            self.max_steps = DEFAULT_MAX_STEPS
        if self.max_steps is not None and (not isinstance(self.max_steps, int) or self.max_steps < 1):
            problems.append(f"max_steps={self.max_steps!r} must be >= 1")
        if not isinstance(self.batch_by_duration, bool):
            problems.append(f"batch_by_duration={self.batch_by_duration!r}; valid: true, false")
        if self.batch_size != "auto" and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            problems.append(f"batch_size={self.batch_size!r} must be >= 1 or auto")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "eval_samples"):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)!r} must be >= 0")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate={self.learning_rate!r} must be > 0")
        if not 0 <= self.max_bad_fraction <= 1:
            problems.append(f"max_bad_fraction={self.max_bad_fraction!r} must be in [0, 1]")
        if len(self.split_fractions) != 2 or not (0 <= sum(self.split_fractions) < 1):
            problems.append(f"split_fractions={self.split_fractions!r}: two shares (dev, test) summing below 1")
        if not 0 <= self.timestamp_share <= 1:
            problems.append(f"timestamp_share={self.timestamp_share!r} must be in [0, 1]")
        if self.trim_padding not in (None, "auto") and not (
            isinstance(self.trim_padding, (int, float)) and 0 <= self.trim_padding <= 30
        ):
            problems.append(f"trim_padding={self.trim_padding!r}; valid: auto, null (30 s windows), seconds in [0, 30]")
        lo, hi = SPEED_RANGE
        for s in self.speed_perturb:
            if not isinstance(s, (int, float)) or not lo <= s <= hi or s == 1:
                problems.append(f"speed_perturb value {s!r} must be a speed in [{lo}, {hi}] other than 1")
        if len(set(self.speed_perturb)) != len(self.speed_perturb):
            problems.append(f"speed_perturb={list(self.speed_perturb)!r} repeats a speed")
        lo, hi = SNR_RANGE
        for n in self.noise_snr_db:
            if not isinstance(n, (int, float)) or not lo <= n <= hi:
                problems.append(f"noise_snr_db value {n!r} must be a signal-to-noise ratio in [{lo:g}, {hi:g}] dB")
        if self.max_minutes is not None and self.max_minutes <= 0:
            problems.append(f"max_minutes={self.max_minutes!r} must be > 0")
        try:
            pick_device(self.device)
        except ConfigError as e:
            problems.append(str(e))
        # a base of one encoder layer: what is frozen there is frozen at every depth (check_base_depth does the rest)
        problems += self._cache_conflicts(self.lora.frozen_encoder_layers(1))
        if problems:
            raise ConfigError(_INVALID + "\n  - ".join(problems))

    def _token_problems(self, lang) -> list[str]:
        """What is wrong with ``language_token`` and ``proxy`` for the language ``lang`` (None: unknown)."""
        problems = []
        if self.language_token not in LANGUAGE_TOKENS:
            problems.append(f"language_token={self.language_token!r}; valid: {format_choices(LANGUAGE_TOKENS)}")
        if lang is not None and lang.has_token and (self.language_token == "new" or self.proxy):
            what = "language_token: new" if self.language_token == "new" else f"proxy={self.proxy!r}"
            problems.append(f"{what}: {lang.name} ({lang.code}) has Whisper's own token <|{lang.code}|>")
        if self.proxy is not None:
            try:
                proxy = resolve_language(self.proxy)
            except ConfigError as e:
                problems.append(f"proxy: {e}")
            else:
                if not proxy.has_token:
                    problems.append(f"proxy={self.proxy!r}: a proxy must be a language Whisper has a token for")
        return problems

    def _cache_conflicts(self, frozen: int) -> list[str]:
        """What the encoder cache cannot serve, where ``frozen`` encoder layers (0: none) are below the first
        adapter: it holds one state per utterance, computed from the unmasked 30 s window."""
        if not (self.cache_encoder and frozen > 0):
            return []
        problems = []
        if self.trim_padding not in (None, "auto"):  # auto chooses 30 s windows under a cache (profile.py)
            problems.append(
                f"trim_padding={self.trim_padding} encodes each batch at its own length, which the encoder cache "
                "(of the frozen encoder layers below the first adapter) cannot serve; set cache_encoder: false or trim_padding: null"
            )
        if self.spec_augment:
            problems.append(
                "spec_augment masks the log-mel input, which a cached encoder prefix never sees; "
                "set cache_encoder: false or spec_augment: false"
            )
        return problems

    def check_base_depth(self, encoder_layers: int) -> None:
        """Raise ``ConfigError`` for what validation cannot tell without the base: ``lora.encoder_top`` leaves
        frozen (cached) encoder layers only on a base with more than ``encoder_top`` of them."""
        problems = self._cache_conflicts(self.lora.frozen_encoder_layers(encoder_layers))
        if problems:
            raise ConfigError(_INVALID + "\n  - ".join(problems))

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("adapters") / resolve_language(self.language).code

    def to_dict(self) -> dict:
        d = asdict(replace(self, data=describe_source(self.data)))  # a datasets object is named, not copied
        d["lora"] = self.lora.to_dict()
        return d

    @classmethod
    def defaults(cls) -> dict:
        """Each field's default as ``to_dict`` writes it (``language`` and ``data`` have none): what a run recorded
        before a field existed behaved as."""
        out = {}
        for f in fields(cls):
            if f.default is not MISSING:
                out[f.name] = f.default
            elif f.default_factory is not MISSING:
                value = f.default_factory()
                out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
        return out

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training config keys {unknown}; valid: {format_choices(known)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> TrainConfig:
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        d = yaml.safe_load(path.read_text()) or {}
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(d)
