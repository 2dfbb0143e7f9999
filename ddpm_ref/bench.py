"""Speed of ddpm_ref's UNet against diffusers' UNet2DModel on the same network, in one process.

Two workloads, both on the same random inputs and the same weights (the ddpm_ref model is
converted from the diffusers one with :func:`ddpm_ref.convert.from_diffusers`):

``train``
    one training step of Algorithm 1: forward on (x_t, t), MSE against a fixed noise target
    (L_simple, paper eq. 14), backward, Adam step (same optimizer settings for both).
``sample``
    one step of Algorithm 2's network evaluation: forward under ``torch.no_grad`` in eval mode.

diffusers always runs fp32 eager (its default). ddpm_ref runs in the requested variants, named by
``+``-joined flags: ``fp32`` (plain eager), ``cl`` (channels_last weights and inputs), ``bf16``
(``torch.autocast`` bfloat16), ``compile`` (``torch.compile``), ``freeze`` (``torch.compile``
with inductor's ``freezing``: weights become constants and are pre-packed), ``bf16w`` (the
weights themselves cast to bfloat16 once, inputs cast to bfloat16, no autocast: what a sampler
does with a bf16 copy of the EMA weights), e.g. ``bf16+cl`` or ``compile+bf16``. ``freeze``
and ``bf16w`` are inference-only and skipped for ``train`` (training keeps fp32 master weights
under autocast). The optimizer is Adam (lr 2e-4)
with ``fused=True`` where torch supports it (else the default), the same for every runner.
All runners are timed interleaved (the order rotates every repeat) after warm-up, and the
medians are compared: ratio = ddpm_ref time / diffusers time (< 1 is faster).

The forward FLOPs per image are counted with ``torch.utils.flop_counter.FlopCounterMode``.

Run ``python -m ddpm_ref.bench --help``. Absolute times depend on the machine and its load;
the ratios are the result. Results measured for the project are recorded in
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ddpm_ref.unet import unet_config

__all__ = [
    "DEFAULT_VARIANTS",
    "parse_variant",
    "diffusers_config_for",
    "forward_flops",
    "run_benchmark",
    "format_report",
    "main",
]

FLAGS = ("fp32", "cl", "bf16", "bf16w", "compile", "freeze")
DEFAULT_VARIANTS = (
    "fp32", "cl", "bf16", "bf16+cl", "bf16w", "bf16w+cl", "compile", "compile+bf16",
    "compile+bf16+cl", "freeze+bf16+cl",
)
INFERENCE_ONLY = frozenset({"freeze", "bf16w"})
MODES = ("train", "sample")


def parse_variant(name: str) -> frozenset[str]:
    """Flags of a variant name like ``"compile+bf16+cl"`` (``channels_last`` = ``cl``)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"expected a variant name like 'bf16+cl', got {name!r}")
    flags = set()
    for part in name.strip().split("+"):
        part = {"channels_last": "cl", "autocast": "bf16"}.get(part, part)
        if part not in FLAGS:
            raise ValueError(f"unknown variant flag {part!r} in {name!r}; expected '+'-joined "
                             f"flags from {FLAGS} (e.g. 'compile+bf16')")
        flags.add(part)
    if "fp32" in flags and flags & {"bf16", "bf16w"}:
        raise ValueError(f"variant {name!r} asks for both fp32 and bf16")
    if {"bf16", "bf16w"} <= flags:
        raise ValueError(f"variant {name!r}: choose bf16 (autocast) or bf16w (bf16 weights)")
    flags.discard("fp32")
    if "freeze" in flags:
        flags.add("compile")
    return frozenset(flags)


