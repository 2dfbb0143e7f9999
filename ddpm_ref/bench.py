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

The one-shot GPU check, ``python -m ddpm_ref.bench --suite gpu --json out.json``
(:func:`run_gpu_suite`), is a separate suite for a CUDA machine: training steps/s at batch 128
(fp32 with TF32 off and on, bf16 autocast, bf16 + ``torch.compile`` with the compile time
apart), peak memory, Algorithm 2 and DDIM-100 sampling throughput at batch 256, each against
diffusers' ``UNet2DModel`` with the same weights in the same process, the GPU forward against
the CPU float64 forward, and a 2-process ``torchrun`` DDP run against one process when two GPUs
are visible. Without a CUDA device it refuses (exit 2); ``--smoke`` runs every code path at toy
size on the CPU (tested in ``tests/test_bench.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import io
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

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
    "build_parser",
    "run_gpu_suite",
    "format_gpu_report",
    "ACCURACY_BOUNDS",
    "NoCudaError",
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


# ============================================================================================
# The one-shot GPU check: python -m ddpm_ref.bench --suite gpu --json out.json
# ============================================================================================

GPU_SUITE_DEFAULTS = dict(config="cifar10", train_batch=128, train_steps=10, train_warmup=2,
                          sample_batch=256, ancestral_steps=200, ddim_steps=100, accuracy_batch=8)
SMOKE_DEFAULTS = dict(config="tiny16", train_batch=2, train_steps=2, train_warmup=1,
                      sample_batch=2, ancestral_steps=3, ddim_steps=4, accuracy_batch=2)
#: Bounds on max |GPU forward - CPU float64 forward| / max |CPU float64 forward| that the check
#: asserts (``"pass"`` in the JSON): float32 rounding through ~100 layers stays far below 1e-4;
#: TF32 keeps 10 mantissa bits (2^-11 ~ 5e-4 per product), bf16 keeps 8 (2^-9 ~ 2e-3), both
#: accumulated in float32, so relative errors of a few 1e-3 (TF32) and 1e-2 (bf16) are expected.
ACCURACY_BOUNDS = {"fp32 (TF32 off)": 1e-4, "fp32 (TF32 on)": 2e-2, "bf16 autocast": 1e-1}


class NoCudaError(RuntimeError):
    """The GPU suite was asked for on a machine without a CUDA device."""


def _set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = bool(on)
    torch.backends.cudnn.allow_tf32 = bool(on)


def _peak_reset(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def _peak(dev: torch.device) -> int | None:
    return int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None


def _randomise_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every weight random and O(1)-scaled (no layer left near zero, unlike the initialisation):
    kernels uniform with Glorot's bound, biases U(-0.1, 0.1), norm scales U(0.75, 1.25)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan = p[0].numel() + p.shape[0] * (p[0, 0].numel() if p.dim() > 2 else 1)
                bound = math.sqrt(6.0 / fan)
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * bound)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(0.75 + 0.5 * torch.rand(p.shape, generator=g))
            else:
                p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * 0.1)
    return model


def _gpu_train_runner(net, is_diffusers, diffusion, dev, batch, res, bf16, compile_mode, channels_last, seed):
    """One training step of Algorithm 1 as ddpm_ref's Trainer does it: L_simple (eq. 14) on a
    fixed batch at random t, backward, clipping at global norm 1, fused Adam (lr 2e-4), EMA lerp."""
    from ddpm_ref._validate import value_checks

    net = net.to(dev).train()
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    params, ema_params = list(net.parameters()), list(ema.parameters())
    opt = torch.optim.Adam(params, lr=2e-4, fused=True) if dev.type == "cuda" else _adam(net)
    fn = net
    if compile_mode:
        fn = torch.compile(net) if compile_mode == "inductor" else torch.compile(net, backend=compile_mode)
    g = torch.Generator(device=dev).manual_seed(seed)
    x0 = torch.rand(batch, 3, res, res, generator=g, device=dev) * 2 - 1
    if channels_last:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    T = diffusion.num_timesteps
    call = (lambda x, t: fn(x, t).sample) if is_diffusers else fn

    def step():
        t = torch.randint(0, T, (batch,), generator=g, device=dev)
        noise = torch.randn(x0.shape, generator=g, device=dev)
        with value_checks(False), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = diffusion.training_losses(call, x0, t, noise=noise)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - 0.9999)
    return step


