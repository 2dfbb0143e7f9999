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
import sys
from pathlib import Path

_EPILOG_DATA = (
    "data specs: sample[:train|test] (pixel-exact CIFAR-10 sample shipped in the package), "
    "cifar10:<root> (official python archive under <root>; --download fetches it), "
    "folder:<dir> (<dir>/<class>/<image>.png|jpg), npz:<file>[:key] (uint8 [N,H,W,3])"
)


def _add_device(p: argparse.ArgumentParser, bf16: str | None = "bfloat16 autocast for the network (CUDA and CPU)"):
    p.add_argument("--device", default="auto",
                   help="auto (CUDA if available, else CPU), cpu, cuda, cuda:<i> or mps (default: auto)")
    if bf16:
        p.add_argument("--bf16", action="store_true", help=bf16)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 is fastest on a busy machine)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ddpm_ref",
        description="Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel 2020): train, sample, "
        "evaluate bits/dim and FID, convert weights.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'python -m ddpm_ref <command> --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    sub.required = True

    # ------------------------------------------------------------------ train
    p = sub.add_parser(
        "train",
        help="train a model (Algorithm 1, EMA, checkpoints; DDP under torchrun)",
        description="Train with Algorithm 1 of the paper: Adam + warm-up + clipping, EMA of the weights, "
        "TensorBoard logs, sample grids, atomic checkpoints, exact resume. Multi-GPU: launch with "
        "'torchrun --nproc_per_node=N -m ddpm_ref train ...' (the global batch stays train.batch_size).",
        epilog=_EPILOG_DATA + ". Config keys for --set: name, data, model.*, diffusion.*, optim.*, train.* "
        "(see ddpm_ref/config.py; --print-config shows them all).",
    )
    p.add_argument("--config", default=None,
                   help="preset 'cifar10' (the paper's recipe) or 'tiny' (CPU demo), or a .json file "
                   "(default: cifar10, or the checkpoint's config with --resume)")
    p.add_argument("--data", default=None, help="training images (a data spec, see below); overrides the config's")
    p.add_argument("--out", required=True, help="run directory (config, logs, samples, checkpoints)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue a run: from CHECKPOINT, or without a value from <out>/checkpoints/last.pt "
                   "(a new run starts if there is none)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optim.lr=1e-4 --set model.dropout=0 (repeatable)")
    p.add_argument("--steps", type=int, default=None, help="train.total_steps")
    p.add_argument("--batch-size", type=int, default=None, help="train.batch_size (the global batch)")
    p.add_argument("--lr", type=float, default=None, help="optim.lr")
    p.add_argument("--seed", type=int, default=None, help="train.seed")
    p.add_argument("--stop-at", type=int, default=None, metavar="STEP",
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

    # ------------------------------------------------------------------ sample
    p = sub.add_parser(
        "sample",
        help="sample images with a checkpoint's EMA weights",
        description="Sample images with the EMA weights of a training checkpoint (or a converted "
        ".safetensors U-Net): Algorithm 2 with all T steps (default), K respaced ancestral steps, or "
        "DDIM with K steps. Writes <out>/samples.npz (uint8 [N,32,32,3]) and <out>/samples.png. "
        "Under torchrun the batches are shared between processes.",
    )
    p.add_argument("--checkpoint", required=True,
                   help="training checkpoint (.pt), converted U-Net (.safetensors), or a directory holding one")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-samples", type=int, default=64,
                   help="number of images (default 64; the paper's FID used 50000)")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    p.add_argument("--sampler", choices=("ancestral", "ddim"), default="ancestral",
                   help="ancestral = Algorithm 2 (default); ddim = Song et al. 2021")
    p.add_argument("--steps", type=int, default=None,
                   help="number of reverse steps K (default: all T for ancestral; required for ddim)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (batch i uses (seed, i))")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--config", default=None,
                   help="recipe for a .safetensors model (default: config.json next to it, else cifar10)")
    _add_device(p)

    # ------------------------------------------------------------------ evaluate
    p = sub.add_parser(
        "evaluate",
        help="bits/dim (variational bound) or FID",
        description="--metric bpd: the negative ELBO in bits/dim (all T terms + prior, per image), with its "
        "breakdown (L_T, L_0, sum of KL terms, per-t means), written to <out>/bpd.json and bpd.npz. "
        "--metric fid: FID of samples (an .npz from 'sample', or generated here) against reference "
        "statistics (from 'fid-stats' or computed from --ref-data), written to <out>/fid.json.",
        epilog=_EPILOG_DATA,
    )
    p.add_argument("--metric", choices=("bpd", "fid"), default="bpd", help="what to compute (default bpd)")
    p.add_argument("--checkpoint", default=None, help="training checkpoint (.pt) or converted U-Net (.safetensors)")
    p.add_argument("--out", default=None, help="output directory (default: next to the checkpoint/samples)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--config", default=None,
                   help="recipe for a .safetensors model (default: config.json next to it, else cifar10)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (bpd 64, sampling 256, Inception 50)")
    g = p.add_argument_group("bpd")
    g.add_argument("--data", default=None, help="images to evaluate (data spec; default: the checkpoint's data)")
    g.add_argument("--split", default="test", help="split of the data (default test)")
    g.add_argument("--num-images", type=int, default=None, help="evaluate only the first N images")
    g.add_argument("--download", action="store_true", help="download the CIFAR-10 archive if missing")
    g.add_argument("--t-samples", type=int, default=None, metavar="K",
                   help="estimate the sum of the T-1 KL terms from K sampled terms per image (unbiased, with a "
                   "standard error; K+1 network evaluations per image) instead of all T (the default)")
    g = p.add_argument_group("fid")
    g.add_argument("--samples", default=None, help=".npz of uint8 samples (from 'sample'); else generated")
    g.add_argument("--num-samples", type=int, default=50000, help="samples to generate if --samples is not given")
    g.add_argument("--sampler", choices=("ancestral", "ddim"), default="ancestral", help="sampler for generation")
    g.add_argument("--steps", type=int, default=None, help="reverse steps for generation (default: all T)")
    g.add_argument("--ref-stats", default=None, help="reference statistics .npz (from 'fid-stats')")
    g.add_argument("--ref-data", default=None, help="compute reference statistics from this data spec instead")
    g.add_argument("--ref-split", default="train", help="split of --ref-data (default train, as the paper)")
    g.add_argument("--feature-weights", default=None,
                   help="TorchScript feature network (default: the TF-Inception pool3 port); must match the stats")
    _add_device(p, bf16="bfloat16 autocast when generating samples for FID (bits/dim are always float32)")

    # ------------------------------------------------------------------ fid-stats
    p = sub.add_parser(
        "fid-stats",
        help="FID reference statistics of a data set (pixel-exact images only)",
        description="Inception pool3 mean and covariance of a pixel-exact image set (JPEG sets are refused), "
        "saved as .npz for 'evaluate --metric fid --ref-stats'.",
        epilog=_EPILOG_DATA,
    )
    p.add_argument("--data", required=True, help="data spec")
    p.add_argument("--split", default="train", help="split (default train)")
    p.add_argument("--num-images", type=int, default=None, help="use only the first N images")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--batch-size", type=int, default=50, help="images per Inception batch")
    p.add_argument("--feature-weights", default=None,
                   help="TorchScript feature network (default: the TF-Inception pool3 port)")
    p.add_argument("--download", action="store_true", help="download the CIFAR-10 archive if missing")
    _add_device(p, bf16=None)

    # ------------------------------------------------------------------ convert
    p = sub.add_parser(
        "convert",
        help="convert weights (diffusers, pytorch_diffusion, a training checkpoint's EMA) to .safetensors",
        description="Write a ddpm_ref U-Net .safetensors file (weights + config) from: a diffusers UNet2DModel "
        "directory or weights file (google/ddpm-cifar10-32 layout, non-EMA weights), a pytorch_diffusion "
        "checkpoint (the EMA weights, FID 3.2), or a ddpm_ref training checkpoint (its EMA weights unless "
        "--no-ema). The result works with 'sample' and 'evaluate --checkpoint'.",
    )
    p.add_argument("source", help="weights file or diffusers directory")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--resolution", type=int, default=None, help="image size if it cannot be inferred")
    p.add_argument("--no-ema", action="store_true", help="for a training checkpoint: export the raw weights")
    return parser