def diffusers_config_for(cfg: dict) -> dict:
    """diffusers ``UNet2DModel`` kwargs of the same network as ddpm_ref UNet kwargs ``cfg``."""
    ch, mult, res = cfg["ch"], tuple(cfg["ch_mult"]), cfg["resolution"]
    if not cfg.get("resamp_with_conv", True):
        raise ValueError("diffusers_config_for expects resamp_with_conv=True")
    attn = [res // 2**i in tuple(cfg["attn_resolutions"]) for i in range(len(mult))]
    return dict(
        sample_size=res, in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
        block_out_channels=tuple(ch * m for m in mult),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        layers_per_block=cfg["num_res_blocks"], norm_eps=1e-6, norm_num_groups=32,
        downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, attention_head_dim=None,
        act_fn="silu", dropout=cfg["dropout"],
    )


def forward_flops(model: Callable, x: torch.Tensor, t: torch.Tensor) -> int:
    """FLOPs of one forward pass (multiply-add = 2 FLOPs) as counted by FlopCounterMode.

    torch's counter has no formula for the CPU kernel of fused attention
    (``aten._scaled_dot_product_flash_attention_for_cpu``), so on CPU it would silently count
    the two attention matmuls as zero (0.336 GFLOP of the CIFAR-10 network's 12.444); the same
    formula as for the GPU kernels is registered for it here.
    """
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    aten = torch.ops.aten
    custom = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = sdpa_cpu
    counter = FlopCounterMode(display=False, custom_mapping=custom)
    with torch.no_grad(), counter:
        model(x, t)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _make_runner(model: torch.nn.Module, mode: str, flags: frozenset[str], x: torch.Tensor,
                 t: torch.Tensor, target: torch.Tensor, is_diffusers: bool) -> Callable[[], None]:
    """A zero-argument closure doing one training step or one sampling forward."""
    device = x.device
    if "bf16w" in flags:
        model = model.to(torch.bfloat16)
        x = x.to(torch.bfloat16)
    if "cl" in flags:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if "freeze" in flags:
        fn = torch.compile(model, options={"freezing": True})
    elif "compile" in flags:
        fn = torch.compile(model)
    else:
        fn = model
    amp_dtype = torch.bfloat16 if "bf16" in flags else None

    def forward():
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            out = fn(x, t)
        return out.sample if is_diffusers else out

    if mode == "sample":
        model.eval()

        def run():
            with torch.no_grad():
                forward()
        return run

    model.train()
    opt = _adam(model)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(forward().float(), target)
        loss.backward()
        opt.step()
    return step


def _adam(model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam(lr 2e-4) with torch's fused kernel where supported (CPU and CUDA in torch >= 2.4)."""
    try:
        return torch.optim.Adam(model.parameters(), lr=2e-4, fused=True)
    except (RuntimeError, ValueError, TypeError):  # pragma: no cover - older torch
        return torch.optim.Adam(model.parameters(), lr=2e-4)


def run_benchmark(
    config: str = "cifar10",
    batch: int = 8,
    repeats: int = 5,
    warmup: int = 2,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    modes: Sequence[str] = MODES,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    count_flops: bool = True,
    clock: str = "wall",
) -> dict:
    """Time ddpm_ref variants against diffusers fp32 eager; returns a JSON-ready dict.

    Args:
        config: a named UNet configuration (``ddpm_ref.unet.UNET_CONFIGS``).
        batch: images per step. repeats: timed steps per runner (median reported).
        warmup: untimed steps per runner first (includes torch.compile's compilation).
        variants: ddpm_ref variant names (see module doc). modes: subset of ("train", "sample").
        clock: ``"wall"`` (elapsed time) or ``"cpu"`` (this process's CPU time, all threads).
            Both are recorded; ``clock`` picks the one the medians and ratios use. On a shared
            machine, ``cpu`` with one thread is immune to other processes taking the cores.
    Result keys: ``env`` (versions, threads, load), ``flops_per_image``, ``results[mode]`` with
    per-runner ``median_s``, ``min_s``, ``times_s`` (``wall_s`` and ``cpu_s`` both kept),
    ``warmup_s``, ``ratio`` (median vs diffusers' median), ``ratio_min`` (the same with minima,
    the estimate least affected by other processes), and ``fastest`` / ``targets`` summaries
    (on medians).
    """
    for name, v, lo in (("batch", batch, 1), ("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"run_benchmark expects {name} to be an int >= {lo}, got {v!r}")
    if clock not in ("wall", "cpu"):
        raise ValueError(f"run_benchmark expects clock 'wall' or 'cpu', got {clock!r}")
    modes = tuple(modes)
    if not modes or set(modes) - set(MODES):
        raise ValueError(f"run_benchmark expects modes from {MODES}, got {modes}")
    variants = tuple(variants)
    if not variants:
        raise ValueError("run_benchmark expects at least one variant")
    flag_sets = {v: parse_variant(v) for v in variants}
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from diffusers import UNet2DModel
    except ImportError as err:  # pragma: no cover - diffusers is a test dependency
        raise ImportError("the benchmark needs diffusers (the reference implementation)") from err
    from ddpm_ref.convert import from_diffusers

    cfg = unet_config(config)
    torch.manual_seed(seed)
    ref = UNet2DModel(**diffusers_config_for(cfg)).to(dev)
    ours = from_diffusers(ref, dropout=cfg["dropout"]).to(dev)
    res = cfg["resolution"]
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, cfg["in_channels"], res, res, generator=gen).to(dev)
    t = torch.randint(0, 1000, (batch,), generator=gen).to(dev)
    target = torch.randn(batch, cfg["out_channels"], res, res, generator=gen).to(dev)

    out: dict = {
        "env": {
            "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": None,
            "torch": torch.__version__, "python": platform.python_version(),
            "cpu": _cpu_name(), "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "loadavg_start": _loadavg(), "device": str(dev),
        },
        "config": config, "batch": batch, "repeats": repeats, "warmup": warmup, "clock": clock,
        "params": sum(p.numel() for p in ours.parameters()),
        "results": {},
    }
    try:
        import diffusers

        out["env"]["diffusers"] = diffusers.__version__
    except Exception:  # pragma: no cover
        pass
    if count_flops:
        one_x, one_t = x[:1], t[:1]
        # the network as defined (direct upsampling, as diffusers), then the path ddpm_ref runs
        direct = copy.deepcopy(ours).set_upsample_impl("direct").eval()
        out["flops_per_image"] = forward_flops(direct, one_x, one_t)
        out["flops_per_image_executed"] = forward_flops(ours.eval(), one_x, one_t)
        out["flops_per_image_diffusers"] = forward_flops(
            lambda a, b: ref.eval()(a, b).sample, one_x, one_t)

    for mode in modes:
        runners: dict[str, Callable[[], None]] = {
            "diffusers fp32": _make_runner(copy.deepcopy(ref), mode, frozenset(), x, t, target,
                                           True)}
        for v, flags in flag_sets.items():
            if mode == "train" and flags & INFERENCE_ONLY:
                continue  # frozen or bf16 weights: inference only
            runners[f"ddpm_ref {v}"] = _make_runner(copy.deepcopy(ours), mode, flags, x, t,
                                                    target, False)
        warm: dict[str, float] = {}
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(warmup):
                run()
            _sync(dev)
            warm[name] = time.perf_counter() - start
            _progress(progress, f"[{mode}] warm-up {name}: {warm[name]:.1f} s")
        wall: dict[str, list[float]] = {name: [] for name in runners}
        cpu: dict[str, list[float]] = {name: [] for name in runners}
        names = list(runners)
        for r in range(repeats):
            order = names[r % len(names):] + names[:r % len(names)]  # rotate
            for name in order:
                _sync(dev)
                start, start_cpu = time.perf_counter(), time.process_time()
                runners[name]()
                _sync(dev)
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
            _progress(progress, f"[{mode}] repeat {r + 1}/{repeats} done")
        times = wall if clock == "wall" else cpu
        base = statistics.median(times["diffusers fp32"])
        base_min = min(times["diffusers fp32"])
        rows = {}
        for name in names:
            med = statistics.median(times[name])
            rows[name] = {"median_s": med, "min_s": min(times[name]), "times_s": times[name],
                          "wall_s": wall[name], "cpu_s": cpu[name], "warmup_s": warm[name],
                          "ratio": med / base, "ratio_min": min(times[name]) / base_min}
        ours_rows = {k: v for k, v in rows.items() if k.startswith("ddpm_ref")}
        fastest = min(ours_rows, key=lambda k: ours_rows[k]["median_s"])
        out["results"][mode] = {
            "runners": rows,
            "fastest": fastest,
            "fastest_ratio": rows[fastest]["ratio"],
            "targets": {
                "fp32_ratio_le_1": (rows["ddpm_ref fp32"]["ratio"] <= 1.0
                                    if "ddpm_ref fp32" in rows else None),
                "fastest_speedup_ge_2": 1.0 / rows[fastest]["ratio"] >= 2.0,
            },
        }
        del runners
    out["env"]["loadavg_end"] = _loadavg()
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def _progress(enabled: bool, msg: str) -> None:
    if enabled:
        print(msg, file=sys.stderr, flush=True)


def format_report(result: dict) -> str:
    """Human-readable table of a :func:`run_benchmark` result."""
    env = result["env"]
    lines = [
        f"ddpm_ref vs diffusers UNet2DModel -- config {result['config']} "
        f"({result['params']:,} params), batch {result['batch']}, "
        f"median of {result['repeats']} after {result['warmup']} warm-up, "
        f"{result['clock']} clock",
        f"torch {env['torch']}, diffusers {env.get('diffusers')}, {env['cpu']} "
        f"({env['cpu_capability']}), {env['threads']} threads, device {env['device']}, "
        f"load average {env['loadavg_start']} -> {env['loadavg_end']}",
    ]
    if "flops_per_image" in result:
        lines.append(f"forward FLOPs per image: ddpm_ref {result['flops_per_image'] / 1e9:.2f} G, "
                     f"diffusers {result['flops_per_image_diffusers'] / 1e9:.2f} G "
                     "(torch.utils.flop_counter; a training step is about 3x); executed by "
                     f"ddpm_ref with sub-pixel upsampling on {result['env']['device']}: "
                     f"{result['flops_per_image_executed'] / 1e9:.2f} G")
    for mode, r in result["results"].items():
        lines.append("")
        what = ("training step (forward + backward + Adam)" if mode == "train"
                else "sampling step (forward, no_grad)")
        lines.append(f"{mode}: {what}")
        lines.append(f"  {'runner':<28} {'median s':>9} {'ratio':>7} {'speed-up':>9} "
                     f"{'min s':>8} {'ratio(min)':>10} {'warm-up s':>10}")
        for name, row in r["runners"].items():
            lines.append(f"  {name:<28} {row['median_s']:>9.3f} {row['ratio']:>7.3f} "
                         f"{1 / row['ratio']:>8.2f}x {row['min_s']:>8.3f} "
                         f"{row['ratio_min']:>10.3f} {row['warmup_s']:>10.1f}")
        tg = r["targets"]
        lines.append(f"  fastest ddpm_ref: {r['fastest']} ({1 / r['fastest_ratio']:.2f}x "
                     f"diffusers fp32); targets: fp32 ratio <= 1: {tg['fp32_ratio_le_1']}, "
                     f"fastest >= 2x: {tg['fastest_speedup_ge_2']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m ddpm_ref.bench", description=__doc__.split("\n")[0])
    p.add_argument("--config", default="cifar10", help="named UNet config (default cifar10)")
    p.add_argument("--batch", type=int, default=8, help="images per step (default 8)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per runner (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help="comma-separated ddpm_ref variants, flags joined by '+' from "
                        f"{FLAGS} (default {','.join(DEFAULT_VARIANTS)})")
    p.add_argument("--modes", default="train,sample", help="train,sample (default both)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="time to compare: wall (default) or this process's CPU time (use with "
                        "--threads 1 on a shared machine)")
    p.add_argument("--json", default=None, help="also write the full result to this file")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = run_benchmark(
        config=args.config, batch=args.batch, repeats=args.repeats, warmup=args.warmup,
        variants=[v for v in args.variants.split(",") if v],
        modes=[m for m in args.modes.split(",") if m], device=args.device,
        progress=not args.quiet, count_flops=not args.no_flops, clock=args.clock,
    )
    result["env"]["command"] = "python -m ddpm_ref.bench " + " ".join(
        sys.argv[1:] if argv is None else list(argv))
    print(format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