def _time_calls(fn, n: int, dev: torch.device) -> list[float]:
    out = []
    for _ in range(n):
        _sync(dev)
        start = time.perf_counter()
        fn()
        _sync(dev)
        out.append(time.perf_counter() - start)
    return out


def _gpu_train(nets, diffusion, dev, p, res, channels_last, smoke, progress) -> dict:
    variants = [  # (runner, net key, tf32, bf16, compile)
        ("ddpm_ref fp32 (TF32 off)", "ddpm_ref", False, False, None),
        ("ddpm_ref fp32 (TF32 on)", "ddpm_ref", True, False, None),
        ("ddpm_ref bf16 autocast", "ddpm_ref", True, True, None),
        ("ddpm_ref bf16 autocast + torch.compile", "ddpm_ref", True, True, "eager" if smoke else "inductor"),
        ("diffusers fp32 (TF32 off)", "diffusers", False, False, None),
        ("diffusers fp32 (TF32 on)", "diffusers", True, False, None),
        ("diffusers bf16 autocast", "diffusers", True, True, None),
    ]
    rows = {}
    for name, key, tf32, bf16, comp in variants:
        _set_tf32(tf32)
        _peak_reset(dev)
        step = _gpu_train_runner(copy.deepcopy(nets[key]), key == "diffusers", diffusion, dev, p["train_batch"],
                                 res, bf16, comp, channels_last, seed=1)
        warm = _time_calls(step, p["train_warmup"], dev)
        times = _time_calls(step, p["train_steps"], dev)
        med = statistics.median(times)
        rows[name] = {"s_per_step": med, "steps_per_s": 1.0 / med, "times_s": times, "warmup_s": warm,
                      "peak_memory_bytes": _peak(dev), "tf32": tf32, "bf16": bf16, "compile": comp}
        if comp:
            rows[name]["compile_s"] = max(warm[0] - med, 0.0)  # the first call compiles
        _progress(progress, f"[train] {name}: {1 / med:.2f} steps/s")
        del step
    _set_tf32(True)
    ratios = {f"ddpm_ref / diffusers time, {prec}": rows[f"ddpm_ref {prec}"]["s_per_step"]
              / rows[f"diffusers {prec}"]["s_per_step"]
              for prec in ("fp32 (TF32 off)", "fp32 (TF32 on)", "bf16 autocast")}
    return {"batch": p["train_batch"], "steps_timed": p["train_steps"], "warmup_steps": p["train_warmup"],
            "channels_last": channels_last, "runners": rows, "ratios": ratios}