# ---------------------------------------------------------------------------------------- commands
def _cmd_train(args) -> int:
    from .config import config_to_dict, load_config
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
        from .config import apply_overrides, validate_config

        if config is None:
            raise ValueError("--print-config with --resume needs --config (or read <out>/config.json)")
        print(json.dumps(config_to_dict(validate_config(apply_overrides(config, overrides))), indent=2))
        return 0
    trainer = Trainer(
        config, args.out, device=args.device, bf16=args.bf16, compile=args.compile,
        channels_last=args.channels_last, tf32=not args.no_tf32, deterministic=args.deterministic,
        resume=args.resume,
        progress=not args.no_progress, tensorboard=not args.no_tensorboard, download=args.download,
        overrides=overrides,
    )
    try:
        trainer.fit(stop_at=args.stop_at)
        if trainer.is_main and trainer.history:
            print(f"done: step {trainer.step}, loss {trainer.history[-1]['loss']:.5f}, "
                  f"checkpoint {trainer.last_path}")
        elif trainer.is_main:
            print(f"nothing to do: the run is at step {trainer.step} of {trainer.config.train.total_steps}")
    finally:
        trainer.close()
    return 0


def _model_args(args):
    return args.config  # a preset name or .json path (load_model resolves it), or None


def _cmd_sample(args) -> int:
    from .evaluate import generate_samples, load_model, save_samples
    from .train import init_distributed

    if args.sampler == "ddim" and args.steps is None:
        raise ValueError("--sampler ddim needs --steps K (e.g. 50 or 100)")
    info, device = init_distributed(args.device)
    try:
        model, diffusion, cfg, minfo = load_model(args.checkpoint, device, use_ema=not args.no_ema,
                                                  config=_model_args(args))
        images = generate_samples(
            model, diffusion, args.num_samples, batch_size=args.batch_size, sampler=args.sampler, steps=args.steps,
            eta=args.eta, seed=args.seed, device=device, bf16=args.bf16, progress=not args.no_progress,
        )
        if info.is_main:
            meta = {"checkpoint": minfo, "sampler": args.sampler, "steps": args.steps or diffusion.num_timesteps,
                    "eta": args.eta, "seed": args.seed, "num": args.num_samples, "bf16": args.bf16}
            npz, png = save_samples(images, args.out, meta)
            print(f"wrote {npz} ({images.shape[0]} images) and {png}")
    finally:
        if info.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


