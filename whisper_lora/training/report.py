"""What a training run reports about its adapter: dev scores while it trains, then the test scores, the metadata
(``whisper_lora.json``) and the language profile saved with the adapter."""

from __future__ import annotations

import logging

import torch

from whisper_lora.data.readers import describe_source
from whisper_lora.errors import ConfigError
from whisper_lora.inference.decode import Decoding
from whisper_lora.inference.score_cache import ScoreCache, ScoreKey
from whisper_lora.inference.scoring import compare_base_and_adapter, evaluate_examples, reuses_encoder, scored_with
from whisper_lora.languages import resolve_language
from whisper_lora.registry.adapter_io import AdapterMetadata, data_fingerprint
from whisper_lora.training.config import TrainConfig
from whisper_lora.training.run import Run, TrainState, load_trainable, trainable_state

log = logging.getLogger("whisper_lora")


def scoring_decoding(cfg: TrainConfig) -> Decoding:
    """How training scores dev and test: as ``transcribe`` decodes (decode.py), with the config's token cap."""
    return Decoding(max_new_tokens=cfg.max_new_tokens)


def score_precision(cfg: TrainConfig, device: torch.device) -> str | None:
    """The base precision scoring decodes with (``TrainConfig.score_precision``); None: the training model itself."""
    if cfg.score_precision == "train" or (cfg.score_precision == "auto" and device.type != "cpu"):
        return None
    return "int8" if cfg.score_precision == "auto" else cfg.score_precision


class Scorer:
    """The model dev and test scoring decode with: the training model itself, or a second base loaded as ``eval`` and
    ``transcribe`` load one (at the scoring precision, int8 outlier threshold 0, where training's int8 base keeps
    bitsandbytes' 6.0: slower on a CPU, and batch-dependent) carrying the adapter's current weights."""

    def __init__(self, run: Run, cfg: TrainConfig, device: torch.device):
        from whisper_lora.base.language_tokens import add_language_token
        from whisper_lora.base.model import load_base_model
        from whisper_lora.training.lora import apply_lora

        self.run = run
        precision = score_precision(cfg, device)
        self.model = None
        self.info = run.base_info
        if precision is not None:
            base = load_base_model(run.base_info.path or cfg.base, precision, device, int8_threshold=0.0)
            ids = []
            if run.token.mode == "new":  # the same token at the same id: the trained row is copied like the rest
                ids = [
                    add_language_token(base.model, base.processor.tokenizer, run.token.token, init_from=run.token.proxy)
                ]
            self.model, self.info = apply_lora(base.model, cfg.lora, token_ids=ids), base.info
            self.model.eval()
            log.info("scoring: the adapter on a %s base, as eval and transcribe load it", precision)

        # the dev clips' encoder outputs, kept between evaluations when the adapter leaves the encoder untouched
        scoring = self.model if self.model is not None else run.raw
        self.dev_states = {} if reuses_encoder(scoring, len(run.dev)) else None

    def current(self):
        """The model to score with, holding the adapter's weights as they are now."""
        if self.model is None:
            return self.run.raw
        load_trainable(self.model, trainable_state(self.run.raw))
        return self.model


def score_dev(run: Run, cfg: TrainConfig, language: str, state: TrainState, best: dict, scorer: Scorer) -> None:
    """Score the dev subset into ``state``; keep the weights in ``best`` when dev CER is the best so far."""
    model = scorer.current()
    decoding = scoring_decoding(cfg)
    scores, _ = evaluate_examples(
        model,
        run.processor,
        run.dev,
        language,
        decoding=decoding,
        encoder_states=scorer.dev_states,
        token=run.token.token,
    )
    state.history.append({"step": state.step, "dev": scores.to_dict()})
    if scores.cer < state.best_cer:
        state.best_cer, state.best_step = scores.cer, state.step
        best.update(trainable_state(run.raw))
    log.info("step %d: dev WER %.3f CER %.3f", state.step, scores.wer, scores.cer)