def _gpu_sample(nets, diffusion, dev, p, res, channels_last, progress) -> dict:
    from ddpm_ref._validate import value_checks
    from ddpm_ref.sampling import ancestral_sample, ddim_sample, respace

    T = diffusion.num_timesteps
    n_anc = min(p["ancestral_steps"], T)
    ddim = respace(diffusion, f"ddim{p['ddim_steps']}")
    shape = (p["sample_batch"], 3, res, res)
    out: dict = {"batch": p["sample_batch"], "T": T, "ancestral_steps_timed": n_anc,
                 "ddim_steps": ddim.num_timesteps, "tf32": True, "ancestral": {}, "ddim": {}}
    _set_tf32(True)
    for key in ("ddpm_ref", "diffusers"):
        net = copy.deepcopy(nets[key]).to(dev).eval()
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        call = net if key == "ddpm_ref" else (lambda x, t, _n=net: _n(x, t).sample)
        for prec, bf16 in (("fp32", False), ("bf16", True)):
            name = f"{key} {prec}"
            g = torch.Generator(device=dev).manual_seed(0)

            def ancestral(steps, _call=call, _g=g):
                return ancestral_sample(diffusion, _call, shape, start_t=steps - 1, generator=_g, device=dev)

            def ddim_all(_call=call, _g=g):
                return ddim_sample(ddim, _call, shape, generator=_g, device=dev)

            _peak_reset(dev)
            with value_checks(False), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                _time_calls(lambda: ancestral(2), 1, dev)  # warm-up (cuDNN autotuning)
                (t_anc,) = _time_calls(lambda: ancestral(n_anc), 1, dev)
                (t_ddim,) = _time_calls(ddim_all, 1, dev)
            per_step = t_anc / n_anc
            out["ancestral"][name] = {
                "s_per_step": per_step, "s_per_batch_all_T_steps": per_step * T,
                "images_per_s": p["sample_batch"] / (per_step * T), "peak_memory_bytes": _peak(dev)}
            out["ddim"][name] = {"s_per_batch": t_ddim, "images_per_s": p["sample_batch"] / t_ddim}
            _progress(progress, f"[sample] {name}: Algorithm 2 {p['sample_batch'] / (per_step * T):.2f} "
                      f"images/s, DDIM-{ddim.num_timesteps} {p['sample_batch'] / t_ddim:.2f} images/s")
        del net
    per = {"ancestral": "s_per_step", "ddim": "s_per_batch"}
    out["ratios"] = {f"ddpm_ref / diffusers time, {kind} {prec}":
                     out[kind][f"ddpm_ref {prec}"][per[kind]] / out[kind][f"diffusers {prec}"][per[kind]]
                     for kind in per for prec in ("fp32", "bf16")}
    return out


def _gpu_accuracy(model, dev, p, res, source) -> dict:
    """max |device forward - CPU float64 forward| / max |CPU float64 forward| on the same weights."""
    g = torch.Generator().manual_seed(3)
    n = p["accuracy_batch"]
    x = torch.randn(n, 3, res, res, generator=g, dtype=torch.float64)
    t = torch.linspace(0, 999, n).round().long()
    ref_model = copy.deepcopy(model).cpu().double().eval()
    with torch.no_grad():
        ref = ref_model(x, t)
    del ref_model
    net = copy.deepcopy(model).float().to(dev).eval()
    rows = {}
    for name, tf32, bf16 in (("fp32 (TF32 off)", False, False), ("fp32 (TF32 on)", True, False),
                             ("bf16 autocast", True, True)):
        _set_tf32(tf32)
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = net(x.float().to(dev), t.to(dev)).double().cpu()
        rel = float((out - ref).abs().max() / ref.abs().max())
        rows[name] = {"max_rel_diff": rel, "bound": ACCURACY_BOUNDS[name], "pass": rel < ACCURACY_BOUNDS[name]}
    _set_tf32(True)
    return {"reference": "CPU float64 forward, same weights", "weights": source, "batch": n,
            "timesteps": t.tolist(), "output_max_abs": float(ref.abs().max()), "rows": rows,
            "pass": all(r["pass"] for r in rows.values())}