def _next_to(checkpoint) -> Path:
    """Default output directory of an evaluation: ``eval/`` beside the checkpoint (inside a directory)."""
    p = Path(checkpoint)
    return (p if p.is_dir() else p.parent) / "eval"


def _cmd_evaluate(args) -> int:
    from .evaluate import compute_fid, evaluate_bpd, generate_samples, load_model, load_samples, save_bpd
    from .train import init_distributed, load_images

    if args.t_samples is not None and args.metric != "bpd":
        raise ValueError(f"--t-samples {args.t_samples}: it applies to --metric bpd only; drop it for "
                         f"--metric {args.metric}")
    if args.t_samples is not None and args.t_samples < 1:
        raise ValueError(f"--t-samples {args.t_samples}: at least one KL term must be sampled; pass "
                         "--t-samples K with K >= 1, or omit it for all T terms")
    info, device = init_distributed(args.device)
    try:
        if args.metric == "bpd":
            if args.checkpoint is None:
                raise ValueError("--metric bpd needs --checkpoint")
            if args.bf16:
                raise ValueError("--bf16 applies to sampling only: bits/dim are computed in float32")
            model, diffusion, cfg, minfo = load_model(args.checkpoint, device, use_ema=not args.no_ema,
                                                      config=_model_args(args))
            T = diffusion.num_timesteps
            if args.t_samples is not None and args.t_samples > T - 1:
                raise ValueError(f"--t-samples {args.t_samples}: the bound has T-1 = {T - 1} KL terms to sample "
                                 f"from; pass --t-samples between 1 and {T - 1}, or omit it for all T terms")
            spec = args.data or cfg.data
            images, dinfo = load_images(spec, args.split, image_size=model.resolution, download=args.download,
                                        progress=not args.no_progress)
            if args.num_images is not None:
                if args.num_images < 1:
                    raise ValueError(f"--num-images must be >= 1, got {args.num_images}")
                images = images[: args.num_images]
            result = evaluate_bpd(model, diffusion, images, batch_size=args.batch_size or 64, device=device,
                                  seed=args.seed, progress=not args.no_progress, t_samples=args.t_samples)
            if info.is_main:
                out = Path(args.out) if args.out else _next_to(args.checkpoint)
                meta = {"checkpoint": minfo, "data": dinfo, "seed": args.seed}
                jpath, npath = save_bpd(result, out, meta)
                how = (f"all T={T} terms per image" if args.t_samples is None else
                       f"unbiased estimate from K={args.t_samples} sampled KL terms per image, estimator's share "
                       f"of the standard error {result['bpd_estimator_stderr']:.4f}")
                print(f"bits/dim {result['bpd']:.4f} +- {result['bpd_stderr']:.4f} over {result['num_images']} "
                      f"images (L_T {result['prior_bpd']:.3g}, L_0 {result['decoder_bpd']:.4f}, "
                      f"sum of KL terms {result['kl_bpd']:.4f}; {how}); wrote {jpath} and {npath}")
            return 0
        # ---- FID
        if (args.ref_stats is None) == (args.ref_data is None):
            raise ValueError("--metric fid needs exactly one of --ref-stats or --ref-data")
        if args.samples is not None:
            samples = load_samples(args.samples)
            src = {"samples": args.samples}
        else:
            if args.checkpoint is None:
                raise ValueError("--metric fid needs --samples or --checkpoint (to generate samples)")
            model, diffusion, cfg, minfo = load_model(args.checkpoint, device, use_ema=not args.no_ema,
                                                      config=_model_args(args))
            samples = generate_samples(model, diffusion, args.num_samples, batch_size=args.batch_size or 256,
                                       sampler=args.sampler, steps=args.steps, seed=args.seed, device=device,
                                       bf16=args.bf16, progress=not args.no_progress)
            src = {"checkpoint": minfo, "sampler": args.sampler, "steps": args.steps, "seed": args.seed}
        if not info.is_main:
            return 0
        if args.ref_stats is not None:
            ref = args.ref_stats
        else:
            from .evaluate import reference_statistics

            ref = reference_statistics(args.ref_data, args.ref_split, device=device, progress=not args.no_progress,
                                       weights=args.feature_weights)
        value = compute_fid(samples, ref, device=device, progress=not args.no_progress,
                            batch_size=args.batch_size or 50, weights=args.feature_weights)
        out = Path(args.out) if args.out else (Path(args.samples).parent if args.samples else
                                               _next_to(args.checkpoint))
        out.mkdir(parents=True, exist_ok=True)
        rec = {"fid": value, "num_samples": int(samples.shape[0]), **src,
               "reference": args.ref_stats or f"{args.ref_data} [{args.ref_split}]"}
        (out / "fid.json").write_text(json.dumps(rec, indent=2) + "\n")
        print(f"FID {value:.3f} ({samples.shape[0]} samples; compare only FIDs with the same number); "
              f"wrote {out / 'fid.json'}")
        return 0
    finally:
        if info.initialized_here:
            import torch.distributed as dist

            dist.destroy_process_group()


