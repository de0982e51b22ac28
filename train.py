"""
The one command line of the project: train and evaluate a task on the small GPT of model.py.

    python train.py --task calrec                 # CALRec on the built-in multi-domain world (CPU, minutes)
    python train.py --task maml                   # MAML / FOMAML / Reptile on the built-in task family
    python train.py --task sinusoid               # the Finn et al. (2017) sinusoid regression check
    python train.py --help                        # every flag, explained

Real data:

    python train.py --task calrec --data ../shared/data/amazon/Games ../shared/data/amazon/Scientific \
        --target Scientific
    python train.py --task maml --data ../shared/data/glue --aux MNLI,QNLI,QQP,SST-2 \
        --targets CoLA,MRPC,STS-B,RTE

Several GPUs (or CPU processes, with gloo):

    torchrun --nproc_per_node=4 train.py --task calrec --dtype bfloat16 --compile
    torchrun --nproc_per_node=4 train.py --task maml       # meta-batch tasks split over the processes

This file holds what every task shares: the flags, the device, the seed, the output folder. The
pipelines themselves live in the module of their paper (calrec.py, maml.py), each reached in one call.
"""

import argparse
import glob
import os
import random
import sys

import numpy as np
import torch

TASKS = ("calrec", "maml", "sinusoid")


# -----------------------------------------------------------------------------
# flags

def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def comma_list(text):
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, e.g. CoLA,MRPC")
    return items


def int_list(text):
    try:
        return [positive_int(t) for t in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default in --help, unless it has none (then its help says who decides)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def build_parser():
    p = argparse.ArgumentParser(
        description="Train and evaluate CALRec, MAML or the sinusoid check on the project's small GPT.",
        formatter_class=HelpFormatter,
        allow_abbrev=False,  # a typo must fail, not silently match another flag
    )
    g = p.add_argument_group("common")
    g.add_argument("--task", choices=TASKS, required=True, help="which experiment to run")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="auto picks cuda, then mps (calrec only), then cpu; sinusoid always runs on the cpu")
    g.add_argument("--seed", type=int, default=0, help="seed for every random number generator")
    g.add_argument("--out-dir", default=None,
                   help="where checkpoints and results.json go (default: out/<task>)")
    g.add_argument("--max-steps", type=positive_int, default=None,
                   help="training steps (per stage / meta-training); default: the task's own")
    g.add_argument("--eval-interval", type=positive_int, default=None,
                   help="evaluate on validation every this many steps; default: the task's own")
    g.add_argument("--init", default=None,
                   help="start from a project checkpoint (.pt) or a Hugging Face GPT-2 directory")
    g.add_argument("--resume", action="store_true",
                   help="continue from --out-dir/ckpt.pt (model, optimizer and step)")
    g.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="calrec: mixed precision on a GPU (autocast; float16 adds a gradient scaler); "
                        "the CPU always computes in float32")
    g.add_argument("--compile", action="store_true",
                   help="calrec: torch.compile the training loss (slow to start; for GPUs)")
    g.add_argument("--data", nargs="+", default=None, metavar="DIR",
                   help="real data instead of the built-in default: calrec takes one folder per domain, "
                        "maml the GLUE folder")

    g = p.add_argument_group("calrec")
    g.add_argument("--target", default=None, help="target domain (a --data folder name; default: the last)")
    g.add_argument("--stages", default="both", choices=("1", "2", "both"),
                   help="1: multi-domain only, 2: target domain only, both: 1 then 2")
    g.add_argument("--alpha", type=non_negative_float, default=None, help="weight of L_TT")
    g.add_argument("--beta", type=non_negative_float, default=None, help="weight of L_UT")
    g.add_argument("--tau", type=positive_float, default=None, help="temperature of both contrastive losses")
    g.add_argument("--beams", type=positive_int, default=None, help="beams of the generative + BM25 path")

    g = p.add_argument_group("maml")
    g.add_argument("--aux", type=comma_list, default=None, help="auxiliary (meta-training) GLUE tasks")
    g.add_argument("--targets", type=comma_list, default=None, help="low-resource target GLUE tasks")
    g.add_argument("--method", default="all", choices=("all", "maml", "fomaml", "reptile", "multitask", "none"),
                   help="how the initialisation is learned (none: fine-tune from --init or random); all: "
                        "every one, compared in one table (each run also fine-tunes from 'none')")
    g.add_argument("--sampling", default="pps", choices=("uniform", "pps", "mixed"),
                   help="how auxiliary tasks are drawn: uniform, proportional to size, or mixed")
    g.add_argument("--inner-lr", type=positive_float, default=None, help="inner-loop learning rate")
    g.add_argument("--inner-steps", type=positive_int, default=None, help="inner-loop steps")
    g.add_argument("--meta-batch", type=positive_int, default=None, help="tasks per meta-update")
    g.add_argument("--n-train", type=int_list, default=None,
                   help="training-set sizes of the target tasks, e.g. 100,1000")
    return p


