"""--init with a Hugging Face GPT-2 folder, end to end for both tasks: a tiny random GPT-2 in the HF layout
(config.json, model.safetensors, and a GPT-2-style tokenizer.json whose only special token is
<|endoftext|>), written by the test."""

import json
import os
import re

import pytest
import torch

import data
import engine
import model as gpt
import train
from test_calrec import write_atomic
from test_maml_classifier import tiny_family
from test_model import write_safetensors

CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def write_gpt2_folder(folder, texts, n_positions=256):
    """A GPT-2 folder as the HF hub serves it: tokenizer with only <|endoftext|>, Conv1D weights (in, out),
    no "transformer." prefix, no lm_head (tied)."""
    os.makedirs(folder, exist_ok=True)
    tok = data.train_tokenizer(texts, vocab_size=400, special_tokens=(data.EOT,))
    engine.save_tokenizer(folder, tok)
    cfg = dict(n_layer=1, n_head=2, n_embd=32, n_positions=n_positions, vocab_size=tok.vocab_size)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"model_type": "gpt2", "bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id, **cfg}, f)
    torch.manual_seed(0)
    net = gpt.GPT(gpt.GPTConfig(block_size=n_positions, vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=32))
    sd = {}
    for k, v in net.state_dict().items():
        if k == "lm_head.weight":
            continue
        w = v.t() if k.endswith(CONV1D) else v
        sd[k.removeprefix("transformer.")] = w.contiguous().numpy()
    write_safetensors(os.path.join(folder, "model.safetensors"), sd)
    return tok


def edit_safetensors(folder, change):
    """A GPT-2 folder's model.safetensors rewritten after change(header, data) edits its JSON header (a dict) and
    its data (a bytearray) in place."""
    path = os.path.join(folder, "model.safetensors")
    with open(path, "rb") as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], "little")
    header, data = json.loads(blob[8:8 + n]), bytearray(blob[8 + n:])
    change(header, data)
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + data)


def nan_weights(header, data, name="wpe.weight"):
    """An edit_safetensors change: every value of one float32 tensor NaN."""
    begin, end = header[name]["data_offsets"]
    data[begin:end] = torch.full(((end - begin) // 4,), float("nan")).numpy().tobytes()


def test_calrec_runs_from_gpt2_weights_and_tokenizer(tmp_path):
    a = str(tmp_path / "Alpha")
    write_atomic(a, "Alpha")
    texts = [f"Title: Alpha gadget number {i}, Brand: Brand{i % 3}" for i in range(8)]
    g2 = str(tmp_path / "gpt2")
    tok = write_gpt2_folder(g2, texts * 5 + ["User purchase history: The next purchased item is as follows:"],
                            n_positions=200)  # not the task's own default of 256
    assert tok.pad_id == tok.sep_id == tok.eot_id  # GPT-2 has no padding token: it falls back to end-of-text
    out = tmp_path / "out"
    res = train.main(["--task", "calrec", "--data", a, "--stages", "2", "--set", "stage2_steps=2", "--set", "sasrec_steps=2",
                      "--eval-interval", "2",
                      "--beams", "2", "--init", g2, "--out-dir", str(out)])
    assert res["config"]["block_size"] == 200  # the context length comes from the GPT-2 config
    assert set(res["test"]) >= {"calrec_generative", "calrec_dense", "sasrec", "popular"}
    # the tokenizer of the run is GPT-2's, not a newly trained one
    saved = data.load_tokenizer(str(out / "tokenizer.json"))
    assert saved.vocab_size == tok.vocab_size and saved.pad_id == tok.eot_id


def test_maml_runs_from_gpt2_weights_and_tokenizer(tmp_path, monkeypatch):
    aux, targets = data.task_family()
    texts = [t for task in list(aux.values()) + list(targets.values())
             for t in task["train"]["text_a"] + (task["train"]["text_b"] or [])]
    g2 = str(tmp_path / "gpt2")
    tok = write_gpt2_folder(g2, texts, n_positions=64)
    tiny_family(monkeypatch, seeds=1)
    out = train.main(["--task", "maml", "--out-dir", str(tmp_path / "out"), "--method", "fomaml", "--init", g2])
    assert out["config"]["init"] == g2
    assert set(out["targets"]) == set(data.FAMILY_TARGETS)
    saved = data.load_tokenizer(str(tmp_path / "out" / "tokenizer.json"))
    assert saved.vocab_size == tok.vocab_size
    # the encoder saved after meta-training is GPT-2-shaped: 64 positions, GPT-2's vocabulary
    enc, _ = engine.gpt_from_checkpoint(str(tmp_path / "out" / "init_fomaml.pt"))
    assert enc.config.block_size == 64 and enc.config.vocab_size == tok.vocab_size
    assert set(out["targets"]["more-2-5"]["fomaml"]["8"]) >= {"mcc", "accuracy"}


def test_a_config_json_saved_with_a_bom_is_read(tmp_path):
    tok = write_gpt2_folder(tmp_path, ["Title: Kite, Brand: Duncan"] * 20)
    config = tmp_path / "config.json"
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())  # as a Windows editor saves it
    model, tokenizer = engine.load_init(str(tmp_path))
    assert (model.config.n_embd, model.config.vocab_size, tokenizer.eot_id) == (32, tok.vocab_size, tok.eot_id)


def test_a_tokenizer_that_does_not_fit_the_weights_is_a_clear_error(tmp_path, capsys):
    g2 = str(tmp_path / "gpt2")
    write_gpt2_folder(g2, ["a b c d e f g"] * 5)
    big = data.train_tokenizer([" ".join(f"word{i}" for i in range(300))] * 3, vocab_size=600,
                               special_tokens=(data.EOT,))
    engine.save_tokenizer(g2, big)
    a = str(tmp_path / "Alpha")
    write_atomic(a, "Alpha")
    with pytest.raises(SystemExit) as e:
        train.main(["--task", "calrec", "--data", a, "--init", g2, "--out-dir", str(tmp_path / "out")])
    assert e.value.code == 2
    assert re.search(r"tokenizer.json: token .* has id \d+, beyond a model with vocab_size=\d+",
                     capsys.readouterr().err)
    assert not (tmp_path / "out").exists()  # the input was checked before anything was written


@pytest.mark.parametrize("entry", [dict(data_offsets=[0]), dict(data_offsets=["0", "4"]), dict(data_offsets=[4, 0]),
                                   dict(shape=[-1, -1]), dict(shape=[0.5, 2]), dict(shape=True), dict(dtype=["F32"]),
                                   dict(dtype="F8"), dict(shape=[0, 10 ** 30], data_offsets=[0, 0]), dict(shape=[2])])
def test_a_malformed_safetensors_entry_is_one_message_naming_the_tensor(tmp_path, entry):
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], **entry}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    with pytest.raises(gpt.UserError, match=r"model.safetensors: tensor w\b"):
        gpt.read_safetensors(str(path))


@pytest.mark.parametrize("blob", [(2 ** 63).to_bytes(8, "little") + b"{}", (2).to_bytes(8, "little") + b"[]",
                                  (1).to_bytes(8, "little") + b"\xff", b"\x01\x00"])
def test_a_file_without_a_safetensors_header_is_not_a_safetensors_file(tmp_path, blob):
    path = tmp_path / "model.safetensors"
    path.write_bytes(blob)
    with pytest.raises(gpt.UserError, match="model.safetensors: not a safetensors file"):
        gpt.read_safetensors(str(path))
