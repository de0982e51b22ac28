"""MAML, FOMAML, Reptile and the multi-task baseline split over 2 processes (gloo, CPU) take the same
meta-updates as 1 process with the same meta-batch: the same parameters, in float64, to 1e-9."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.distributed as dist

import data
import maml
from model import GPT, GPTConfig
from multiprocess import join, leave, one_then_two

METHODS = ("maml", "fomaml", "reptile", "multitask")


def meta_train_tiny(rank, world, port, out_path):
    join(rank, world, port)
    torch.set_num_threads(1)
    aux, _ = data.task_family()
    names = ["has-0", "more-0-1", "count-3", "share-0"]  # binary, binary, regression, pair
    tok = data.train_tokenizer([t for n in names for t in aux[n]["train"]["text_a"]], vocab_size=300)
    cfg = dataclasses.replace(maml.FAMILY, n_layer=1, n_head=1, n_embd=16, vocab_size=320, max_len=32, inner_lr=0.1,
                              inner_steps=2, meta_batch=4, meta_steps=2, outer_lr=1e-2, shot=4, sampling="uniform")
    encs = [maml.encode_split(tok, aux[n], aux[n]["train"], i, cfg.max_len, 4.0) for i, n in enumerate(names)]
    out = {}
    for method in METHODS:
        torch.manual_seed(0)
        gpt = GPT(GPTConfig(block_size=32, vocab_size=320, n_layer=1, n_head=1, n_embd=16))
        model = maml.TaskClassifier(gpt, [2, 2, 1, 2], [False, False, True, False]).double()
        rng = np.random.default_rng(0)
        maml.meta_train(model, encs, method, cfg, rng, "cpu")
        out[method] = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(out, out_path.format(rank=rank))
    leave(world)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend in this torch")
def test_two_processes_equal_one_process(tmp_path):
    one, twos = one_then_two(meta_train_tiny, str(tmp_path))
    torch.manual_seed(0)
    start = GPT(GPTConfig(block_size=32, vocab_size=320, n_layer=1, n_head=1, n_embd=16)).state_dict()
    for method in METHODS:
        moved = float((one[method]["gpt.transformer.wte.weight"] - start["transformer.wte.weight"].double())
                      .abs().max())
        assert moved > 1e-4, f"{method} did not train: the comparison would be vacuous"
        for r, two in enumerate(twos):
            for k in one[method]:
                torch.testing.assert_close(two[method][k], one[method][k], atol=1e-9, rtol=1e-9,
                                           msg=f"{method}: {k} differs on process {r}")
