"""
Everything that turns files and text into tensors, for both tasks.

Read in this order:
  1. the tokenizer: a byte-level BPE trained with the `tokenizers` package on the task's own text, or
     GPT-2's pretrained `tokenizer.json` when GPT-2 weights are swapped in;
  2. CALRec data: the built-in multi-domain shopping world, readers for the Amazon benchmark files and the
     raw Amazon 2018 downloads, the text templates, and batches;
  3. MAML data: the GLUE reader, the built-in task family, and batches.
"""

import json
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# -----------------------------------------------------------------------------
# 1. tokenizer

EOT = "<|endoftext|>"  # ends a document; GPT-2's only special token
PAD = "<|pad|>"        # fills right-padded batches (masked out of attention and loss)
SEP = "<|sep|>"        # separates the two sentences of a pair task
SPECIAL_TOKENS = (EOT, PAD, SEP)


class TextTokenizer:
    """A thin wrapper over a `tokenizers.Tokenizer` that knows the project's special tokens.

    GPT-2's own tokenizer has only <|endoftext|>; there the padding and separator fall back to it (padding
    is masked anyway, and a pair is then joined by the end-of-text token).
    """

    def __init__(self, tokenizer, path=None):
        self.tok = tokenizer
        self.path = path
        self.eot_id = tokenizer.token_to_id(EOT)
        if self.eot_id is None:
            raise ValueError(f"{path or 'tokenizer'}: has no {EOT} token; train one with train_tokenizer() "
                             "or use GPT-2's tokenizer.json")
        pad, sep = tokenizer.token_to_id(PAD), tokenizer.token_to_id(SEP)
        self.pad_id = self.eot_id if pad is None else pad
        self.sep_id = self.eot_id if sep is None else sep

    @property
    def vocab_size(self):
        return self.tok.get_vocab_size()

    def encode(self, text):
        return self.tok.encode(text).ids

    def encode_batch(self, texts):
        return [e.ids for e in self.tok.encode_batch(list(texts))]

    def decode(self, ids):
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def decode_batch(self, batch):
        return self.tok.decode_batch([list(ids) for ids in batch], skip_special_tokens=True)

    def save(self, path):
        self.tok.save(path)

    def check_fits(self, vocab_size, path=None):
        """The model's embedding table must have a row for every token id."""
        if self.vocab_size > vocab_size:
            raise ValueError(f"{path or self.path or 'tokenizer'}: vocabulary of {self.vocab_size} tokens does "
                             f"not fit a model with vocab_size={vocab_size}")


def train_tokenizer(texts, vocab_size=4096, special_tokens=SPECIAL_TOKENS):
    """Train a byte-level BPE (GPT-2's scheme: bytes, then merges) on an iterable of strings."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is a token: nothing is unknown
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return TextTokenizer(tok)


def load_tokenizer(path):
    """Load a `tokenizer.json` (ours, or GPT-2's); `path` may be the file or the folder holding it."""
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no tokenizer.json here")
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # the tokenizers package raises a bare Exception on a bad file
        raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from None
    return TextTokenizer(tok, path=path)


# -----------------------------------------------------------------------------
# 2. CALRec data

# -----------------------------------------------------------------------------
# 3. MAML data
