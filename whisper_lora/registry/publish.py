"""Publishing: push an adapter directory to the Hugging Face hub, and use one with ``transformers.pipeline``.

``push_adapter`` uploads exactly the files a user needs (the PEFT pair, ``whisper_lora.json`` and
the model card) with ``huggingface_hub.upload_folder``, after making the directory hub-ready
(public base id, regenerated card) and validating it, so a broken adapter is never published.
"""

from __future__ import annotations

import logging
from pathlib import Path

from whisper_lora.errors import AdapterError
from whisper_lora.registry.adapter_io import METADATA_FILE, PEFT_FILES, load_adapter, validate_adapter
from whisper_lora.registry.card import CARD_FILE, make_hub_ready
from whisper_lora.registry.language_profile import PROFILE_FILE

log = logging.getLogger("whisper_lora")
UPLOADED = (*PEFT_FILES, METADATA_FILE, CARD_FILE, PROFILE_FILE)  # the profile when there is one


def push_adapter(
    adapter_dir: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload one adapter directory to the hub model repo ``repo_id`` (created if missing); returns the commit URL.

    ``token`` defaults to huggingface_hub's own (``HF_TOKEN`` or ``huggingface-cli login``).
    """
    try:
        from huggingface_hub import HfApi
    except ImportError:  # pragma: no cover - the hub extra
        raise AdapterError("pushing needs huggingface_hub: pip install 'whisper-lora[hub]'") from None
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise AdapterError(f"invalid repo id {repo_id!r}: use <user or organisation>/<name>, e.g. me/whisper-base-sw")
    adapter_dir = Path(adapter_dir)
    meta = validate_adapter(adapter_dir)  # refuses a broken or pickled adapter before anything is uploaded
    make_hub_ready(adapter_dir)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        repo_type="model",
        folder_path=str(adapter_dir),
        allow_patterns=list(UPLOADED),
        revision=revision,
        commit_message=commit_message or f"whisper-lora adapter for {meta.language}",
    )
    url = getattr(info, "commit_url", None) or str(info)
    log.info("pushed %s to %s", adapter_dir, url)
    return url


def asr_pipeline(adapter_dir: str | Path, base: str | None = None, precision: str = "fp32", device: str = "auto"):
    """A ``transformers.pipeline("automatic-speech-recognition")`` with the adapter merged in and its
    language token forced (``ary`` decodes with ``ar``), ready to call on files or arrays."""
    from transformers import pipeline

    from whisper_lora.base.model import load_base_model

    meta = validate_adapter(adapter_dir)
    loaded = load_base_model(base or meta.base.get("name") or "whisper-base", precision, device)
    model = load_adapter(loaded.model, adapter_dir).merge_and_unload().eval()
    return pipeline(
        "automatic-speech-recognition",
        model=model,
        tokenizer=loaded.processor.tokenizer,
        feature_extractor=loaded.processor.feature_extractor,
        device=model.device,
        generate_kwargs={"language": meta.whisper_language, "task": "transcribe"},
    )