def _gpu_ddp(dev: torch.device, smoke: bool, progress: bool) -> dict:
    """Two training steps under ``torchrun --nproc_per_node=2 -m ddpm_ref train`` against the same
    two steps in one process (global batch split over the ranks; dropout off, no warm-up)."""
    import subprocess
    import tempfile

    from ddpm_ref.checkpoint import load_checkpoint
    from ddpm_ref.config import apply_overrides, get_config, save_config
    from ddpm_ref.train import Trainer

    nproc = 2
    if dev.type == "cuda" and torch.cuda.device_count() < nproc:
        return {"skipped": f"{torch.cuda.device_count()} CUDA device(s) visible; the DDP check needs {nproc}"}
    if smoke:
        cfg = apply_overrides(get_config("tiny"), ["train.batch_size=4", "diffusion.num_timesteps=100"])
    else:
        cfg = apply_overrides(get_config("cifar10"), ["train.batch_size=32"])
    cfg = apply_overrides(cfg, [
        "data=sample", "model.dropout=0", "optim.warmup_steps=0", "train.total_steps=2", "train.log_every=1",
        "train.sample_every=0", "train.checkpoint_every=1000", "train.keep_every=0"])
    device = "cpu" if dev.type == "cpu" else "cuda"
    with tempfile.TemporaryDirectory(prefix="ddpm_ref_ddp_") as tmp:
        tmp = Path(tmp)
        save_config(cfg, tmp / "cfg.json")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        env.pop("WORLD_SIZE", None)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "ddpm_ref", "train", "--config", str(tmp / "cfg.json"), "--out", str(tmp / "ddp"),
               "--device", device, "--no-progress", "--no-tensorboard"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            return {"nproc": nproc, "pass": False, "error": f"torchrun exited {proc.returncode}: {tail[0]}"}
        ddp_s = time.perf_counter() - start
        with contextlib.redirect_stdout(io.StringIO()):  # the trainer's start-up line
            one = Trainer(cfg, tmp / "one", device=device, progress=False, tensorboard=False)
            theta0 = {k: v.detach().clone().cpu() for k, v in one.model.state_dict().items()}
            one.fit()
            one.close()
        ck = load_checkpoint(tmp / "ddp" / "checkpoints" / "last.pt")

    def flat(sd):
        return torch.cat([sd[k].detach().cpu().flatten().double() for k in theta0])

    t0, ddp, single = flat(theta0), flat(ck["model"]), flat(one.model.state_dict())
    update_rel = float((ddp - single).norm() / (single - t0).norm())
    _progress(progress, f"[ddp] {nproc} processes vs 1: relative difference of the updates {update_rel:.2e}")
    return {"nproc": nproc, "steps": 2, "global_batch": cfg.train.batch_size, "device": device,
            "world_size_in_checkpoint": ck["world_size"], "update_rel_diff": update_rel, "bound": 1e-3,
            "pass": update_rel < 1e-3 and ck["world_size"] == nproc, "torchrun_wall_s": ddp_s}


