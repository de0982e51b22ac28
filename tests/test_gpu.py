"""Checks that need a CUDA GPU, skipped without one: the GPU gives the CPU's numbers (float64), mixed
precision stays close to float32, torch.compile equals eager, and both tasks train end to end on the GPU.

    python -m pytest -q tests/test_gpu.py                      # on a machine with a CUDA GPU
    TEST_DEVICE=cpu python -m pytest -q tests/test_gpu.py      # the same code paths on the CPU (a dry run)
"""

import copy
import dataclasses
import math
import os

import pytest
import torch

import calrec
import data
import engine
import maml
import model as gpt
import train
from test_calrec_ddp import EXTRA, ITEMS, ROWS
from test_maml_classifier import float64_task_batches, tiny_classifier, tiny_family

DEVICE = os.environ.get("TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")


def on(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


def test_second_order_meta_gradient_on_the_gpu_equals_the_cpu():
    cpu_model = tiny_classifier(torch.float64)
    batches = float64_task_batches(3, 3)
    grads = []
    for model, device in ((cpu_model, "cpu"), (copy.deepcopy(cpu_model).to(DEVICE), DEVICE)):
        fast, loss_fn = maml.task_loss(model)
        with gpt.second_order_ops(model):
            maml.meta_loss_vmap(fast, loss_fn, [on(b, device) for b in batches[:2]], on(batches[2], device),
                                0.3, 2).backward()
        grads.append({n: p.grad.cpu() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-9, atol=1e-11, msg=n)


def test_maml_runs_end_to_end_on_the_gpu(tmp_path, monkeypatch):
    tiny_family(monkeypatch)
    out = train.main(["--task", "maml", "--method", "maml", "--device", DEVICE, "--out-dir", str(tmp_path)])
    assert out["config"]["device"].startswith(DEVICE)
    cells = [m for task in out["targets"].values() for init in task.values() for size in init.values()
             for k, m in size.items() if k != "n_seeds"]
    assert cells and all(math.isfinite(m) for m in cells)


CFG = dataclasses.replace(calrec.BUILT_IN, alpha=0.3, beta=0.3, tau=0.1, batch_size=8, lr=1e-2, extra_negatives=2)


def tiny_calrec(device, dtype=torch.float32):
    """A tiny LM, its prompt builder, and one training batch (the towers' inputs and the items of its keys)."""
    texts = [data.item_text(it, ("Title", "Brand")) for it in ITEMS]
    tok = data.train_tokenizer(texts * 5 + [data.history_prompt(texts)], vocab_size=400)
    torch.manual_seed(0)
    net = gpt.GPT(gpt.GPTConfig(block_size=128, vocab_size=tok.vocab_size, n_layer=2, n_head=2, n_embd=64))
    builder = data.PromptBuilder(tok, texts, 128, max_history=3, max_item_tokens=64)
    batch = builder.training_batch(ROWS, every_position=True)
    items = torch.cat([batch.pop("item"), torch.tensor(EXTRA)])
    del batch["attention_mask"], batch["position"]  # right-padded rows: the towers need no mask
    batch["item_idx"], batch["item_mask"] = builder.item_batch(items.tolist())
    return net.to(device, dtype), builder, ({k: v.to(device) for k, v in batch.items()}, items.to(device))


def loss_and_grads(towers, net, batch, dtype="float32"):
    inputs, items = batch
    net.zero_grad(set_to_none=True)
    with engine.autocast(DEVICE, dtype):
        nig_sum, n_tokens, v_u, v_tu, v_t = towers(**inputs)
        loss, _ = calrec.calrec_loss(nig_sum / n_tokens, v_u, v_tu, v_t, items, CFG.alpha, CFG.beta, CFG.tau)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten().cpu() for p in net.parameters()])


def test_calrec_loss_on_the_gpu_equals_the_cpu():
    results = []
    for device in ("cpu", DEVICE):
        net, _, batch = tiny_calrec(device, torch.float64)
        results.append(loss_and_grads(calrec.Towers(net), net, batch))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-9)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_stays_close_to_float32(dtype):
    net, _, batch = tiny_calrec(DEVICE)
    towers = calrec.Towers(net)
    loss32, grad32 = loss_and_grads(towers, net, batch)
    loss16, grad16 = loss_and_grads(towers, net, batch, dtype)
    assert loss16 == pytest.approx(loss32, rel=3e-2)
    cosine = torch.nn.functional.cosine_similarity(grad16, grad32, dim=0).item()
    assert cosine > 0.99, cosine


def test_compiled_loss_equals_eager():
    net, _, batch = tiny_calrec(DEVICE)
    eager = loss_and_grads(calrec.Towers(net), net, batch)
    compiled = loss_and_grads(torch.compile(calrec.Towers(net), dynamic=True), net, batch)
    assert compiled[0] == pytest.approx(eager[0], rel=1e-4)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("dtype, compile_model", [("bfloat16", True), ("float16", False)])
def test_calrec_trains_on_the_gpu(dtype, compile_model):
    net, builder, _ = tiny_calrec(DEVICE)
    before = copy.deepcopy(net.state_dict())
    towers = calrec.Towers(net)
    towers = torch.compile(towers, dynamic=True) if compile_model else towers
    optimizer, scaler = net.configure_optimizers(CFG.lr, CFG.weight_decay), engine.grad_scaler(DEVICE, dtype)
    for _ in range(12):  # float16's gradient scaler skips the first steps while it lowers its scale from 2**16
        calrec.train_step(towers, optimizer, scaler, builder, ROWS, EXTRA, CFG, DEVICE, dtype)
    after = net.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values())
    assert max(float((after[k] - before[k]).abs().max()) for k in after) > 1e-4  # the steps were taken
