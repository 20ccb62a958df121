"""A character-level tokenizer for the demo task.

Every character is one token, so the vocabulary is tiny (which keeps the
model small and random-init sampling close to the task's chance level).
Two implementations share one vocabulary:

* `CharTokenizer.encode/decode` is pure Python, so the torch training path
  needs no extra package;
* `CharTokenizer.to_hf_tokenizer()` builds the same mapping with the HF
  `tokenizers` library so it can be saved as `tokenizer.json` next to the
  weights, which is what vLLM (through `transformers.AutoTokenizer`) loads.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)

# Digits and arithmetic symbols for "a+b=" prompts, plus the few letters the
# alternative "What is a+b?" template needs. Keep this short: every extra
# token lowers the chance that an untrained model emits a digit at all.
CHARACTERS = "0123456789+-=?. Whatis"


class CharTokenizer:
    """Maps each character of `CHARACTERS` to one id; ids 0-3 are special."""

    def __init__(self, characters: str = CHARACTERS):
        if len(set(characters)) != len(characters):
            raise ValueError("duplicate characters in vocabulary")
        self.id_to_token: list[str] = list(SPECIAL_TOKENS) + list(characters)
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(self.id_to_token)}
        self.pad_id = self.token_to_id[PAD_TOKEN]
        self.bos_id = self.token_to_id[BOS_TOKEN]
        self.eos_id = self.token_to_id[EOS_TOKEN]
        self.unk_id = self.token_to_id[UNK_TOKEN]

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = [self.token_to_id.get(ch, self.unk_id) for ch in text]
        return [self.bos_id] + ids if add_bos else ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Concatenates characters; special tokens are dropped unless asked for."""
        pieces = []
        for i in ids:
            token = self.id_to_token[int(i)]
            if skip_special and token in SPECIAL_TOKENS:
                continue
            pieces.append(token)
        return "".join(pieces)

    # ----- HF `tokenizers` form, needed only to save a vLLM-loadable folder -----

    def to_hf_tokenizer(self):
        """The same vocabulary as an HF `tokenizers.Tokenizer`.

        WordLevel over single characters: the pre-tokenizer isolates every
        character (spaces included, so they survive as tokens), the
        post-processor prepends BOS like `encode(add_bos=True)`, and the Fuse
        decoder concatenates tokens instead of joining them with spaces.
        """
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

        tok = Tokenizer(models.WordLevel(vocab=dict(self.token_to_id), unk_token=UNK_TOKEN))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
        tok.decoder = decoders.Fuse()
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS_TOKEN} $A",
            pair=f"{BOS_TOKEN} $A $B",
            special_tokens=[(BOS_TOKEN, self.bos_id)],
        )
        # Registering the specials keeps them whole when they appear in text
        # and lets `skip_special_tokens` drop them on decode.
        tok.add_special_tokens(list(SPECIAL_TOKENS))
        return tok

    def tokenizer_config(self) -> dict:
        """`tokenizer_config.json` for `transformers.PreTrainedTokenizerFast`."""
        return {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS_TOKEN,
            "eos_token": EOS_TOKEN,
            "pad_token": PAD_TOKEN,
            "unk_token": UNK_TOKEN,
            "model_max_length": 64,
            "clean_up_tokenization_spaces": False,
        }

    def save(self, folder: str) -> None:
        """Writes `tokenizer.json` and `tokenizer_config.json` (needs `tokenizers`)."""
        os.makedirs(folder, exist_ok=True)
        self.to_hf_tokenizer().save(os.path.join(folder, "tokenizer.json"))
        with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
            json.dump(self.tokenizer_config(), f, indent=2)
