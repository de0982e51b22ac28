"""The classifier on model.GPT under the functional core: masked heads, regression, vmap against a loop,
second-order MAML against finite differences, and a tiny meta-training run that must help adaptation."""

import argparse
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import data
import engine
import maml
from model import GPT, GPTConfig, second_order_ops
from test_glue_reader import LAYOUTS, held_out, write_task


def tiny_classifier(dtype=torch.float32, n_outputs=(3, 2, 1), seed=0):
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(block_size=16, vocab_size=32, n_layer=2, n_head=2, n_embd=16))
    model = maml.TaskClassifier(gpt, list(n_outputs), [n == 1 for n in n_outputs])
    return model.to(dtype)


def task_batches(n_tasks, n_batches, B=5, T=7, seed=0, task_ids=None, n_outputs=(3, 2, 1)):
    g = torch.Generator().manual_seed(seed)
    task = torch.tensor(task_ids if task_ids is not None else [i % 3 for i in range(n_tasks)])
    out = []
    for _ in range(n_batches):
        mask = torch.ones(n_tasks, B, T, dtype=torch.long)
        mask[:, :, T - 2:] = (torch.rand(n_tasks, B, 2, generator=g) > 0.5).long()
        mask[:, :, T - 1] *= mask[:, :, T - 2]  # right padding only
        y = torch.stack([torch.randint(0, n_outputs[t], (B,), generator=g).float() if n_outputs[t] > 1
                         else torch.rand(B, generator=g) for t in task.tolist()])
        out.append({"idx": torch.randint(0, 32, (n_tasks, B, T), generator=g), "mask": mask, "task": task,
                    "y": y.to(torch.get_default_dtype())})
    return out


def float64_task_batches(*args, **kwargs):
    """task_batches with float64 targets, for the checks that compare gradients to 1e-9."""
    torch.set_default_dtype(torch.float64)
    try:
        return task_batches(*args, **kwargs)
    finally:
        torch.set_default_dtype(torch.float32)


def test_masked_head_and_regression_losses():
    model = tiny_classifier()
    b = maml.task_slice(task_batches(3, 1)[0], 0)
    params = dict(model.named_parameters())
    for t, n_classes in ((0, 3), (1, 2)):
        batch = dict(b, task=torch.tensor(t), y=b["y"].clamp(max=n_classes - 1))
        out = model(batch["idx"], batch["mask"], batch["task"])
        assert (out[:, n_classes:] == maml.MASKED_LOGIT).all()
        # oracle: the head row by hand, on mean-pooled hidden states, softmax over the real classes only
        h = model.gpt.hidden_states(batch["idx"], batch["mask"])
        m = batch["mask"].unsqueeze(-1).float()
        pooled = (h * m).sum(1) / m.sum(1)
        logits = pooled @ model.head_weight[t, :n_classes].T + model.head_bias[t, :n_classes]
        expected = F.cross_entropy(logits, batch["y"].long())
        torch.testing.assert_close(maml.classifier_loss(model, params, batch), expected)
    batch = dict(b, task=torch.tensor(2))  # regression: squared error of output 0
    out = model(batch["idx"], batch["mask"], batch["task"])
    torch.testing.assert_close(maml.classifier_loss(model, params, batch), ((out[:, 0] - batch["y"]) ** 2).mean())


@pytest.mark.parametrize("first_order", [True, False])
def test_vmap_equals_loop_on_the_classifier(first_order):
    # tasks with 3 classes, 2 classes and a regression in one vmapped meta-batch, float64, first and second
    # order (second order under vmap is right inside model.second_order_ops)
    model = tiny_classifier(torch.float64)
    fast, loss_fn = maml.task_loss(model)
    batches = float64_task_batches(3, 3)
    grads = []
    for fn in (maml.meta_loss_vmap, maml.meta_loss_loop):
        model.zero_grad()
        with second_order_ops(model):
            fn(fast, loss_fn, batches[:2], batches[2], 0.3, 2, first_order).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-9, atol=1e-11)


def second_order_setup():
    model = tiny_classifier(torch.float64, n_outputs=(2,))
    fast, loss_fn = maml.task_loss(model)
    batches = float64_task_batches(2, 2, task_ids=[0, 0], n_outputs=(2,))
    return model, fast, loss_fn, batches


