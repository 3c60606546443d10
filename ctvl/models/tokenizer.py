"""Tokenizers that never touch the network.

* :func:`make_tokenizer` trains a small byte-level BPE (HF ``tokenizers``) on report texts and wraps it
  as a ``PreTrainedTokenizerFast`` with ``<s>``, ``</s>``, ``<unk>``, ``<pad>`` and ``<image>``: for
  tests, the demo and the random-init tiny decoder. Save it with ``save_pretrained(dir)`` and read it
  back with :func:`load_tokenizer`.
* :func:`load_tokenizer` reads a real (e.g. Llama) tokenizer from a local directory without remote
  code (RadLLaMA's hub tokenizer asks for ``trust_remote_code``; its ``tokenizer.json`` does not need
  it) and adds ``<image>`` and a pad token when missing. The model builder resizes the decoder's
  embeddings to ``len(tokenizer)`` afterwards (:func:`ctvl.models.decoder.resize_embeddings`).

Example:
    >>> tok = make_tokenizer(["No pleural effusion.", "A 3 cm nodule in the right upper lobe."] * 4)
    >>> tok.convert_ids_to_tokens(tok.convert_tokens_to_ids(["<image>", "<pad>"]))
    ['<image>', '<pad>']
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Optional

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
"""Special tokens of the tokenizers made by :func:`make_tokenizer` (ids 0-3, ``<image>`` is 4)."""


def make_tokenizer(
    texts: Iterable[str], vocab_size: int = 1000, image_token: str = "<image>", min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (offline, deterministic for a given corpus).

    Args:
        texts: training corpus, e.g. report texts.
        vocab_size: target size including the 256 byte symbols and 5 special tokens; a small corpus
            may yield fewer merges (``len(tokenizer)`` is the truth).
        image_token: the visual placeholder, added as a special token.
        min_frequency: minimum pair count for a merge.

    Returns:
        PreTrainedTokenizerFast: adds ``<s>`` in front of every encoded text (Llama convention);
        ``</s>`` is appended by the prompt builder, not by the tokenizer.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = [*SPECIAL_TOKENS.values(), image_token]
    if vocab_size < 256 + len(specials):
        raise ValueError(
            f"vocab_size must be >= {256 + len(specials)} for a byte-level BPE, got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    hf.add_tokens([image_token], special_tokens=True)  # already in the vocab: registers it as special
    return hf


def _from_local_dir(path: Path, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    kwargs = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    try:
        return AutoTokenizer.from_pretrained(str(path), **kwargs)
    except (ValueError, OSError) as err:
        # A tokenizer_config.json naming custom code (RadLLaMA) fails without trust_remote_code; its
        # tokenizer.json is a plain fast tokenizer and loads without any code.
        if trust_remote_code or not (path / "tokenizer.json").is_file():
            raise
        logger.warning("%s: %s; loading tokenizer.json as a plain fast tokenizer", path, err)
        return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


def add_missing_tokens(tokenizer: PreTrainedTokenizerBase, image_token: Optional[str] = "<image>") -> int:
    """Add ``image_token`` (special; None: none, for text-only models) and a ``<pad>`` pad token when missing;
    returns how many were added."""
    added = 0
    if image_token is not None and image_token not in tokenizer.get_vocab():
        added += tokenizer.add_tokens([image_token], special_tokens=True)
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": SPECIAL_TOKENS["pad_token"]})
    return added


def load_tokenizer(
    path: str | Path, image_token: Optional[str] = "<image>", trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory (no network) and make sure ``<image>`` and pad exist.

    Args:
        path: directory with ``tokenizer.json`` and/or ``tokenizer.model`` + ``tokenizer_config.json``.
        image_token: placeholder token to add when absent; None for a text-only use (no new row in the
            embeddings, so a LoRA adapter need not save them).
        trust_remote_code: allow custom tokenizer code from ``path`` (off by default).

    Returns:
        PreTrainedTokenizerBase: may be longer than the decoder's vocabulary: resize the embeddings.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"tokenizer path {str(path)!r} is not a local directory (ctvl never downloads)")
    tokenizer = _from_local_dir(path, trust_remote_code)
    added = add_missing_tokens(tokenizer, image_token)
    if added:
        logger.info("%s: added %d token(s) (%s, pad); now %d", path, added, image_token, len(tokenizer))
    return tokenizer
