r"""Command line: ``python -m ddpm_ref {train,sample,evaluate,fid-stats,convert} ...``.

Examples (``--help`` on each subcommand lists every option)::

    # the paper's CIFAR-10 run on one GPU (downloads the official archive once)
    python -m ddpm_ref train --config cifar10 --data cifar10:data/cifar10 --download --out runs/cifar10 --bf16
    # the same on 8 GPUs of one machine: still global batch 128 (16 per GPU)
    torchrun --standalone --nproc_per_node=8 -m ddpm_ref train --config cifar10 \
        --data cifar10:data/cifar10 --out runs/cifar10
    # continue after an interruption (exactly: optimizer, EMA, data order and RNG states restored)
    python -m ddpm_ref train --out runs/cifar10 --resume
    # a few minutes on a CPU, from the CIFAR-10 sample shipped in the package
    python -m ddpm_ref train --config tiny --data sample --out runs/tiny
    # 50k samples with the EMA weights, then FID against the training set
    python -m ddpm_ref sample --checkpoint runs/cifar10/checkpoints/last.pt --num-samples 50000 \
        --out runs/cifar10/samples
    python -m ddpm_ref fid-stats --data cifar10:data/cifar10 --split train --out stats/cifar10_train.npz
    python -m ddpm_ref evaluate --metric fid --samples runs/cifar10/samples/samples.npz \
        --ref-stats stats/cifar10_train.npz
    # bits/dim on the test set (T network evaluations per image)
    python -m ddpm_ref evaluate --checkpoint runs/cifar10/checkpoints/last.pt --data cifar10:data/cifar10 --split test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
import warnings
from pathlib import Path

_EPILOG_DATA = (
    "data specs: sample[:train|test] (pixel-exact CIFAR-10 sample shipped in the package), "
    "cifar10:<root> (official python archive under <root>; --download fetches it), "
    "folder:<dir> (<dir>/<class>/<image>.png|jpg), npz:<file>[:key] (uint8 [N,H,W,3])"
)
_EPILOG_ERRORS = (
    "Errors: one line 'error: <what>: <why>; <what to do>' on stderr and exit code 2 (--debug shows the "
    "traceback); exit code 1 means a training run diverged."
)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <message>; see '<prog> --help'`` and exit code 2."""

    def error(self, message):
        if _rank() == 0:
            print(f"error: {' '.join(message.split())}; see '{self.prog} --help'", file=sys.stderr)
        sys.exit(2)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v


def _nonnegative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def _nonnegative_float(text: str) -> float:
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return v


def _add_common(p: argparse.ArgumentParser, force: str | None = None) -> None:
    """--force (when the command writes files a user may have made) and --debug."""
    if force:
        p.add_argument("--force", action="store_true", help=force)
    p.add_argument("--debug", action="store_true",
                   help="on an error, print the Python traceback too (also: DDPM_REF_DEBUG=1)")


# the spacing conventions of ddpm_ref.sampling.SPACINGS (tests check the two agree; no torch import here)
_SPACINGS = ("trailing", "linspace", "leading", "stride")
_SPACING_HELP = (
    "which K of the T steps --steps K keeps: trailing (default; round(T j / K) - 1, always ends at T-1), "
    "linspace (K evenly spaced from 0 to T-1), leading (DDIM's stride T // K from 0, diffusers' default; "
    "refused when it would end more than one stride below T-1), stride (improved-diffusion's 'ddimK': the "
    "smallest stride giving exactly K steps; refused for a K no stride gives)"
)


