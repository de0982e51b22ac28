"""
The one command line of the project: train and evaluate a task on the small GPT of model.py.

    python train.py --task calrec                 # CALRec on the built-in multi-domain world (CPU, minutes)
    python train.py --task maml                   # MAML / FOMAML / Reptile on the built-in task family
    python train.py --task sinusoid               # the Finn et al. (2017) sinusoid regression check
    python train.py --task calrec --show-config   # every setting: its value and what it allows
    python train.py --task calrec --data data/amazon/Video_Games data/amazon/Industrial_and_Scientific
    torchrun --nproc_per_node=4 train.py --task calrec --dtype bfloat16 --compile   # several GPUs

A task's settings are one frozen config (calrec.CALRecConfig, maml.MAMLConfig, maml.SineConfig): its preset (for
the built-in data, or for real data with --data), then the shortcut flags (each one setting), then --set NAME=VALUE,
each value checked against what its field allows. Then the task's prepare() reads and checks every input and
writes nothing, and its run() trains, evaluates and writes: a run that fails on its input leaves --out-dir as it was.
"""

import os

# OpenMP threads that wait for work sleep instead of spinning, which on a busy machine steals the core another
# thread needs (docs/results.md section 4). Set before torch starts OpenMP; a value in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402

import calrec  # noqa: E402
import maml  # noqa: E402
from engine import (Parser, apply_settings, check_out_dir, describe, format_value, kept_if_refused,  # noqa: E402
                    name_value, open_log_file, pick_device, refusal, seed_number,
                    setup_distributed, setup_logging, show_config, thread_count)
from model import UserError, error_line  # noqa: E402

# task -> (its preset on the built-in data, its preset on real data)
PRESETS = {"calrec": (calrec.BUILT_IN, calrec.REAL_DATA), "maml": (maml.FAMILY, maml.GLUE), "sinusoid": (maml.SINE,)}
# the shortcut flags: each is one setting of the tasks that have it
ALIASES = ("alpha", "beta", "tau", "beams", "stages", "target", "eval_interval", "aux", "targets", "method",
           "sampling", "inner_lr", "inner_steps", "meta_batch", "n_train")
# the run's own flags and the tasks they apply to; then the files a run writes in --out-dir
RUN_FLAGS = {"data": ("calrec", "maml"), "init": ("calrec", "maml"), "resume": ("calrec", "maml"),
             "dtype": ("calrec",), "compile": ("calrec",)}
OUTPUTS = ("results.json", "log.txt", "state.pt", "tokenizer.json", "ckpt.pt", *(f"init_{m}.pt" for m in maml.INITS))

# -----------------------------------------------------------------------------
# flags


def alias_help(name):
    """An alias's help: for each task that has the setting, its help and default (built-in / with --data)."""
    parts = []
    for task, presets in PRESETS.items():
        field = {f.name: f for f in dataclasses.fields(presets[0])}.get(name)
        if field is not None:
            defaults = " / ".join(dict.fromkeys(format_value(getattr(p, name)) for p in presets))
            parts.append(f"{task}: {field.metadata['help']} ({describe(field)}; default {defaults or 'empty'})")
    return "; ".join(parts) + f"; the same as --set {name}=VALUE"


def build_parser():
    p = Parser(description="Train and evaluate CALRec, MAML or the sinusoid check on the project's small GPT.",
               allow_abbrev=False)  # a typo must fail, not silently match another flag
    g = p.add_argument_group("the run")
    g.add_argument("--task", choices=tuple(PRESETS), required=True, help="which experiment to run")
    g.add_argument("--data", nargs="+", metavar="DIR", help="real data instead of the built-in: calrec "
                   "takes one folder per domain, maml the GLUE folder (python data.py fetches them)")
    g.add_argument("--out-dir", help="where checkpoints, the log and results.json go (default: out/TASK)")
    g.add_argument("--init", help="start from a project checkpoint (.pt) or a Hugging Face GPT-2 folder")
    g.add_argument("--resume", action="store_true", help="continue the run saved in --out-dir (after a crash, a kill "
                   "or Ctrl-C) with the same flags: it ends with the results the uninterrupted run would have given")
    g.add_argument("--seed", type=seed_number, default=0, help="seed for every random number generator (default: 0)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"),
                   help="auto (the default) picks cuda, then mps (calrec only), then cpu; sinusoid runs on the cpu")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="calrec: mixed precision on a GPU (default float32; the CPU always computes in float32)")
    g.add_argument("--compile", action="store_true", help="calrec: torch.compile the towers' forward on a GPU")
    g.add_argument("--threads", type=thread_count,
                   help="CPU threads for torch (default 1: extra threads can be far slower on a shared machine)")
    g = p.add_argument_group("the settings (python train.py --task TASK --show-config lists them all)")
    g.add_argument("--show-config", action="store_true", help="print every setting, its value and what it allows; stop")
    g.add_argument("--set", type=name_value, action="append", default=[], metavar="NAME=VALUE",
                   help="change one setting, e.g. --set every_position=false; may be repeated")
    for name in ALIASES:
        g.add_argument("--" + name.replace("_", "-"), metavar="VALUE", help=alias_help(name))
    return p


# -----------------------------------------------------------------------------
# the settings and the paths, checked before any work


