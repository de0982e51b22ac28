"""Two processes (gloo, CPU) training CALRec with DistributedDataParallel take the same steps as one process
with the same global batch: the same parameters after training, in float64, to 1e-9."""

import dataclasses

import pytest
import torch
import torch.distributed as dist

import calrec
import data
import engine
import model as gpt
from multiprocess import join, leave, one_then_two

ITEMS = [{"Title": "Red kettle", "Brand": "Acme"}, {"Title": "Blue kettle lid", "Brand": "Acme"},
         {"Title": "Green tea, loose", "Brand": "Leafy"}, {"Title": "Tea cup", "Brand": "Leafy"},
         {"Title": "Tea pot", "Brand": "Leafy"}, {"Title": "Kettle descaler", "Brand": "Acme"}]
# every position is predicted, so the two halves of the batch hold different numbers of predictions (5 and 6);
# repeated targets in one batch exercise the duplicate mask across processes; two extra negative items; L_UT's
# query mixes in the history items of each process's own rows
ROWS = [[0, 1], [2, 3], [1, 2, 0], [3, 4], [0, 1, 5], [4, 3], [5, 0], [2, 3, 4]]
EXTRA = [1, 4]


def train_tiny(rank, world, port, out_path):
    """Build the same model and data on every process, take 3 steps on the same global batch, save this
    process's parameters."""
    join(rank, world, port)
    torch.set_num_threads(1)
    texts = [data.item_text(it, ("Title", "Brand")) for it in ITEMS]
    tok = data.train_tokenizer(texts * 5 + [data.history_prompt(texts)], vocab_size=400)
    torch.manual_seed(0)
    net = gpt.GPT(gpt.GPTConfig(block_size=128, vocab_size=tok.vocab_size, n_layer=1, n_head=2,
                                n_embd=32)).double()
    builder = data.PromptBuilder(tok, texts, block_size=128, max_history=3, max_item_tokens=64)
    cfg = dataclasses.replace(calrec.BUILT_IN, batch_size=8, lr=1e-2, alpha=0.3, beta=0.3, tau=0.1,
                              every_position=True, extra_negatives=len(EXTRA), recent_in_loss=2)
    towers = calrec.Towers(net)
    if world > 1:
        towers = torch.nn.parallel.DistributedDataParallel(towers)
    optimizer = net.configure_optimizers(cfg.lr, cfg.weight_decay)
    for _ in range(3):
        calrec.train_step(towers, optimizer, engine.grad_scaler("cpu", "float32"), builder, ROWS, EXTRA, cfg, "cpu",
                          "float32")
    torch.save({k: v.clone() for k, v in net.state_dict().items()}, out_path.format(rank=rank))
    leave(world)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend in this torch")
def test_two_processes_equal_one_process(tmp_path):
    a, ranks = one_then_two(train_tiny, str(tmp_path))
    torch.manual_seed(0)
    start = gpt.GPT(gpt.GPTConfig(block_size=128, vocab_size=a["transformer.wte.weight"].shape[0], n_layer=1,
                                  n_head=2, n_embd=32))
    moved = max(float((a[k] - start.state_dict()[k].double()).abs().max()) for k in a if "wte" in k)
    assert moved > 1e-3  # training did change the weights: the comparison below is not vacuous
    for b in ranks:
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-9, rtol=1e-9, msg=f"{k} differs")
