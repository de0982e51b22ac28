"""The tokenizer plumbing of data.py: training, saving, loading, special tokens, fitting the model."""

import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

import data
import engine

TEXTS = ["Title: Sanding Roll, Brand: PORTER-CABLE", "Title: Safety Glasses, Brand: 3M"] * 20


def test_train_save_load_round_trip(tmp_path):
    tok = data.train_tokenizer(TEXTS, vocab_size=300)
    assert tok.vocab_size <= 300
    text = "Title: Glasses, Brand: ÄÖ 3M ✓"  # unseen characters still encode: byte-level, nothing unknown
    assert tok.decode(tok.encode(text)) == text
    engine.save_tokenizer(str(tmp_path), tok)
    again = data.load_tokenizer(str(tmp_path))
    assert again.encode(text) == tok.encode(text)
    assert (again.eot_id, again.pad_id, again.sep_id) == (tok.eot_id, tok.pad_id, tok.sep_id)


def test_special_tokens_are_single_distinct_ids_that_no_text_encodes_to(tmp_path):
    tok = data.train_tokenizer(TEXTS, vocab_size=300)
    special = [tok.eot_id, tok.pad_id, tok.sep_id]
    assert [tok.tok.id_to_token(i) for i in special] == [data.EOT, data.PAD, data.SEP]
    # a text holding their strings (a product so named, a sentence quoting them) is text: they go in by id only
    text = "a" + data.SEP + "b" + data.EOT + " " + data.PAD
    engine.save_tokenizer(str(tmp_path), tok)
    for t in (tok, data.load_tokenizer(str(tmp_path))):
        ids = t.encode(text)
        assert not set(special) & set(ids) and t.encode_batch([text]) == [ids], ids
        assert t.decode(ids + special) == text  # the special ids are dropped when decoding


def test_gpt2_style_tokenizer_without_pad_falls_back_to_eot(tmp_path):
    # GPT-2's tokenizer.json knows only <|endoftext|>
    t = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "<|endoftext|>": 2}, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.add_special_tokens(["<|endoftext|>"])
    t.save(str(tmp_path / "tokenizer.json"))
    tok = data.load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert tok.eot_id == tok.pad_id == tok.sep_id == 2


def test_bad_tokenizer_files_are_clear_errors(tmp_path):
    with pytest.raises(data.UserError, match="tokenizer.json: no such file"):
        data.load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(data.UserError, match="tokenizer.json: not a valid tokenizer.json"):
        data.load_tokenizer(str(tmp_path))
    t = Tokenizer(models.BPE(vocab={"a": 0}, merges=[]))
    t.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(data.UserError, match="has no <\\|endoftext\\|> token"):
        data.load_tokenizer(str(tmp_path))
    json.loads((tmp_path / "tokenizer.json").read_text())  # the file itself was valid JSON


def test_vocabulary_must_fit_the_model():
    tok = data.train_tokenizer(TEXTS, vocab_size=300)
    engine.check_fits(tok, tok.vocab_size)
    with pytest.raises(data.UserError, match=f"has id {tok.vocab_size - 1}, beyond a model with vocab_size=64"):
        engine.check_fits(tok, 64)


def test_the_largest_id_must_fit_not_the_number_of_tokens():
    """A tokenizer.json may number its tokens with gaps: three tokens, one of them id 100000, need 100001 rows."""
    t = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, data.EOT: 100000}, merges=[]))
    t.add_special_tokens([data.EOT])
    tok = data.TextTokenizer(t)
    assert tok.vocab_size == 3
    with pytest.raises(data.UserError, match=r"token '<\|endoftext\|>' has id 100000, beyond .*vocab_size=300"):
        engine.check_fits(tok, 300)
    engine.check_fits(tok, 100001)


def test_a_word_over_1000_characters_is_learnt_from_its_first_1000():
    texts = ["a short line of words", "x" * 1000 + " and more"]
    cut = data.train_tokenizer(texts, vocab_size=300).fingerprint
    assert data.train_tokenizer([texts[0], "x" * 50000 + " and more"], vocab_size=300).fingerprint == cut