def test_second_order_loop_path_matches_finite_differences():
    model, fast, loss_fn, batches = second_order_setup()
    alpha, steps = 0.5, 1
    with second_order_ops(model):
        maml.meta_loss_loop(fast, loss_fn, batches[:1], batches[1], alpha, steps).backward()
        g = torch.Generator().manual_seed(0)
        d = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in fast.items()}
        analytic = sum((fast[n].grad * d[n]).sum().item() for n in fast)
        eps, values = 1e-6, []
        for sign in (1, -1):
            shifted = {n: (p + sign * eps * d[n]).detach().requires_grad_() for n, p in fast.items()}
            values.append(maml.meta_loss_loop(shifted, loss_fn, batches[:1], batches[1], alpha, steps).item())
    fd = (values[0] - values[1]) / (2 * eps)
    assert analytic == pytest.approx(fd, rel=1e-6)


def family_encs(names, tok, tasks, model_names, scale=4.0):
    return [maml.encode_split(tok, tasks[n], tasks[n]["train"], model_names.index(n), 32,
                              scale if tasks[n]["kind"] == "regression" else 1.0) for n in names]


def test_batches_are_built_on_the_requested_device():
    aux, _ = data.task_family()
    names = ["has-0", "more-0-1"]
    tok = data.train_tokenizer([t for n in names for t in aux[n]["train"]["text_a"]], vocab_size=300)
    encs = family_encs(names, tok, aux, names)
    here = maml.stack_tasks(encs, 2, 4, np.random.default_rng(0), tok.pad_id)
    there = maml.stack_tasks(encs, 2, 4, np.random.default_rng(0), tok.pad_id, device="meta")  # no data, no GPU
    for a, b in zip(here, there):
        assert {k: (v.device.type, v.shape, v.dtype) for k, v in b.items()} == \
            {k: ("meta", v.shape, v.dtype) for k, v in a.items()}


def test_meta_training_lowers_post_adaptation_query_loss_on_a_tiny_family():
    aux, _ = data.task_family()
    names = ["has-0", "has-2", "more-0-1"]
    tok = data.train_tokenizer([t for n in names for t in aux[n]["train"]["text_a"]], vocab_size=300)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=32, vocab_size=320, n_layer=1, n_head=2, n_embd=32))
    model = maml.TaskClassifier(gpt, [2, 2, 2], [False] * 3)
    encs = family_encs(names, tok, aux, names)
    cfg = dataclasses.replace(maml.FAMILY, inner_lr=0.1, inner_steps=1, meta_batch=3, shot=8, outer_lr=3e-3,
                              meta_steps=60, sampling="uniform")
    held = maml.stack_tasks(encs, 2, 16, np.random.default_rng(99), tok.pad_id)  # fixed evaluation batch
    fast, loss_fn = maml.task_loss(model)

    def post_adaptation():
        with second_order_ops(model):
            return maml.meta_loss_loop(fast, loss_fn, held[:1], held[1], cfg.inner_lr, 1).item()

    before = post_adaptation()
    maml.meta_train(model, encs, "maml", cfg, np.random.default_rng(0), "cpu")
    after = post_adaptation()
    assert after < before - 0.1, (before, after)   # ln 2 = 0.69 at the start
    assert math.isfinite(after)


def tiny_config(seeds=2, **changes):
    """A tiny configuration of the built-in family: a run of every initialisation in seconds."""
    tiny = dict(n_layer=1, n_head=1, n_embd=16, vocab_size=300, max_len=32, inner_lr=0.1, inner_steps=1, meta_batch=2,
                meta_steps=2, outer_lr=1e-3, shot=4, ft_steps=2, eval_interval=1, n_train=(8,), seeds=seeds, val_max=20)
    return dataclasses.replace(maml.FAMILY, **{**tiny, **changes})


def tiny_family(monkeypatch, seeds=2):
    """The built-in family's preset made tiny, for the tests that run `train.py --task maml`."""
    import train
    monkeypatch.setitem(train.PRESETS, "maml", (tiny_config(seeds), maml.GLUE))