def _cmd_fid_stats(args) -> int:
    from .evaluate import reference_statistics
    from .fid import save_statistics
    from .train import select_device

    stats = reference_statistics(args.data, args.split, device=select_device(args.device),
                                 batch_size=args.batch_size, num_images=args.num_images,
                                 download=args.download, progress=not args.no_progress,
                                 weights=args.feature_weights)
    path = save_statistics(args.out, stats)
    print(f"wrote {path}: {stats.n} images from {stats.source}")
    return 0


def _cmd_convert(args) -> int:
    from . import convert
    from .checkpoint import CheckpointError, load_checkpoint

    src = Path(args.source)
    model = None
    if src.is_file() and src.suffix in (".pt", ".pth"):
        try:
            ckpt = load_checkpoint(src)
        except CheckpointError:
            ckpt = None
        if ckpt is not None:
            from .config import config_from_dict

            model = config_from_dict(ckpt["config"]).build_model()
            model.load_state_dict(ckpt["model" if args.no_ema else "ema"])
    if model is None:
        model = convert.load_pretrained(src, resolution=args.resolution)
    path = convert.save_unet(model.eval(), args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {path} ({n:,} parameters)")
    return 0


_COMMANDS = {
    "train": _cmd_train,
    "sample": _cmd_sample,
    "evaluate": _cmd_evaluate,
    "fid-stats": _cmd_fid_stats,
    "convert": _cmd_convert,
}


def main(argv=None) -> int:
    """Entry point; returns the exit status (0 ok, 1 training diverged, 2 bad arguments or data)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from .train import NonFiniteLossError

    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            parser.error(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)

    try:
        return _COMMANDS[args.command](args)
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
