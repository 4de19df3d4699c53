"""The instruction tokenizer: a small byte-level BPE trained here with `tokenizers`.

Byte-level so that any instruction encodes (no unknown tokens); trained on the prompt
template and the task instructions so common words are single tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from wmpo_core.policy.configuration_vla import PROMPT_TEMPLATE

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, BOS, EOS)

# Seed corpus: instructions of the simulated tasks and common manipulation words.
BASE_CORPUS = (
    "lift the cube", "lift the red cube", "pick up the cube", "stack the red cube on the green cube",
    "put the square nut on the square peg", "fit the square nut onto the square peg",
    "make coffee", "put the coffee pod in the machine and close the lid",
    "assemble the three pieces", "stack three cubes", "open the drawer", "close the drawer",
    "push the block to the goal", "place the object in the bin", "grasp the handle", "move left right up down",
)


def build_text_tokenizer(extra_corpus: Iterable[str] = (), vocab_size: int = 512) -> Tokenizer:
    """Train a byte-level BPE of exactly ``vocab_size`` ids (padded with unused merges if the corpus is small)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    corpus = [PROMPT_TEMPLATE.format(instruction=s.lower()) for s in (*BASE_CORPUS, *extra_corpus)]
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    # A small corpus yields fewer merges than asked: fill with placeholder tokens so the id space is fixed.
    n = tok.get_vocab_size()
    if n < vocab_size:
        tok.add_special_tokens([f"<unused_{i}>" for i in range(vocab_size - n)])
    if tok.get_vocab_size() != vocab_size:
        raise ValueError(f"text tokenizer: vocabulary {tok.get_vocab_size()} != requested {vocab_size}")
    return tok


def load_text_tokenizer(path: str | Path, special_tokens: Iterable[str] = (PAD, BOS)) -> Tokenizer:
    """Load ``tokenizer.json`` and check it has the special tokens the policy relies on."""
    p = Path(path)
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as exc:  # the Rust loader raises a generic Exception on malformed JSON
        raise ValueError(f"{p}: cannot load tokenizer: {exc}") from exc
    for s in special_tokens:
        if tok.token_to_id(s) is None:
            raise ValueError(f"{p}: tokenizer has no special token {s!r}")
    return tok