def test_run_writes_results_in_the_issue_format(tmp_path):
    cfg = tiny_config()
    out = maml.run(maml.prepare(cfg, None, str(tmp_path), seed=0, device="cpu"))
    assert json.loads((tmp_path / "results.json").read_text()) == json.loads(json.dumps(out))
    assert set(out) == {"targets", "config", "environment", "warnings", "wall_s", "peak_memory_mb", "resumed"}
    assert set(out["targets"]) == set(data.FAMILY_TARGETS)
    assert set(out["targets"]["count-4"]) == set(maml.INITS)
    cell = out["targets"]["count-4"]["maml"]["8"]
    assert set(cell) == {"pearson", "pearson_std", "spearman", "spearman_std", "n_seeds"} and cell["n_seeds"] == 2
    assert set(out["targets"]["more-2-5"]["none"]["8"]) >= {"mcc", "mcc_std", "accuracy", "accuracy_std"}
    assert out["config"]["reported_split"]["more-2-5"] == "test"
    assert out["config"]["inner_lr"] == 0.1 and list(out["config"]["aux"]) == list(data.FAMILY_AUX)
    curves = out["config"]["meta_loss_first_last_tenth"]  # reptile has no query loss to record
    assert set(curves) == {"multitask", "maml", "fomaml"} and all(math.isfinite(v) for c in curves.values() for v in c)
    # resuming a finished run redoes nothing: the same numbers
    again = maml.run(maml.prepare(cfg, None, str(tmp_path), seed=0, device="cpu", resume=True))
    assert again["targets"] == out["targets"] and again["resumed"] == 1
    with pytest.raises(maml.UserError, match="seed"):  # ... and refuses another run's settings before any work
        maml.prepare(cfg, None, str(tmp_path), seed=1, device="cpu", resume=True)
    # the saved encoder is a plain GPT checkpoint with its tokenizer beside it: usable as init
    init = str(tmp_path / "init_maml.pt")
    out = maml.run(maml.prepare(dataclasses.replace(cfg, method="none"), None, str(tmp_path / "again"), seed=0,
                                device="cpu", init=init))
    assert out["config"]["init"] == init and out["config"]["inits"] == ["none"]


@pytest.mark.parametrize("splits, reported", [(("train", "dev", "test"), "test"), (("train", "dev"), "dev")])
def test_no_two_seeds_share_a_training_subset_or_fine_tuning_batches(monkeypatch, splits, reported):
    # every (--seed, subset) pair draws its own training rows and its own batch stream: with a seed offset
    # (`--seed + 1000 s`, `--seed + s`), --seed 1000 or --seed 1 repeated --seed 0's second subset or batches
    task = {"name": "t", **{split: list(range(400 if split == "train" else 10)) for split in splits}}

    def encode(split):  # rows stand for themselves
        return {"ids": [[i] for i in split], "y": np.array(split)}

    def fine_tune(*args):  # records the first draws of the batch stream it is given
        streams.append(tuple(np.random.default_rng(args[-2]).random(4)))
        return {"accuracy": 0.5, "val": 0.5, "stop_step": 0}
    monkeypatch.setattr(maml, "fine_tune", fine_tune)
    cfg, subsets, streams = tiny_config(seeds=3, n_train=(8, 16)), [], []
    for seed in (0, 1, 1000, 1001):
        runs, split = maml.target_runs(task, encode, cfg, None, seed)
        assert split == reported and [(size, s) for size, s, *_ in runs] == [(n, s) for n in "8 16".split()
                                                                             for s in range(3)]
        subsets += [tuple(sorted(train["y"])) for _, _, train, _, _ in runs]
        exp = argparse.Namespace(seed=seed, runs={"t": (runs, split)}, targets={"t": {"metrics": ["accuracy"]}},
                                 state=argparse.Namespace(done={}, save=lambda _: None), model=None, cfg=cfg,
                                 device="cpu")
        maml.fine_tune_targets(exp, "none", None)
    assert len(set(subsets)) == len(subsets) == 24
    assert len(set(streams)) == len(streams) == 24