def score_test(run: Run, cfg: TrainConfig, language: str, progress: bool, scorer: Scorer) -> dict:
    """The ``metrics`` record: base and adapter on the test split (the adapter also trimmed, where it trained so);
    the base's scores cached (score_cache.py)."""
    decoding = scoring_decoding(cfg)
    cache = ScoreCache()
    model = scorer.current()
    base_token = run.token.proxy if run.token.mode == "new" else run.token.token  # the untouched base's token
    key = ScoreKey.for_run(scorer.info, model, run.test, "test", language, decoding, base_token)
    # an encoder trained trimmed is scored trimmed too: the better (or equal) decides how transcribe encodes
    trim = cfg.trim_padding if isinstance(cfg.trim_padding, (int, float)) else None
    kw = dict(decoding=decoding, progress=progress, token=run.token.token, base_token=base_token, trim=trim)
    result = compare_base_and_adapter(model, run.processor, run.test, language, "test", cache.get(key), **kw)
    cache.put(key, result.base)
    return {**result.to_dict(), **scored_with(scorer.info.precision, decoding)}


def adapter_metadata(run: Run, cfg: TrainConfig, processes: int, state: TrainState, minutes: float) -> AdapterMetadata:
    """What ``whisper_lora.json`` records about this run (``processes``: how many trained it)."""
    lang = resolve_language(cfg.language)
    originals = [e for e in run.train if e.perturbation is None]
    return AdapterMetadata(
        language=lang.code,
        whisper_language=run.token.token,
        language_token=run.token.record(),
        base={k: v for k, v in run.base_info.__dict__.items() if k != "path"},
        lora=cfg.lora.to_dict(),
        data={
            "fingerprint": data_fingerprint(originals),
            "train_utterances": len(originals),
            "train_seconds": round(sum(e.duration for e in originals), 1),
            "augmented_copies": len(run.train) - len(originals),
            "source": describe_source(cfg.data),
        },
        training={
            **{k: v for k, v in cfg.to_dict().items() if k not in ("lora", "data", "out")},
            "steps": state.step,
            "best_step": state.best_step,
            "processes": processes,
            "minutes": round(minutes, 2),
            "cached_encoder": run.enc_cache.precision if run.enc_cache else None,
            "cached_encoder_layers": run.enc_cache.frozen_layers if run.enc_cache else 0,
            "cache_encoded": run.enc_cache.encoded if run.enc_cache else 0,  # 0: every state came from the store
            "autocast_bf16": run.bf16,
            "loss_history": [h["loss"] for h in state.history if "loss" in h],
        },
    )


def language_profile(run: Run, progress: bool):
    """What the training speech looks like to the untouched base (``inference/routing.py``); None for an
    English-only base, which has no language ID to route with.

    Training that cached the encoder's output (decoder-only adapters) already holds what the profile needs of the
    encoder: the profile then takes those states (computing the few not cached yet) and runs one decoder step per
    utterance; otherwise the base encodes the utterances again."""
    from tqdm.auto import tqdm

    from whisper_lora.inference.language_id import (
        BATCH,
        LanguageEvidence,
        evidence_of_states,
        language_tokens,
        profile_utterances,
        spread,
    )
    from whisper_lora.registry.language_profile import MAX_UTTERANCES, LanguageProfile

    try:
        language_tokens(run.raw, run.processor)
    except ConfigError:
        return None
    run.raw.eval()
    rows = [i for i, e in enumerate(run.train) if e.perturbation is None]
    cache = run.enc_cache
    with torch.no_grad(), run.raw.disable_adapter():
        if cache is None or not cache.holds_output:
            paths = [run.train[i].audio for i in rows]
            return profile_utterances(run.raw, run.processor, paths, run.base_info, progress)
        rows = spread(rows, MAX_UTTERANCES)
        parts = []
        for k in tqdm(range(0, len(rows), BATCH), desc="language profile", unit="batch", disable=not progress):
            batch = rows[k : k + BATCH]
            states = cache.get(batch).to(run.hidden_dtype)
            parts.append(evidence_of_states(run.raw, run.processor, states, [run.train[i].n_samples for i in batch]))
    return LanguageProfile.from_evidence(
        LanguageEvidence.concat(parts), run.base_info.fingerprint, run.base_info.precision
    )