def run_gpu_suite(smoke: bool = False, device: str = "cuda", weights: str | None = None, ddp: bool = True,
                  progress: bool = True, **overrides) -> dict:
    """The one-shot GPU check (issue "Reproduction kit" §3); returns a JSON-ready dict.

    On a CUDA device, at the paper's sizes (CIFAR-10 network, 35.7M parameters): training steps/s
    at batch 128 for fp32 with TF32 off and on, bf16 autocast, and bf16 + ``torch.compile``
    (compile time separate), each with peak memory; Algorithm 2 sampling throughput at batch 256
    (``ancestral_steps`` steps timed, scaled to all T) and DDIM with 100 steps, fp32 and bf16;
    every speed also for diffusers' ``UNet2DModel`` with the same weights, in the same process
    (ratios = ddpm_ref time / diffusers time); the device forward against the CPU float64 forward
    on the same weights (max relative difference, asserted bounds :data:`ACCURACY_BOUNDS`); and,
    with two or more GPUs, two ``torchrun`` DDP training steps against one process.

    ``smoke=True`` runs every one of these code paths at toy size on the CPU (the ``tiny16``
    network, batches of 2, a few steps; ``torch.compile`` with the ``aot_eager`` backend, which
    traces forward and backward without generating kernels; DDP with 2 CPU processes over gloo).
    ``weights``: a converted ``.safetensors`` (or any :func:`ddpm_ref.convert.load_pretrained`
    source) whose weights the accuracy check uses (random O(1) weights otherwise).
    Raises :class:`NoCudaError` if not ``smoke`` and no CUDA device is visible.
    """
    if not smoke and not torch.cuda.is_available():
        raise NoCudaError(f"no CUDA device is visible (torch {torch.__version__}, CUDA build "
                          f"{torch.version.cuda}); run it on a GPU machine, or add --smoke for the CPU toy run")
    p = dict(SMOKE_DEFAULTS if smoke else GPU_SUITE_DEFAULTS)
    unknown = set(overrides) - set(p)
    if unknown:
        raise ValueError(f"run_gpu_suite: unknown setting(s) {sorted(unknown)}; expected some of {sorted(p)}")
    p.update({k: v for k, v in overrides.items() if v is not None})
    dev = torch.device("cpu" if smoke else device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import UNet2DModel

    from ddpm_ref.config import get_config
    from ddpm_ref.convert import from_diffusers, load_pretrained

    start = time.perf_counter()
    cfg = unet_config(p["config"], dropout=0.1)
    res = cfg["resolution"]
    torch.manual_seed(0)
    ref = _randomise_(UNet2DModel(**diffusers_config_for(cfg)), seed=0)
    ours = from_diffusers(ref, dropout=cfg["dropout"])
    nets = {"ddpm_ref": ours, "diffusers": ref}
    diffusion = get_config("cifar10").build_diffusion()  # T = 1000, linear betas, eps, fixedlarge
    channels_last = dev.type == "cuda"
    result: dict = {
        "suite": "gpu", "smoke": smoke, "config": p["config"], "settings": p,
        "params": sum(q.numel() for q in ours.parameters()),
        "env": _gpu_env(dev),
    }
    _progress(progress, f"GPU check on {result['env']['device_names'] or ['cpu']}: {p['config']} network, "
              f"{result['params']:,} parameters")
    result["train"] = _gpu_train(nets, diffusion, dev, p, res, channels_last, smoke, progress)
    result["sample"] = _gpu_sample(nets, diffusion, dev, p, res, channels_last, progress)
    acc_model, source = ours, "random (every layer O(1))"
    if weights:
        acc_model, source = load_pretrained(weights), str(weights)
        res = acc_model.resolution
    result["accuracy"] = _gpu_accuracy(acc_model, dev, p, res, source)
    result["ddp"] = _gpu_ddp(dev, smoke, progress) if ddp else {"skipped": "--no-ddp"}
    result["wall_s"] = time.perf_counter() - start
    return result


def _gpu_env(dev: torch.device) -> dict:
    env = {"date": _dt.datetime.now().isoformat(timespec="seconds"), "command": None,
           "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
           "device": str(dev), "device_count": torch.cuda.device_count() if dev.type == "cuda" else 0,
           "device_names": ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                            if dev.type == "cuda" else []),
           "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
           "cpu": _cpu_name(), "threads": torch.get_num_threads()}
    try:
        import diffusers

        env["diffusers"] = diffusers.__version__
    except Exception:  # pragma: no cover
        pass
    return env


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / 2**20:,.0f} MiB"