def test_validation_from_a_labelled_test_split_is_a_sample_of_dev():
    # with a labelled test.tsv, dev.tsv is the validation split: val_max of its rows drawn with the seed, in their
    # order, not its first val_max (of a dev sorted by label: one label)
    task = {"name": "t", "train": [0, 1] * 200, "dev": [0] * 150 + [1] * 150, "test": [0, 1] * 10}

    def encode(split):  # a row's id is its index in the split
        return {"ids": [[i] for i in range(len(split))], "y": np.array(split)}
    for seed in (0, 1):
        runs, split = maml.target_runs(task, encode, tiny_config(seeds=1, n_train=(8,), val_max=100), None, seed)
        rows = [i for [i] in runs[0][3]["ids"]]
        assert split == "test" and len(rows) == 100 == len(set(rows)) and rows == sorted(rows), rows
        assert set(runs[0][3]["y"].tolist()) == {0, 1}, f"validation rows {rows}: the first 100 of dev, one label"


def test_one_method_runs_none_and_that_method(tmp_path):
    exp = maml.prepare(tiny_config(seeds=1, method="reptile", targets=("more-2-5",)), None, str(tmp_path), 0, "cpu")
    assert exp.inits == ("none", "reptile") and list(exp.targets) == ["more-2-5"]


@pytest.mark.parametrize("changes, message", [
    (dict(aux=("has-0", "CoLA")), "setting aux: 'CoLA' is not a task of the built-in family"),
    (dict(aux=("has-0", "more-2-5")), "more-2-5 named twice"),
    (dict(n_embd=18, n_head=4), "n_embd=18, n_head=4"),
    (dict(sampling="sizes"), "sampling=sizes"),
    (dict(n_train=(8, 5000)), "n_train: 5000 is more than"),
])
def test_bad_settings_are_clear_errors_before_anything_is_written(tmp_path, changes, message):
    with pytest.raises(maml.UserError, match=message):
        maml.prepare(tiny_config(**changes), None, str(tmp_path / "out"), seed=0, device="cpu")
    assert not (tmp_path / "out").exists()


def tiny_glue(root):
    """A GLUE folder of three tasks (60 examples a split, no labelled test split, as GLUE's public files), and
    beside it LM-BFF's 16-shot folder of RTE, with examples of its own."""
    for name in ("SST-2", "RTE", "STS-B"):
        header, *rows = LAYOUTS[name].splitlines(keepends=True)
        held_out(write_task(str(root / "glue"), name, header + "".join(rows * 30)), name)
    for split, first in (("train", 0), ("dev", 32)):  # 16 of each label, drawn apart
        rows = "".join(f"{i}\tPremise number {i}.\tHypothesis {i}.\t{('entailment', 'not_entailment')[i % 2]}\n"
                       for i in range(first, first + 32))
        write_task(str(root / "glue-16shot" / "RTE"), "16-13", "index\tsentence1\tsentence2\tlabel\n" + rows, (split,))


def test_a_glue_folder_reports_dev_and_runs_the_16_shot_folders(tmp_path, caplog):
    tiny_glue(tmp_path)
    cfg = tiny_config(seeds=1, method="none", aux=("SST-2",), targets=("RTE", "STS-B"), val_max=4)
    out = maml.run(maml.prepare(cfg, str(tmp_path / "glue"), str(tmp_path / "out"), seed=0, device="cpu"))
    missing = [r.getMessage() for r in caplog.records if "no 16-shot splits" in r.getMessage()]
    assert missing == [f"{tmp_path / 'glue-16shot' / 'STS-B'}: no 16-shot splits (16-<seed>/), so no 16-shot rows"]
    assert out["config"]["reported_split"] == {"RTE": "dev", "STS-B": "dev"}  # validation is carved out of train
    assert set(out["targets"]["RTE"]["none"]) == {"8", "16-shot"} and "16-shot" not in out["targets"]["STS-B"]["none"]
    assert set(out["targets"]["STS-B"]["none"]["8"]) >= {"pearson", "spearman"}
    with pytest.raises(maml.UserError, match="setting targets: QNLI: .* is not there"):
        maml.prepare(dataclasses.replace(cfg, targets=("QNLI",)), str(tmp_path / "glue"), str(tmp_path / "no"),
                     0, "cpu")


def test_configs_show_every_field():
    for cfg in (maml.FAMILY, maml.GLUE, maml.SINE):
        shown = engine.show_config(engine.check_settings(cfg))
        assert all(f.name in shown for f in dataclasses.fields(cfg))
    assert "CoLA,MRPC,STS-B,RTE" in engine.show_config(maml.GLUE)