# -----------------------------------------------------------------------------
# device and seed

def pick_device(name, mps=True):
    """--device auto: cuda, else mps (only when `mps` is true: calrec; MAML's second-order torch.func path
    is unchecked on mps, so it runs there only when asked), else cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if mps and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was asked for, but torch sees no CUDA device")
    if name == "mps" and not torch.backends.mps.is_available():
        sys.exit("error: --device mps was asked for, but this torch has no MPS device")
    return name


def setup_distributed(device):
    """Under torchrun (RANK and WORLD_SIZE in the environment), join the process group: NCCL on GPUs,
    gloo on CPUs. Returns (rank, world_size, device) with each GPU process on its own card."""
    if "RANK" not in os.environ:
        return 0, 1, device
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return rank, world, device


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# which flags each task reads: any other task refuses them, so that nothing is silently ignored
FLAG_TASKS = {
    "eval_interval": ("calrec", "maml"), "init": ("calrec", "maml"), "resume": ("calrec", "maml"),
    "data": ("calrec", "maml"), "dtype": ("calrec",), "compile": ("calrec",),
    "target": ("calrec",), "stages": ("calrec",), "alpha": ("calrec",), "beta": ("calrec",),
    "tau": ("calrec",), "beams": ("calrec",),
    "aux": ("maml",), "targets": ("maml",), "method": ("maml",), "sampling": ("maml",), "inner_lr": ("maml",),
    "inner_steps": ("maml",), "meta_batch": ("maml",), "n_train": ("maml",),
}


def check_args(parser, args):
    """Fail at once, before any work, when the command line cannot be right."""
    for dest, tasks in FLAG_TASKS.items():
        if args.task not in tasks and getattr(args, dest) != parser.get_default(dest):
            flag = "--" + dest.replace("_", "-")
            parser.error(f"{flag} applies to --task {' and '.join(tasks)} only, not to --task {args.task}")
    if args.task == "sinusoid" and args.device in ("cuda", "mps"):
        parser.error(f"--task sinusoid runs on the CPU (a 40-unit MLP); drop --device {args.device}")
    for d in args.data or ():
        if not os.path.isdir(d):
            parser.error(f"--data {d}: no such folder")
    if args.init is not None and not os.path.exists(args.init):
        parser.error(f"--init {args.init}: no such checkpoint file or GPT-2 folder")
    # calrec resumes from its last best checkpoint; maml reuses the initialisations it saved (init_<method>.pt)
    if args.resume:
        what = "ckpt.pt" if args.task == "calrec" else "init_*.pt"
        if not glob.glob(os.path.join(args.out_dir, what)):
            parser.error(f"--resume: there is no {os.path.join(args.out_dir, what)} to resume from")
    if args.resume and args.init is not None:
        parser.error("--resume and --init exclude each other: resuming restores the weights it saved")
    # torchrun splits CALRec's training and MAML's meta-training; the sinusoid check is one process
    if args.task == "sinusoid" and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        parser.error("--task sinusoid runs as one process (it takes about a minute); drop torchrun")


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.out_dir = args.out_dir or os.path.join("out", args.task)
    check_args(parser, args)
    device = "cpu" if args.task == "sinusoid" else pick_device(args.device, mps=args.task == "calrec")
    args.rank, args.world_size, args.device = setup_distributed(device)
    os.makedirs(args.out_dir, exist_ok=True)
    seed_everything(args.seed)  # the same seed on every process: they draw the same global batches
    try:
        if args.task == "calrec":
            import calrec
            return calrec.run(args)
        if args.task == "maml":
            import maml
            return maml.run(args)
        if args.task == "sinusoid":
            import maml
            return maml.run_sinusoid(args)
    finally:
        if args.world_size > 1:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
