"""
The one command line of the project: train and evaluate a task on the small GPT of model.py.

    python train.py --task calrec                 # CALRec on the built-in multi-domain world (CPU, minutes)
    python train.py --task maml                   # MAML / FOMAML / Reptile on the built-in task family
    python train.py --task sinusoid               # the Finn et al. (2017) sinusoid regression check
    python train.py --help                        # every flag, explained

Real data (fetch it first with `python data.py --help`):

    python train.py --task calrec --data data/amazon/Video_Games data/amazon/Industrial_and_Scientific
    python train.py --task maml --data data/glue --aux MNLI,QNLI,QQP,SST-2 --targets CoLA,MRPC,STS-B,RTE

Several GPUs (or CPU processes, with gloo):

    torchrun --nproc_per_node=4 train.py --task calrec --dtype bfloat16 --compile
    torchrun --nproc_per_node=4 train.py --task maml       # meta-batch tasks split over the processes

This file holds what every task shares: the flags, the threads, the device, the seed, the output folder, the
log, and the one place where a user's mistake becomes a one-line error. Each task's module (calrec.py,
maml.py) has two steps: prepare() reads and checks every input and writes nothing; run() trains, evaluates
and writes. So a run that fails on its input leaves an existing --out-dir exactly as it was.
"""

import os

# OpenMP threads that wait for work sleep instead of spinning: on a machine busy with other processes, a
# spinning thread steals the core its partner needs (measured: up to 1000x slower steps). Set before torch
# starts OpenMP; a value in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from model import UserError  # noqa: E402

TASKS = ("calrec", "maml", "sinusoid")
SEED_MAX = 2 ** 32 - 1  # numpy's seeds are 32-bit

# -----------------------------------------------------------------------------
# flags


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def seed(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {SEED_MAX}, got {text!r}") from None
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {SEED_MAX}, got {text}")
    return value


def number(low, strict):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not (value > low if strict else value >= low) or value == float("inf"):  # also rejects nan
            raise argparse.ArgumentTypeError(f"must be a number {'>' if strict else '>='} {low}, got {text}")
        return value
    return parse


def comma_list(text):
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, e.g. CoLA,MRPC")
    return items


def int_list(text):
    try:
        return [positive_int(t) for t in comma_list(text)]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None


def name_value(text):
    name, eq, value = text.partition("=")
    if not eq or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show a flag's default in --help, unless it has none (then its help says who decides)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line (`error: ...`, exit status 2), like every other mistake."""

    def error(self, message):
        print(f"error: {message} (see python train.py --help)", file=sys.stderr)
        sys.exit(2)


def build_parser():
    p = Parser(
        description="Train and evaluate CALRec, MAML or the sinusoid check on the project's small GPT.",
        formatter_class=HelpFormatter,
        allow_abbrev=False,  # a typo must fail, not silently match another flag
    )
    g = p.add_argument_group("common")
    g.add_argument("--task", choices=TASKS, required=True, help="which experiment to run")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="auto picks cuda, then mps (calrec only), then cpu; sinusoid always runs on the cpu")
    g.add_argument("--threads", type=positive_int, default=1,
                   help="CPU threads for torch's operations; the project's small models gain little from more, "
                        "and extra threads can be far slower on a machine shared with other work")
    g.add_argument("--seed", type=seed, default=0, help="seed for every random number generator")
    g.add_argument("--out-dir", default=None,
                   help="where checkpoints, the log and results.json go (default: out/<task>)")
    g.add_argument("--max-steps", type=positive_int, default=None,
                   help="training steps (per stage / meta-training); default: the task's own")
    g.add_argument("--eval-interval", type=positive_int, default=None,
                   help="evaluate on validation every this many steps; default: the task's own")
    g.add_argument("--init", default=None,
                   help="start from a project checkpoint (.pt) or a Hugging Face GPT-2 directory")
    g.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out-dir (after a crash, a kill or Ctrl-C) with the same flags: "
                        "it ends with the results the uninterrupted run would have given")
    g.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="calrec: mixed precision on a GPU (autocast; float16 adds a gradient scaler); "
                        "the CPU always computes in float32")
    g.add_argument("--compile", action="store_true",
                   help="calrec: torch.compile the training loss (slow to start; for GPUs)")
    g.add_argument("--data", nargs="+", default=None, metavar="DIR",
                   help="real data instead of the built-in default: calrec takes one folder per domain, "
                        "maml the GLUE folder (python data.py --help fetches them)")
    g.add_argument("--set", type=name_value, action="append", default=None, metavar="NAME=VALUE",
                   help="change one setting of the task's configuration (calrec.CALRecConfig, maml.RunConfig, "
                        "maml.SineConfig), e.g. --set every_position=false; may be repeated")

    g = p.add_argument_group("calrec")
    g.add_argument("--target", default=None, help="target domain (a --data folder name; default: the last)")
    g.add_argument("--stages", default="both", choices=("1", "2", "both"),
                   help="1: multi-domain only, 2: target domain only, both: 1 then 2")
    g.add_argument("--alpha", type=number(0, strict=False), default=None, help="weight of L_TT")
    g.add_argument("--beta", type=number(0, strict=False), default=None, help="weight of L_UT")
    g.add_argument("--tau", type=number(0, strict=True), default=None,
                   help="temperature of both contrastive losses")
    g.add_argument("--beams", type=positive_int, default=None, help="beams of the generative + BM25 path")

    g = p.add_argument_group("maml")
    g.add_argument("--aux", type=comma_list, default=None, help="auxiliary (meta-training) GLUE tasks")
    g.add_argument("--targets", type=comma_list, default=None, help="low-resource target GLUE tasks")
    g.add_argument("--method", default="all", choices=("all", "maml", "fomaml", "reptile", "multitask", "none"),
                   help="how the initialisation is learned (none: fine-tune from --init or random); all: "
                        "every one, compared in one table (each run also fine-tunes from 'none')")
    g.add_argument("--sampling", default="pps", choices=("uniform", "pps", "mixed"),
                   help="how auxiliary tasks are drawn: uniform, proportional to size, or mixed")
    g.add_argument("--inner-lr", type=number(0, strict=True), default=None, help="inner-loop learning rate")
    g.add_argument("--inner-steps", type=positive_int, default=None, help="inner-loop steps")
    g.add_argument("--meta-batch", type=positive_int, default=None, help="tasks per meta-update")
    g.add_argument("--n-train", type=int_list, default=None,
                   help="training-set sizes of the target tasks, e.g. 100,1000")
    return p