def settings(args):
    """The task's config: its preset, then the shortcut flags, then --set; each value checked once."""
    presets = PRESETS[args.task]
    cfg = presets[1] if args.data and len(presets) > 1 else presets[0]
    fields = {f.name for f in dataclasses.fields(cfg)}
    pairs = []
    for name in ALIASES:
        if getattr(args, name) is not None:
            if name not in fields:
                raise UserError(f"--{name.replace('_', '-')}: --task {args.task} has no setting {name}")
            pairs.append((f"--{name.replace('_', '-')}", name, getattr(args, name)))
    named = [n for _, n, _ in pairs] + [n for n, _ in args.set]
    twice = sorted({n for n in named if named.count(n) > 1})
    if twice:
        raise UserError(f"setting {twice[0]} is given twice (by a flag and --set, or by --set twice)")
    return apply_settings(cfg, pairs + [("--set", n, v) for n, v in args.set])


def check_paths(args):
    """Every path flag is the kind of path it must be: --data folders, --init a file or folder outside what the run
    writes, --out-dir a writable folder (or one that can be made) whose output names are not folders."""
    for flag, tasks in RUN_FLAGS.items():
        if args.task not in tasks and getattr(args, flag) not in (None, False):
            raise UserError(f"--{flag} applies to --task {' and '.join(tasks)} only, not to --task {args.task}")
    for d in args.data or ():
        if not os.path.isdir(d):
            raise UserError(f"--data {d}: {'is a file, not a folder' if os.path.exists(d) else 'no such folder'}")
    if args.task == "maml" and args.data and len(args.data) != 1:
        raise UserError(f"--data: --task maml takes one GLUE folder, got {len(args.data)}")
    if args.init is not None and not os.path.exists(args.init):
        raise UserError(f"--init {args.init}: no such checkpoint file or GPT-2 folder")
    sized = [n for n, _ in args.set if n in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd")]
    if args.init and sized:  # the model of --init is the model: its sizes are not settings any more
        raise UserError(f"--set {sized[0]}: --init {args.init} brings its own model sizes; drop this --set")
    check_out_dir(args.out_dir, "--out-dir", OUTPUTS)
    written = {os.path.realpath(os.path.join(args.out_dir, n)) for n in ("", *OUTPUTS)}  # the folder, its files
    if args.init and os.path.realpath(args.init) in written:
        raise UserError(f"--init {args.init}: the run writes there (in --out-dir); copy it elsewhere first")
    if args.resume and not os.path.isfile(os.path.join(args.out_dir, "state.pt")):
        raise UserError(f"--resume: there is no {os.path.join(args.out_dir, 'state.pt')} to resume from")
    if args.task == "sinusoid" and (os.getenv("WORLD_SIZE", "1").lstrip("0") != "1" or args.device in ("cuda", "mps")):
        raise UserError("--task sinusoid runs as one process on the CPU (a 40-unit MLP); drop torchrun and --device")


# -----------------------------------------------------------------------------
# main: the one place where a user's mistake becomes one line


def main(argv=None):
    try:
        return command(sys.argv[1:] if argv is None else list(argv))
    except BrokenPipeError:  # the reader of a pipe stopped early (--show-config | head): it has what it wanted
        os._exit(141)  # at once: the interpreter's exit would write into the closed pipe again, with a traceback
    except (UserError, OSError, MemoryError, RuntimeError) as e:  # of RuntimeErrors, only running out of memory
        message = refusal(e)
        if message is None:
            raise
        print(error_line(message), file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: for --task calrec or maml, the same command with --resume continues", file=sys.stderr)
        sys.exit(130)


def command(argv):
    """Parse and check the command line, then prepare and run the task; returns what its run returns."""
    args = build_parser().parse_args(argv)
    args.out_dir = os.path.join("out", args.task) if args.out_dir is None else args.out_dir
    cfg = settings(args)
    check_paths(args)
    if args.show_config:
        print(f"--task {args.task}, preset {'real data (--data)' if args.data else 'built-in'}:\n{show_config(cfg)}",
              flush=True)
        return cfg
    torch.set_num_threads(args.threads or 1)
    device = "cpu" if args.task == "sinusoid" else pick_device(args.device or "auto", mps=args.task == "calrec")
    rank, device = setup_distributed(device)
    setup_logging(rank)
    torch.manual_seed(args.seed)  # the same seed on every process (each task draws with generators of its own seed too)
    handler = None
    try:
        # every input is read and checked first; nothing is written to --out-dir before prepare returns
        if args.task == "calrec":
            exp = calrec.prepare(cfg, args.data, args.out_dir, args.seed, device, args.init, args.resume,
                                 *(args.dtype or "float32", args.compile) if device != "cpu" else ("float32", False))
        elif args.task == "maml":
            exp = maml.prepare(cfg, args.data[0] if args.data else None, args.out_dir, args.seed, device, args.init,
                               args.resume)
        with kept_if_refused(args.out_dir, OUTPUTS, not args.resume) if rank == 0 else contextlib.nullcontext():
            if rank == 0:
                handler = open_log_file(args.out_dir, argv, args.resume)
            if args.task == "sinusoid":
                return maml.run_sinusoid(cfg, args.out_dir, args.seed)
            return (calrec if args.task == "calrec" else maml).run(exp)
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