def _add_device(p: argparse.ArgumentParser, bf16: str | None = "bfloat16 autocast for the network (CUDA and CPU)"):
    p.add_argument("--device", default="auto",
                   help="auto (CUDA if available, else CPU), cpu, cuda, cuda:<i> or mps (default: auto)")
    if bf16:
        p.add_argument("--bf16", action="store_true", help=bf16)
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (when stderr is not a terminal they print plain periodic lines)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is fastest on a busy machine)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m ddpm_ref",
        description="Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel 2020): train, sample, "
        "evaluate bits/dim and FID, convert weights.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'python -m ddpm_ref <command> --help' for the options of a command. " + _EPILOG_ERRORS,
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True

    # ------------------------------------------------------------------ train
    p = sub.add_parser(
        "train",
        help="train a model (Algorithm 1, EMA, checkpoints; DDP under torchrun)",
        description="Train with Algorithm 1 of the paper: Adam + warm-up + clipping, EMA of the weights, "
        "TensorBoard logs, sample grids, atomic checkpoints, exact resume. Multi-GPU: launch with "
        "'torchrun --nproc_per_node=N -m ddpm_ref train ...' (the global batch stays train.batch_size). "
        "SIGINT (Ctrl-C) and SIGTERM (a cluster's preemption signal) write a checkpoint at the current "
        "step and stop; the same command plus --resume continues exactly.",
        epilog=_EPILOG_DATA + ". Config keys for --set: name, data, model.*, diffusion.*, optim.*, train.* "
        "(see ddpm_ref/config.py; --print-config shows them all). " + _EPILOG_ERRORS,
    )
    p.add_argument("--config", default=None,
                   help="preset 'cifar10' (the paper's recipe) or 'tiny' (CPU demo), or a .json file "
                   "(default: cifar10; with --resume the run's own recipe)")
    p.add_argument("--data", default=None, help="training images (a data spec, see below); overrides the config's")
    p.add_argument("--out", default=None,
                   help="run directory (config, logs, samples, checkpoints); required unless --print-config")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue a run: from CHECKPOINT, or without a value from <out>/checkpoints/last.pt; a run "
                   "interrupted before its first checkpoint starts again from <out>/config.json; with neither, a "
                   "new run starts (then --config is required)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optim.lr=1e-4 --set model.dropout=0 (repeatable)")
    p.add_argument("--steps", type=_positive_int, default=None, help="train.total_steps")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="train.batch_size (the global batch; checked against the data and the memory available)")
    p.add_argument("--lr", type=float, default=None, help="optim.lr")
    p.add_argument("--seed", type=_nonnegative_int, default=None, help="train.seed")
    p.add_argument("--stop-at", type=_positive_int, default=None, metavar="STEP",
                   help="stop (with a checkpoint) at this step without changing train.total_steps")
    _add_device(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format (default: on for CUDA, off otherwise)")
    p.add_argument("--no-tf32", action="store_true", help="disable TF32 matmuls/convolutions on CUDA")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic GPU kernels: bitwise reproducible runs and resumes (slower; CPU runs are "
                   "deterministic anyway)")
    p.add_argument("--download", action="store_true", help="download the CIFAR-10 archive if missing")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    _add_common(p, force="start a new run in an --out whose config.json belongs to a run without a checkpoint "
                "(checkpoints are never deleted)")

    # ------------------------------------------------------------------ sample
    p = sub.add_parser(
        "sample",
        help="sample images with a checkpoint's EMA weights",
        description="Sample images with the EMA weights of a training checkpoint (or a converted "
        ".safetensors U-Net): Algorithm 2 with all T steps (default), K respaced ancestral steps, "
        "DDIM with K steps, or the probability-flow ODE (error-controlled). "
        "Writes <out>/samples.npz (uint8 [N,32,32,3]) and <out>/samples.png. "
        "Under torchrun the batches are shared between processes.",
        epilog=_EPILOG_ERRORS,
    )
    p.add_argument("--checkpoint", required=True,
                   help="training checkpoint (.pt), converted U-Net (.safetensors), or a directory holding one "
                   "(a run directory, or a folder with ema.safetensors / raw.safetensors)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-samples", type=_positive_int, default=64,
                   help="number of images (default 64; the paper's FID used 50000)")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="images per batch (default 256)")
    p.add_argument("--sampler", choices=("ancestral", "ddim", "ode"), default="ancestral",
                   help="ancestral = Algorithm 2 (default); ddim = Song et al. 2021; ode = the probability-flow "
                   "ODE (Song et al. 2021) with an error-controlled solver (no --steps, no --eta)")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="number of reverse steps K (default: all T for ancestral; required for ddim)")
    p.add_argument("--spacing", choices=_SPACINGS, default="trailing", help=_SPACING_HELP)
    p.add_argument("--eta", type=_nonnegative_float, default=None,
                   help="DDIM eta (default 0 = deterministic; only with --sampler ddim; values whose sigma_t^2 "
                   "would exceed 1 - abar_(t-1) are refused)")
    p.add_argument("--rtol", type=float, default=None,
                   help="--sampler ode: relative tolerance of the solver (default 1e-3; smaller costs more NFE)")
    p.add_argument("--atol", type=float, default=None, help="--sampler ode: absolute tolerance (default 1e-3)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="noise seed (batch i uses (seed, i))")
    p.add_argument("--no-ema", action="store_true",
                   help="use the raw weights instead of the EMA (a training checkpoint, or raw.safetensors)")
    p.add_argument("--config", default=None,
                   help="recipe for a .safetensors model (default: the one recorded in the file, else config.json "
                   "next to it; a file with neither is refused)")
    _add_device(p)
    _add_common(p, force="overwrite samples.npz / samples.png in --out (a stale fid.json there is removed)")

    # ------------------------------------------------------------------ evaluate
    p = sub.add_parser(
        "evaluate",
        help="bits/dim (variational bound) or FID",
        description="--metric bpd: the negative ELBO in bits/dim (all T terms + prior, per image), with its "
        "breakdown (L_T, L_0, sum of KL terms, per-t means), written to <out>/bpd.json and bpd.npz. "
        "--metric fid: FID of samples (an .npz from 'sample', or generated here) against reference "
        "statistics (from 'fid-stats' or computed from --ref-data), written to <out>/fid.json. "
        "Options of the other metric are refused. Existing results are not overwritten without --force.",
        epilog=_EPILOG_DATA + ". " + _EPILOG_ERRORS,
    )
    p.add_argument("--metric", choices=("bpd", "fid"), default="bpd", help="what to compute (default bpd)")
    p.add_argument("--checkpoint", default=None,
                   help="training checkpoint (.pt), converted U-Net (.safetensors) or a directory holding one")
    p.add_argument("--out", default=None,
                   help="output directory (default: <model dir>/eval/ for bits/dim and for FID of generated "
                   "samples, where <model dir> is the --checkpoint directory or the checkpoint file's folder; "
                   "the folder of --samples for FID of given samples)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--config", default=None,
                   help="recipe for a .safetensors model (default: the one recorded in the file, else config.json "
                   "next to it)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="noise seed")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help="images per batch (bpd 64, sampling 256, Inception 50)")
    g_bpd = p.add_argument_group("bits/dim (--metric bpd)")
    g_bpd.add_argument("--data", default=None, help="images to evaluate (data spec; default: the checkpoint's data)")
    g_bpd.add_argument("--split", default="test", help="split of the data (default test)")
    g_bpd.add_argument("--num-images", type=_positive_int, default=None, help="evaluate only the first N images")
    g_bpd.add_argument("--download", action="store_true", help="download the CIFAR-10 archive if missing")
    g_bpd.add_argument("--t-samples", type=_positive_int, default=None, metavar="K",
                       help="estimate the sum of the T-1 KL terms from K sampled terms per image (unbiased, with a "
                       "standard error; K+1 network evaluations per image) instead of all T (the default)")
    g_fid = p.add_argument_group("FID (--metric fid)")
    g_fid.add_argument("--samples", default=None, help=".npz of uint8 samples (from 'sample'); else generated")
    g_fid.add_argument("--num-samples", type=_positive_int, default=None,
                       help="samples to generate if --samples is not given (default 50000)")
    g_fid.add_argument("--sampler", choices=("ancestral", "ddim", "ode"), default="ancestral",
                       help="sampler for generation (as in 'sample')")
    g_fid.add_argument("--steps", type=_positive_int, default=None,
                       help="reverse steps for generation (default: all T; required for ddim; none for ode)")
    g_fid.add_argument("--spacing", choices=_SPACINGS, default="trailing", help=_SPACING_HELP)
    g_fid.add_argument("--eta", type=_nonnegative_float, default=None,
                       help="DDIM eta for generation (default 0; only with --sampler ddim)")
    g_fid.add_argument("--rtol", type=float, default=None,
                       help="--sampler ode: relative tolerance of the solver (default 1e-3)")
    g_fid.add_argument("--atol", type=float, default=None, help="--sampler ode: absolute tolerance (default 1e-3)")
    g_fid.add_argument("--ref-stats", default=None, help="reference statistics .npz (from 'fid-stats')")
    g_fid.add_argument("--ref-data", default=None, help="compute reference statistics from this data spec instead")
    g_fid.add_argument("--ref-split", default="train", help="split of --ref-data (default train, as the paper)")
    g_fid.add_argument("--feature-weights", default=None,
                       help="TorchScript feature network (default: the TF-Inception pool3 port); must match the stats")
    _add_device(p, bf16="bfloat16 autocast when generating samples for FID (bits/dim are always float32)")
    _add_common(p, force="overwrite bpd.json / bpd.npz / fid.json in --out")
    p.set_defaults(_metric_groups={"bpd": g_bpd, "fid": g_fid})

    # ------------------------------------------------------------------ fid-stats
    p = sub.add_parser(
        "fid-stats",
        help="FID reference statistics of a data set (pixel-exact images only)",
        description="Inception pool3 mean and covariance of a pixel-exact image set (JPEG sets are refused), "
        "saved as .npz for 'evaluate --metric fid --ref-stats'.",
        epilog=_EPILOG_DATA + ". " + _EPILOG_ERRORS,
    )
    p.add_argument("--data", required=True, help="data spec")
    p.add_argument("--split", default="train", help="split (default train)")
    p.add_argument("--num-images", type=_positive_int, default=None, help="use only the first N images")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--batch-size", type=_positive_int, default=50, help="images per Inception batch")
    p.add_argument("--feature-weights", default=None,
                   help="TorchScript feature network (default: the TF-Inception pool3 port)")
    p.add_argument("--download", action="store_true", help="download the CIFAR-10 archive if missing")
    _add_device(p, bf16=None)
    _add_common(p, force="overwrite an existing --out file")

    # ------------------------------------------------------------------ convert
    p = sub.add_parser(
        "convert",
        help="convert weights (diffusers, pytorch_diffusion, the original TF checkpoints, a training checkpoint) "
        "to .safetensors",
        description="Write a ddpm_ref U-Net .safetensors file (weights + U-Net config + the diffusion recipe) from: "
        "a ddpm_ref training checkpoint or run directory (its EMA weights unless --no-ema; its recipe), a "
        "diffusers UNet2DModel directory or weights file (google/ddpm-cifar10-32 layout, non-EMA weights), a "
        "pytorch_diffusion checkpoint (the EMA weights, FID 3.2), or the original TensorFlow checkpoint (a "
        "prefix such as model.ckpt-790000 or its directory; its EMA weights unless --no-ema; the CIFAR-10 model "
        "records the paper's recipe); otherwise give the recipe with --config (e.g. cifar10). The result works "
        "with 'sample' and 'evaluate --checkpoint' without other files.",
        epilog=_EPILOG_ERRORS,
    )
    p.add_argument("source", help="training checkpoint, run directory, weights file, diffusers directory, or the "
                   "original TensorFlow checkpoint (prefix such as model.ckpt-790000, or its directory)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--config", default=None,
                   help="recipe to record (preset or .json) for weights that do not carry one (diffusers, "
                   "pytorch_diffusion); a training checkpoint records its own")
    p.add_argument("--resolution", type=_positive_int, default=None,
                   help="image size of a state dict if it cannot be inferred")
    p.add_argument("--no-ema", action="store_true",
                   help="for a training checkpoint, run directory or TensorFlow checkpoint: export the raw weights")
    _add_common(p, force="overwrite an existing --out file")
    return parser


# ---------------------------------------------------------------------------------------- helpers
def _rank() -> int:
    """This process's rank under torchrun (0 otherwise): only rank 0 prints errors."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _usage(message: str):
    from .errors import UsageError

    return UsageError(message)


def _given(args, action) -> bool:
    """True if an option was given a value other than its default."""
    return getattr(args, action.dest, action.default) != action.default


def _refuse_options(args, actions, why: str) -> None:
    for a in actions:
        if a.option_strings and _given(args, a):
            raise _usage(f"{a.option_strings[0]}: {why}")


def _check_feature_weights(path) -> None:
    from .errors import FileFormatError

    if path is not None and not Path(path).is_file():
        where = "is a directory" if Path(path).is_dir() else "file not found"
        raise FileFormatError(f"{path}: {where}; --feature-weights expects a TorchScript feature network file")


def _model_args(args):
    return args.config  # a preset name or .json path (load_model resolves it), or None


def _next_to(checkpoint) -> Path:
    """Where a model's evaluation results go by default: ``<model dir>/eval`` (the checkpoint's
    directory if it is one, else the folder of the checkpoint file)."""
    p = Path(checkpoint)
    return (p if p.is_dir() else p.parent) / "eval"


def _check_steps(args, diffusion) -> None:
    T = diffusion.num_timesteps
    if args.steps is not None and args.steps > T:
        raise _usage(f"--steps {args.steps}: the model's diffusion has T = {T} steps; give --steps between 1 and {T}")


def _check_inference_batch(cfg, batch: int, device, *, bf16: bool = False) -> None:
    """Refuse a --batch-size whose network evaluations cannot fit in the memory available on ``device``
    (a lower bound of the need, :func:`ddpm_ref._resources.inference_memory_estimate`, so a refusal is
    never wrong), instead of the OOM killer ending the process without a message."""
    import torch

    from ._resources import available_memory, format_bytes, inference_memory_estimate

    avail = available_memory(torch.device(device))
    if avail is None:
        return
    kw = cfg.unet_kwargs()
    need = inference_memory_estimate(kw, batch, bf16=bf16)
    if need <= avail:
        return
    per = max(inference_memory_estimate(kw, 2, bf16=bf16) - inference_memory_estimate(kw, 1, bf16=bf16), 1)
    raise _usage(f"--batch-size {batch}: one network evaluation on {batch} images needs at least {format_bytes(need)} "
                 f"but only {format_bytes(avail)} of memory is available on {device}; use --batch-size "
                 f"{max(int(avail // (2 * per)), 1)} or less (half of what the lower bound allows: measured needs "
                 "reached 1.7 times it)")


def _torchrun_cleanup(info) -> None:
    if info.initialized_here:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------- commands
def _cmd_train(args) -> int:
    from .config import apply_overrides, config_to_dict, load_config, validate_config
    from .train import Trainer

    overrides = list(args.set)
    for flag, key in (("steps", "train.total_steps"), ("batch_size", "train.batch_size"),
                      ("lr", "optim.lr"), ("seed", "train.seed")):
        v = getattr(args, flag)
        if v is not None:
            overrides.append(f"{key}={v}")
    if args.data is not None:
        overrides.append(("data", args.data))
    config = None
    if args.config is not None:
        config = load_config(args.config)
    elif args.resume is None:
        config = load_config("cifar10")
    if args.print_config:
        if config is None:
            saved = Path(args.out or ".") / "config.json"
            if args.out is None or not saved.is_file():
                raise _usage("--print-config with --resume: no <out>/config.json to read; give --out of the run, "
                             "or --config")
            config = load_config(saved)
        print(json.dumps(config_to_dict(validate_config(apply_overrides(config, overrides))), indent=2))
        return 0
    if args.out is None:
        raise _usage("--out: required (the run directory); see 'python -m ddpm_ref train --help'")
    if args.force and args.resume is not None:
        raise _usage("--force: starts a new run, --resume continues one; give only one of them")
    trainer = Trainer(
        config, args.out, device=args.device, bf16=args.bf16, compile=args.compile,
        channels_last=args.channels_last, tf32=not args.no_tf32, deterministic=args.deterministic,
        resume=args.resume, force=args.force,
        progress=not args.no_progress, tensorboard=not args.no_tensorboard, download=args.download,
        overrides=overrides,
    )
    try:
        trainer.fit(stop_at=args.stop_at)
        if trainer.is_main and trainer.history:
            print(f"done: step {trainer.step}, loss {trainer.history[-1]['loss']:.5f}, "
                  f"checkpoint {trainer.last_path}")
        elif trainer.is_main:
            print(f"nothing to do: the run is at step {trainer.step} of {trainer.config.train.total_steps} "
                  "(give a larger --steps to continue it)")
    finally:
        trainer.close()
    return 0


def _sampler_options(args) -> dict:
    """The options of the chosen sampler; an option of another sampler is an error (one line)."""
    if args.eta is not None and args.sampler != "ddim":
        raise _usage(f"--eta: applies to --sampler ddim only (the {args.sampler} sampler has no eta)")
    if args.sampler != "ode":
        for flag, v in (("--rtol", args.rtol), ("--atol", args.atol)):
            if v is not None:
                raise ValueError(f"{flag} with --sampler {args.sampler}: only --sampler ode has a solver tolerance "
                                 f"({args.sampler} takes fixed steps); drop {flag}, or use --sampler ode")
        return {"eta": 0.0 if args.eta is None else args.eta}
    for flag, v in (("--steps", args.steps), ("--eta", args.eta)):
        if v is not None:
            raise ValueError(f"{flag} with --sampler ode: its solver chooses the steps and it adds no noise "
                             f"(it uses no eta and no variance of the model); drop {flag}, or use --sampler ddim")
    tol = {}
    for flag, v in (("--rtol", args.rtol), ("--atol", args.atol)):
        if v is not None and not (v > 0 and v < float("inf")):
            raise ValueError(f"{flag} {v}: a solver tolerance must be a positive number; use e.g. {flag} 1e-3 "
                             "(smaller is more accurate and costs more network evaluations)")
        tol[flag[2:]] = 1e-3 if v is None else v
    return tol


def _check_spacing(args, T: int) -> None:
    """Refuse a --spacing/--steps pair that would not start the sampler at the top of the chain."""
    from .sampling import spacing_refusal

    K = args.steps
    if K is None or not 1 <= K < T:
        return  # all T steps (every spacing keeps them all), or a --steps the sampler itself refuses
    why = spacing_refusal(T, K, args.spacing)
    if why is not None:
        use = " or ".join(s for s in ("trailing", "linspace") if spacing_refusal(T, K, s) is None)
        raise ValueError(f"--spacing {args.spacing} --steps {K} (T = {T}): {why}; use --spacing {use} "
                         f"(ending at t = {T - 1})")


def _cmd_sample(args) -> int:
    from ._io import check_output_dir
    from .evaluate import generate_samples, load_model, save_samples
    from .train import init_distributed

    if args.sampler == "ddim" and args.steps is None:
        raise _usage("--sampler ddim: needs --steps K (e.g. 50 or 100)")
    opts = _sampler_options(args)
    out = check_output_dir(args.out, ("samples.npz", "samples.png"), force=args.force)
    stats = {}
    info, device = init_distributed(args.device)
    try:
        model, diffusion, cfg, minfo = load_model(args.checkpoint, device, use_ema=not args.no_ema,
                                                  config=_model_args(args))
        _check_steps(args, diffusion)
        _check_spacing(args, diffusion.num_timesteps)
        _check_inference_batch(cfg, min(args.batch_size, args.num_samples), device, bf16=args.bf16)
        images = generate_samples(
            model, diffusion, args.num_samples, batch_size=args.batch_size, sampler=args.sampler, steps=args.steps,
            spacing=args.spacing, seed=args.seed, device=device, bf16=args.bf16, progress=not args.no_progress,
            stats=stats, **opts,
        )
        if info.is_main:
            meta = {"checkpoint": minfo, "sampler": args.sampler, "steps": args.steps or diffusion.num_timesteps,
                    "spacing": args.spacing if args.steps else None,
                    "seed": args.seed, "num": args.num_samples, "bf16": args.bf16, **opts, "nfe": stats["nfe"]}
            if args.sampler == "ode":
                meta["steps"] = None
            npz, png = save_samples(images, out, meta)
            stale = out / "fid.json"
            note = ""
            if stale.is_file():  # it described the samples just replaced
                stale.unlink()
                note = f"; removed the stale {stale}"
            print(f"wrote {npz} ({images.shape[0]} images) and {png}{note}")
            nfe = stats["nfe"]
            print(f"network evaluations per batch: {', '.join(map(str, nfe))} (mean {sum(nfe) / len(nfe):.1f})")
    finally:
        _torchrun_cleanup(info)
    return 0


def _cmd_evaluate(args) -> int:
    groups = args._metric_groups
    if args.metric == "bpd":
        _refuse_options(args, groups["fid"]._group_actions, "an FID option; it does not apply to --metric bpd")
        if args.checkpoint is None:
            raise _usage("--metric bpd: needs --checkpoint (the model to evaluate)")
        if args.bf16:
            raise _usage("--bf16: applies to sampling only: bits/dim are computed in float32")
        out = Path(args.out) if args.out else _next_to(args.checkpoint)
        return _evaluate_bpd(args, out)
    _refuse_options(args, groups["bpd"]._group_actions, "a bits/dim option; it does not apply to --metric fid")
    if (args.ref_stats is None) == (args.ref_data is None):
        raise _usage("--metric fid: needs exactly one of --ref-stats or --ref-data")
    if args.samples is not None:
        for flag, given in (("--checkpoint", args.checkpoint is not None), ("--no-ema", args.no_ema),
                            ("--config", args.config is not None), ("--bf16", args.bf16),
                            ("--num-samples", args.num_samples is not None), ("--sampler", args.sampler != "ancestral"),
                            ("--steps", args.steps is not None), ("--seed", args.seed != 0),
                            ("--eta", args.eta is not None), ("--rtol", args.rtol is not None),
                            ("--atol", args.atol is not None)):
            if given:
                raise _usage(f"{flag}: generates samples, but --samples gives them; drop one of the two")
    elif args.checkpoint is None:
        raise _usage("--metric fid: needs --samples, or --checkpoint to generate samples")
    if args.sampler == "ddim" and args.steps is None and args.samples is None:
        raise _usage("--sampler ddim: needs --steps K (e.g. 50 or 100)")
    args._sampler_opts = _sampler_options(args) if args.samples is None else {}
    _check_feature_weights(args.feature_weights)
    out = Path(args.out) if args.out else (Path(args.samples).parent if args.samples else _next_to(args.checkpoint))
    return _evaluate_fid(args, out)


def _evaluate_bpd(args, out: Path) -> int:
    from ._io import check_output_dir
    from .evaluate import evaluate_bpd, load_model, save_bpd
    from .train import init_distributed, load_images

    check_output_dir(out, ("bpd.json", "bpd.npz"), force=args.force)
    info, device = init_distributed(args.device)
    try:
        model, diffusion, cfg, minfo = load_model(args.checkpoint, device, use_ema=not args.no_ema,
                                                  config=_model_args(args))
        T = diffusion.num_timesteps
        if args.t_samples is not None and args.t_samples > T - 1:
            raise _usage(f"--t-samples {args.t_samples}: the bound has T-1 = {T - 1} KL terms to sample from; pass "
                         f"--t-samples between 1 and {T - 1}, or omit it for all T terms")
        spec = args.data or cfg.data
        images, dinfo = load_images(spec, args.split, image_size=model.resolution, download=args.download,
                                    progress=not args.no_progress)
        if args.num_images is not None:
            if args.num_images > images.shape[0]:
                raise _usage(f"--num-images {args.num_images}: {spec} [{dinfo['split']}] has only "
                             f"{images.shape[0]} images")
            images = images[: args.num_images]
        _check_inference_batch(cfg, min(args.batch_size or 64, images.shape[0]), device)
        result = evaluate_bpd(model, diffusion, images, batch_size=args.batch_size or 64, device=device,
                              seed=args.seed, progress=not args.no_progress, t_samples=args.t_samples)
        if info.is_main:
            meta = {"checkpoint": minfo, "data": dinfo, "seed": args.seed, "t_samples": args.t_samples}
            jpath, npath = save_bpd(result, out, meta)
            n = result["num_images"]
            spread = (f" +- {result['bpd_stderr']:.4f} (standard error) over {n} images" if n > 1
                      else " over 1 image (no standard error from one image)")
            how = (f"all T={T} terms per image" if args.t_samples is None else
                   f"unbiased estimate from K={args.t_samples} sampled KL terms per image, estimator's share "
                   f"of the standard error {result['bpd_estimator_stderr']:.4f}")
            print(f"bits/dim {result['bpd']:.4f}{spread} (L_T {result['prior_bpd']:.3g}, L_0 "
                  f"{result['decoder_bpd']:.4f}, sum of KL terms {result['kl_bpd']:.4f}; {how}); wrote {jpath} "
                  f"and {npath}")
    finally:
        _torchrun_cleanup(info)
    return 0


def _evaluate_fid(args, out: Path) -> int:
    from ._io import atomic_write_json, check_output_dir
    from .evaluate import compute_fid, generate_samples, load_model, load_samples
    from .train import init_distributed

    check_output_dir(out, ("fid.json",), force=args.force)
    info, device = init_distributed(args.device)
    try:
        if args.samples is not None:
            samples = load_samples(args.samples)
            src = {"samples": args.samples}
        else:
            model, diffusion, cfg, minfo = load_model(args.checkpoint, device, use_ema=not args.no_ema,
                                                      config=_model_args(args))
            _check_steps(args, diffusion)
            _check_spacing(args, diffusion.num_timesteps)
            num = args.num_samples or 50000
            _check_inference_batch(cfg, min(args.batch_size or 256, num), device, bf16=args.bf16)
            stats = {}
            samples = generate_samples(model, diffusion, num, batch_size=args.batch_size or 256,
                                       sampler=args.sampler, steps=args.steps, spacing=args.spacing, seed=args.seed,
                                       device=device, bf16=args.bf16, progress=not args.no_progress, stats=stats,
                                       **args._sampler_opts)
            src = {"checkpoint": minfo, "sampler": args.sampler, "steps": args.steps,
                   "spacing": args.spacing if args.steps else None, "seed": args.seed, **args._sampler_opts,
                   "nfe_per_batch": stats.get("nfe")}
        if not info.is_main:
            return 0
        if samples.shape[0] < 2:
            raise _usage(f"{args.samples or '--num-samples'}: FID needs at least 2 samples, got {samples.shape[0]}")
        if args.ref_stats is not None:
            from .fid import load_statistics

            ref = load_statistics(args.ref_stats)
            if not ref.pixel_exact:
                raise _usage(f"{args.ref_stats}: statistics of lossy images ({ref.source}), which make FIDs "
                             "meaningless; make reference statistics of pixel-exact images with "
                             "'python -m ddpm_ref fid-stats'")
        else:
            from .evaluate import reference_statistics

            ref = reference_statistics(args.ref_data, args.ref_split, device=device, progress=not args.no_progress,
                                       weights=args.feature_weights)
        value = compute_fid(samples, ref, device=device, progress=not args.no_progress,
                            batch_size=args.batch_size or 50, weights=args.feature_weights)
        rec = {"fid": value, "num_samples": int(samples.shape[0]), **src,
               "reference": args.ref_stats or f"{args.ref_data} [{args.ref_split}]"}
        path = atomic_write_json(out / "fid.json", rec, what="FID result")
        print(f"FID {value:.3f} ({samples.shape[0]} samples; compare only FIDs with the same number); wrote {path}")
        return 0
    finally:
        _torchrun_cleanup(info)


def _cmd_fid_stats(args) -> int:
    from ._io import check_new_file
    from .evaluate import reference_statistics
    from .fid import save_statistics
    from .train import select_device

    out = check_new_file(args.out, force=args.force)
    if out.suffix != ".npz":
        raise _usage(f"{out}: statistics are written as .npz; give --out a name ending in .npz")
    _check_feature_weights(args.feature_weights)
    stats = reference_statistics(args.data, args.split, device=select_device(args.device),
                                 batch_size=args.batch_size, num_images=args.num_images,
                                 download=args.download, progress=not args.no_progress,
                                 weights=args.feature_weights)
    path = save_statistics(out, stats)
    print(f"wrote {path}: {stats.n} images from {stats.source}")
    return 0


def _convert_source(args):
    """``(kind, path)`` of a convert source: ``("checkpoint", .pt)``, ``("ddpm_ref", .safetensors)`` or
    ``("other", path)`` (diffusers / pytorch_diffusion, read by ddpm_ref.convert.load_pretrained)."""
    from .checkpoint import FORMAT, torch_load
    from .errors import FileFormatError

    src = Path(args.source)
    try:  # the original TensorFlow checkpoints (a reader module of its own, when present)
        from .tf_checkpoint import is_tf_checkpoint
    except ImportError:
        is_tf_checkpoint = None
    if is_tf_checkpoint is not None and is_tf_checkpoint(src):
        return "tf", src
    if not src.exists():
        raise FileFormatError(f"{src}: does not exist; expected a training checkpoint or run directory, a "
                              ".safetensors / .bin / .ckpt weights file, or a diffusers model folder")
    if src.is_dir():
        for cand in (src / "checkpoints" / "last.pt", src / "last.pt"):
            if cand.is_file():
                return "checkpoint", cand
        name = "raw.safetensors" if args.no_ema else "ema.safetensors"
        if (src / name).is_file():
            return "ddpm_ref", src / name
        if args.no_ema and (src / "ema.safetensors").is_file():
            raise _usage(f"{src}: holds only EMA weights (ema.safetensors); drop --no-ema, or pass the run's "
                         "training checkpoint")
        return "other", src
    if src.suffix in (".pt", ".pth"):
        obj = torch_load(src, "cpu", what="torch file",
                         expected="expected a training checkpoint or a state dict (name -> tensor)")
        if isinstance(obj, dict) and obj.get("format") == FORMAT:
            return "checkpoint", src
        return "other", src
    if src.suffix == ".safetensors":
        from .convert import FORMAT_TAG, unet_file_info

        if unet_file_info(src)["format"] == FORMAT_TAG:
            return "ddpm_ref", src
    return "other", src


def _cmd_convert(args) -> int:
    from . import convert
    from ._io import check_new_file
    from .checkpoint import load_checkpoint
    from .config import config_from_dict, load_config

    out = check_new_file(args.out, force=args.force)
    if out.suffix != ".safetensors":
        raise _usage(f"{out}: the output must be a .safetensors file; give --out a name ending in .safetensors")
    kind, src = _convert_source(args)
    if kind in ("checkpoint", "ddpm_ref") and args.resolution is not None:
        raise _usage(f"--resolution: {src} records its U-Net config; drop --resolution")
    if kind == "checkpoint":
        if args.config is not None:
            raise _usage(f"--config: {src} records its own recipe; drop --config")
        ckpt = load_checkpoint(src)
        recipe = config_from_dict(ckpt["config"])
        model = recipe.build_model()
        weights = "raw" if args.no_ema else "ema"
        model.load_state_dict(ckpt["model" if args.no_ema else "ema"])
        source = f"{src} (step {int(ckpt['step'])})"
    elif kind == "ddpm_ref":
        from .evaluate import _recipe_for

        meta = convert.unet_file_info(src)
        weights = meta["weights"]
        if args.no_ema and weights != "raw":
            raise _usage(f"--no-ema: {src} does not hold raw weights; drop --no-ema, or pass the training checkpoint")
        model = convert.load_unet(src)
        recipe, _ = _recipe_for(src, meta["recipe"], args.config)
        source = meta["source"] or str(src)
    elif kind == "tf":  # the original TensorFlow checkpoint: EMA unless --no-ema
        from .tf_checkpoint import load_tf_unet

        model, tf_info = load_tf_unet(src, ema=not args.no_ema, resolution=args.resolution)
        # the CIFAR-10 release was trained with the paper's recipe (T = 1000, linear betas, eps, fixedlarge)
        recipe = (load_config(args.config) if args.config is not None else
                  load_config("cifar10") if "cifar10" in tf_info.get("named_config", ()) else None)
        weights, source = ("raw" if args.no_ema else "ema"), tf_info
    else:
        if args.no_ema:
            raise _usage(f"--no-ema: applies to a training checkpoint or run directory; {src} holds one set of "
                         "weights")
        model = convert.load_pretrained(src, resolution=args.resolution)
        recipe = load_config(args.config) if args.config is not None else None
        weights, source = None, str(src)
    if recipe is not None:
        _check_recipe_fits(recipe, model, args.config)
    path = convert.save_unet(model.eval(), out, recipe=recipe, weights=weights, source=source)
    n = sum(p.numel() for p in model.parameters())
    what = f"{weights} weights" if weights else "weights"
    if kind == "tf":
        what += f" of {tf_info['checkpoint']}, step {tf_info['global_step']}"
    note = (f", recipe '{recipe.name}' (T = {recipe.diffusion.num_timesteps}, {recipe.diffusion.schedule} betas)"
            if recipe is not None else "; no diffusion recipe recorded: give --config to 'sample'/'evaluate', or "
            "convert again with --config (cifar10 for the paper's CIFAR-10 models)")
    print(f"wrote {path} ({n:,} parameters, {what}{note})")
    return 0


def _check_recipe_fits(recipe, model, flag) -> None:
    want = {k: v for k, v in recipe.unet_kwargs().items() if k != "dropout"}
    have = {k: v for k, v in model.config.items() if k != "dropout"}
    diff = sorted(k for k in want if want[k] != have.get(k))
    if diff:
        raise _usage(f"--config {flag}: describes another U-Net than the weights (differs in {diff}); give the recipe "
                     "the weights were trained with")


_COMMANDS = {
    "train": _cmd_train,
    "sample": _cmd_sample,
    "evaluate": _cmd_evaluate,
    "fid-stats": _cmd_fid_stats,
    "convert": _cmd_convert,
}


def _print_warning(message, category, filename, lineno, file=None, line=None):
    """Warnings as one line each (no source line), on rank 0 only."""
    from .errors import one_line

    if _rank() == 0:
        print(f"warning: {one_line(message) if isinstance(message, BaseException) else ' '.join(str(message).split())}",
              file=sys.stderr)


def main(argv=None) -> int:
    """Entry point; returns the exit status.

    0: done. 1: a training run diverged (non-finite loss). 2: a bad option, file or state, or a
    failed write -- one line ``error: <what>: <why>; <what to do>`` on stderr (rank 0 only under
    torchrun; ``--debug`` or ``DDPM_REF_DEBUG=1`` adds the traceback). 3: an unexpected internal error
    (one line too; ``--debug`` shows where). 128 + signal number: training
    stopped by SIGINT/SIGTERM after writing a checkpoint (130 for Ctrl-C elsewhere)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .errors import one_line
    from .train import NonFiniteLossError, TrainingInterrupted

    debug = getattr(args, "debug", False) or os.environ.get("DDPM_REF_DEBUG", "") not in ("", "0")
    report = _rank() == 0

    def fail(exc, code: int, prefix: str = "error: ") -> int:
        if debug:
            traceback.print_exception(exc, file=sys.stderr)
        if report:
            print(f"{prefix}{one_line(exc)}", file=sys.stderr)
        return code

    with warnings.catch_warnings():
        warnings.showwarning = _print_warning
        try:
            if getattr(args, "threads", None) is not None:
                import torch

                torch.set_num_threads(args.threads)
            return _COMMANDS[args.command](args)
        except NonFiniteLossError as exc:
            return fail(exc, 1)
        except TrainingInterrupted as exc:
            return fail(exc, 128 + exc.signum, prefix="")
        except KeyboardInterrupt:
            if report:
                print("interrupted", file=sys.stderr)
            return 130
        except (ValueError, OSError) as exc:
            return fail(exc, 2)
        except MemoryError as exc:
            return fail(_usage(f"out of memory ({exc}); use a smaller --batch-size"), 2)
        except Exception as exc:  # a failure no check anticipated: still one line, and a way to see more
            from .errors import short_reason

            if debug:
                traceback.print_exception(exc, file=sys.stderr)
            if report:
                print(f"error: unexpected {short_reason(exc)}; rerun with --debug for the traceback and report it",
                      file=sys.stderr)
            return 3


if __name__ == "__main__":
    sys.exit(main())