# which flags each task reads: any other task refuses them, so that nothing is silently ignored
FLAG_TASKS = {
    "eval_interval": ("calrec", "maml"), "init": ("calrec", "maml"), "resume": ("calrec", "maml"),
    "data": ("calrec", "maml"), "dtype": ("calrec",), "compile": ("calrec",),
    "target": ("calrec",), "stages": ("calrec",), "alpha": ("calrec",), "beta": ("calrec",),
    "tau": ("calrec",), "beams": ("calrec",),
    "aux": ("maml",), "targets": ("maml",), "method": ("maml",), "sampling": ("maml",), "inner_lr": ("maml",),
    "inner_steps": ("maml",), "meta_batch": ("maml",), "n_train": ("maml",),
}


def task_config(task):
    """The frozen dataclass that --set changes, for each task."""
    if task == "calrec":
        import calrec
        return calrec.CALRecConfig
    import maml
    return maml.RunConfig if task == "maml" else maml.SineConfig


def typed_settings(parser, task, pairs):
    """--set NAME=VALUE pairs -> {name: value of the field's type}; unknown names and bad values are errors."""
    fields = {f.name: f.type for f in dataclasses.fields(task_config(task))}
    out = {}
    for name, text in pairs or ():
        kind = fields.get(name)
        if kind is None:
            parser.error(f"--set {name}: --task {task} has no setting {name!r}; it has {', '.join(fields)}")
        kind = kind if isinstance(kind, type) else {"int": int, "float": float, "bool": bool, "str": str}.get(kind)
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                out[name] = text.lower() in ("true", "1", "yes")
            elif kind in (int, float, str):
                out[name] = kind(text)
                if kind is not str and not (0 <= out[name] < float("inf")):  # nan, inf and negatives are not settings
                    raise ValueError
            else:
                parser.error(f"--set {name}: this setting cannot be changed from the command line")
        except ValueError:
            parser.error(f"--set {name}={text}: expected a{'n' if kind is int else ''} {kind.__name__} "
                         f"{'(true or false)' if kind is bool else '>= 0'}")
    return out


