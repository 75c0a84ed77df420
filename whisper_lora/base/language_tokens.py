"""Language tokens Whisper lacks: ``<|xx|>`` added to a loaded base, one embedding row each.

An adapter trained with ``language_token: new`` carries one trained embedding row for its token (peft's trainable
tokens, ``trainable_tokens_delta``), never the embedding matrix. Whatever loads it gives the base that token here:

- the tokenizer gets ``<|xx|>`` as a special token, the embedding (and the output projection tied to it) one row,
  and the generation config's language table the token, so ``generate(language="<|xx|>")`` forces it;
- the new ids are suppressed in generated text, so a row decoded without the token (the base, other adapters) sees
  exactly the logits it saw before;
- ids are assigned by the process, in the order tokens are first added, after the base's own vocabulary: two
  adapters that each add a token never collide, whatever ids they were trained with. The adapter stores its row by
  language code (``whisper_lora.json`` ``language_token``), and the id it was trained with only in peft's config.
"""

from __future__ import annotations

import torch

from whisper_lora.errors import ConfigError
from whisper_lora.languages import WHISPER_LANGUAGES, token_text

ROW_KEY = "embed_tokens.token_adapter.trainable_tokens_delta"  # the end of peft's key of the trained row(s)


def token_id(tokenizer, code: str) -> int | None:
    """The id of ``<|code|>`` in ``tokenizer``; None when it has no such token."""
    text = token_text(code)
    i = tokenizer.convert_tokens_to_ids(text)
    return (
        i if isinstance(i, int) and i != tokenizer.unk_token_id and tokenizer.convert_ids_to_tokens(i) == text else None
    )


def add_token_text(tokenizer, code: str) -> int:
    """Add ``<|code|>`` to ``tokenizer`` alone, as a special token (``add_language_token`` does the model's part too);
    returns its id."""
    from transformers import AddedToken

    if token_id(tokenizer, code) is None:
        tokenizer.add_tokens([AddedToken(token_text(code), special=True, normalized=False)], special_tokens=True)
    return token_id(tokenizer, code)


def _embedding(model):
    """The Whisper model under ``model`` (a PeftModel's, whatever its active adapter: it may just have been deleted)
    and its input embedding."""
    from peft import PeftModel

    whisper = model.base_model.model if isinstance(model, PeftModel) else model
    return whisper, whisper.get_input_embeddings()


def add_language_token(
    model, tokenizer, code: str, row: torch.Tensor | None = None, init_from: str | None = None
) -> int:
    """Give the loaded base ``model`` (and its ``tokenizer``) the token ``<|code|>``; returns its id.

    ``row``: its embedding (an adapter's trained row); else the row of ``<|init_from|>`` (the proxy) is copied.
    Adding a token the base already has only sets its row (an adapter replaced on disk brings a new one).
    """
    if code in WHISPER_LANGUAGES:
        raise ConfigError(f"<|{code}|> is one of Whisper's own language tokens: it is never added")
    whisper, emb = _embedding(model)
    new = token_id(tokenizer, code)
    if new is None:
        new = add_token_text(tokenizer, code)
        if new >= emb.num_embeddings:
            whisper.resize_token_embeddings(new + 1, mean_resizing=False)
            _, emb = _embedding(model)
        gen = whisper.generation_config
        gen.lang_to_id = {**(gen.lang_to_id or {}), token_text(code): new}
        gen.suppress_tokens = [new, *(gen.suppress_tokens or [])]  # in front: transformers reads [-2] as a token
    if row is None:
        if init_from is None:
            raise ConfigError(f"a new token <|{code}|> needs its row or a proxy token to start from")
        source = token_id(tokenizer, init_from)
        if source is None:
            raise ConfigError(f"the proxy <|{init_from}|> is not a token of this base")
        row = emb.weight[source]
    with torch.no_grad():
        emb.weight[new] = row.to(emb.weight.dtype)
    return new


def added_ids(generation_config) -> list[int]:
    """The ids of the language tokens added to a base (its language table's entries that are not Whisper's own):
    logits the base itself never had, left out of any probability over the vocabulary."""
    table = getattr(generation_config, "lang_to_id", None) or {}
    return [int(i) for text, i in table.items() if text[2:-2] not in WHISPER_LANGUAGES]


def split_token_rows(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """An adapter's weights without its trained token row(s), and the row(s) (the embedding's, not the tied copy)."""
    rows = [v for k, v in state.items() if k.endswith(ROW_KEY)]
    kept = {k: v for k, v in state.items() if "token_adapter" not in k}
    return kept, (rows[0] if rows else None)