def format_gpu_report(r: dict) -> str:
    """Human-readable summary of :func:`run_gpu_suite`."""
    e = r["env"]
    lines = [f"GPU check{' (SMOKE: toy sizes on CPU, not a measurement)' if r['smoke'] else ''}: "
             f"{r['config']} network ({r['params']:,} parameters), device "
             f"{', '.join([e['device']] + e['device_names'])}; torch {e['torch']} CUDA {e['cuda']}, "
             f"diffusers {e.get('diffusers')}",
             "", f"training (batch {r['train']['batch']}, median of {r['train']['steps_timed']} steps):",
             f"  {'runner':<42} {'steps/s':>8} {'peak memory':>12} {'compile s':>10}"]
    for name, row in r["train"]["runners"].items():
        comp = f"{row['compile_s']:.1f}" if "compile_s" in row else "-"
        lines.append(f"  {name:<42} {row['steps_per_s']:>8.2f} {_mib(row['peak_memory_bytes']):>12} {comp:>10}")
    for k, v in r["train"]["ratios"].items():
        lines.append(f"  {k}: {v:.3f}")
    s = r["sample"]
    lines += ["", f"sampling (batch {s['batch']}): Algorithm 2 ({s['ancestral_steps_timed']} of {s['T']} steps "
              f"timed, scaled) and DDIM-{s['ddim_steps']}",
              f"  {'runner':<20} {'Alg. 2 images/s':>16} {'DDIM images/s':>14} {'peak memory':>12}"]
    for name in s["ancestral"]:
        lines.append(f"  {name:<20} {s['ancestral'][name]['images_per_s']:>16.3f} "
                     f"{s['ddim'][name]['images_per_s']:>14.2f} {_mib(s['ancestral'][name]['peak_memory_bytes']):>12}")
    for k, v in s["ratios"].items():
        lines.append(f"  {k}: {v:.3f}")
    a = r["accuracy"]
    lines += ["", f"accuracy: {a['reference']} ({a['weights']}), batch {a['batch']}:"]
    for name, row in a["rows"].items():
        lines.append(f"  {name:<16} max relative difference {row['max_rel_diff']:.2e} "
                     f"(bound {row['bound']:.0e}: {'ok' if row['pass'] else 'FAIL'})")
    d = r["ddp"]
    lines.append("")
    if "skipped" in d:
        lines.append(f"DDP: skipped ({d['skipped']})")
    elif "error" in d:
        lines.append(f"DDP: FAIL ({d['error']})")
    else:
        lines.append(f"DDP: {d['nproc']} processes x {d['steps']} steps vs 1 process: relative difference of the "
                     f"updates {d['update_rel_diff']:.2e} (bound {d['bound']:.0e}: {'ok' if d['pass'] else 'FAIL'})")
    lines.append(f"total wall time {r['wall_s']:.0f} s")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``python -m ddpm_ref.bench``."""
    p = argparse.ArgumentParser(
        prog="python -m ddpm_ref.bench", description=__doc__.split("\n")[0],
        epilog="--suite gpu: the one-shot GPU check (training steps/s at batch 128 for fp32 with TF32 off/on, "
               "bf16, bf16 + torch.compile; Algorithm 2 and DDIM-100 sampling throughput at batch 256; all "
               "against diffusers in the same process; GPU vs CPU float64 forward; 2-GPU DDP vs 1 process). "
               "Needs a CUDA device; --smoke runs every code path at toy size on the CPU.")
    p.add_argument("--suite", choices=("compare", "gpu"), default="compare",
                   help="compare: ddpm_ref variants vs diffusers (default); gpu: the one-shot GPU check")
    p.add_argument("--smoke", action="store_true", help="--suite gpu at toy size on the CPU (tests the code paths)")
    p.add_argument("--weights", default=None,
                   help="--suite gpu: weights for the accuracy check (a converted .safetensors; default random)")
    p.add_argument("--no-ddp", action="store_true", help="--suite gpu: skip the torchrun DDP check")
    p.add_argument("--train-steps", type=int, default=None, help="--suite gpu: timed training steps per runner")
    p.add_argument("--ancestral-steps", type=int, default=None,
                   help="--suite gpu: Algorithm 2 steps timed per runner (scaled to all T; default 200)")
    p.add_argument("--config", default=None, help="named UNet config (default cifar10; --smoke: tiny16)")
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
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    command = "python -m ddpm_ref.bench " + " ".join(sys.argv[1:] if argv is None else list(argv))
    if args.suite == "gpu":
        try:
            result = run_gpu_suite(smoke=args.smoke, device="cuda" if args.device == "cpu" else args.device,
                                   weights=args.weights, ddp=not args.no_ddp, progress=not args.quiet,
                                   config=args.config, train_steps=args.train_steps,
                                   ancestral_steps=args.ancestral_steps)
        except (NoCudaError, ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        result["env"]["command"] = command
        print(format_gpu_report(result))
    else:
        result = run_benchmark(
            config=args.config or "cifar10", batch=args.batch, repeats=args.repeats, warmup=args.warmup,
            variants=[v for v in args.variants.split(",") if v],
            modes=[m for m in args.modes.split(",") if m], device=args.device,
            progress=not args.quiet, count_flops=not args.no_flops, clock=args.clock,
        )
        result["env"]["command"] = command
        print(format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