def check_out_dir(parser, path):
    """--out-dir must be a folder we can write to, or a path where one can be made: checked before any work."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            parser.error(f"--out-dir {path}: is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            parser.error(f"--out-dir {path}: this folder is not writable")
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        parser.error(f"--out-dir {path}: cannot be created ({parent} is not a writable folder)")


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
    if args.resume and args.init is not None:
        parser.error("--resume and --init exclude each other: resuming restores the weights it saved")
    check_out_dir(parser, args.out_dir)
    if args.resume and not os.path.isfile(os.path.join(args.out_dir, "state.pt")):
        parser.error(f"--resume: there is no {os.path.join(args.out_dir, 'state.pt')} to resume from")
    args.set = list(typed_settings(parser, args.task, args.set).items())
    # torchrun splits CALRec's training and MAML's meta-training; the sinusoid check is one process
    if args.task == "sinusoid" and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        parser.error("--task sinusoid runs as one process (it takes about a minute); drop torchrun")


# -----------------------------------------------------------------------------
# device, processes, seed


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
        raise UserError("--device cuda was asked for, but torch sees no CUDA device")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for, but this torch has no MPS device")
    return name


def setup_distributed(device):
    """Under torchrun (RANK and WORLD_SIZE in the environment), join the process group: NCCL on GPUs,
    gloo on CPUs. Returns (world_size, device) with each GPU process on its own card."""
    if "RANK" not in os.environ:
        return 1, device
    world = int(os.environ["WORLD_SIZE"])
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return world, device


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# -----------------------------------------------------------------------------
# the log: one logger for the whole project; the console gets the progress, log.txt everything


class ConsoleHandler(logging.Handler):
    """Log lines through tqdm.write, so that they do not break a progress bar."""

    def emit(self, record):
        tqdm.write(self.format(record))


def setup_logging(rank):
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.DEBUG)
    console = ConsoleHandler()
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)  # under torchrun, process 0 speaks
    root.addHandler(console)


def open_log_file(args, argv):
    """Append to out_dir/log.txt, starting with a header line for this run: its command line, the time, and
    whether it resumes. Called after every input has been checked, just before the first write."""
    os.makedirs(args.out_dir, exist_ok=True)
    start = time.time()
    handler = logging.FileHandler(os.path.join(args.out_dir, "log.txt"), mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda record: setattr(record, "msg", f"[{time.time() - start:7.1f}s] {record.msg}") or True)
    logging.getLogger().addHandler(handler)
    command = "python train.py " + " ".join(shlex.quote(a) for a in argv)
    when = datetime.datetime.now().isoformat(timespec="seconds")
    handler.stream.write(f"\n=== {when} {command}{'  (resumed)' if args.resume else ''}\n")
    return handler


# -----------------------------------------------------------------------------
# main: the one place where a user's mistake becomes one line


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return run(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: the same command with --resume continues from the last saved state", file=sys.stderr)
        sys.exit(130)


def run(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    args.out_dir = args.out_dir or os.path.join("out", args.task)
    check_args(parser, args)
    torch.set_num_threads(args.threads)
    device = "cpu" if args.task == "sinusoid" else pick_device(args.device, mps=args.task == "calrec")
    args.world_size, args.device = setup_distributed(device)
    rank = int(os.environ.get("RANK", 0))
    setup_logging(rank)
    seed_everything(args.seed)  # the same seed on every process: they draw the same global batches
    if args.task == "calrec":
        import calrec as task
    else:
        import maml as task
    handler = None
    try:
        # every input is read and checked first; nothing is written to --out-dir before this returns
        prepared = task.prepare(args) if args.task != "sinusoid" else task.prepare_sinusoid(args)
        if rank == 0:
            handler = open_log_file(args, argv)
        return task.run(prepared) if args.task != "sinusoid" else task.run_sinusoid(prepared)
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        if args.world_size > 1:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
