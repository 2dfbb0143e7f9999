"""Write a checkpoint exactly as the original TensorFlow DDPM code saved them, with real TensorFlow.

Needs TensorFlow (not a dependency of ddpm_ref: use a separate environment, e.g.
``python3.11 -m venv .venv-tf && .venv-tf/bin/pip install tensorflow-cpu==2.21.0``).

The network is the original "unet2d16b2" U-Net of hojonathanho/diffusion, written here in
TensorFlow ops from the facts of the design notes (§2 layers, §11 variable names and layouts):
TF1 graph mode (``tf.compat.v1``), variables created with ``get_variable`` under the scopes
``model/temb/dense0``, ``model/down_<i>/block_<j>/norm1``, ... with leaves ``W``/``b`` and
``gamma``/``beta``; NHWC images; GroupNorm(32 groups, eps 1e-6); swish; 3x3 "SAME" convs
(HWIO kernels), stride-2 "SAME" downsampling, nearest-neighbour x2 upsampling
(``resize_nearest_neighbor(align_corners=True)``, as the original), 1x1 "nin" layers as
``tensordot`` with ``[in, out]`` kernels; one-head attention ``softmax(q k^T / sqrt(C)) v``.
Training state as the original saved it: Adam (``<var>/Adam``, ``<var>/Adam_1``,
``beta1_power``, ``beta2_power``), an ``ExponentialMovingAverage`` of every trainable variable
(``<var>/ExponentialMovingAverage``, decay 0.9999) and ``global_step``; saved by
``tf.compat.v1.train.Saver`` (format V2) as ``<out>/model.ckpt-<step>.{index,data-00000-of-00001}``
without the ``.meta`` graph and without a ``checkpoint`` state file (like the release folders).

Weights: every variable is drawn at random (Glorot-uniform kernels, including the layers the
original initialises near zero, and non-trivial biases and GroupNorm scales/offsets), so that every
path of the network affects the output; then ``--steps`` Adam steps (lr ``--lr``) on random data
move the raw weights away from their EMA shadows (which stay near the initial values).

Outputs (unless ``--no-forward``): the network's eps prediction on fixed random inputs at the
timesteps ``--timesteps``, once with the raw variables and once with the EMA shadows, in
``forward.npz`` (``x`` [N, H, W, 3] NHWC float32, ``t`` [N] int64, ``eps_raw``, ``eps_ema`` NHWC
float32), and the output of the timestep-embedding MLP (``temb_raw``, ``temb_ema``, [N, 4 ch]).
At width 32 every GroupNorm group holds one channel, so the per-channel timestep term added
before ``norm2`` is removed again by the normalisation: the small network's eps does not depend
on t, and ``temb_*`` is what checks the timestep path there (the ``cifar10`` width, four channels
per group, depends on t).

Examples::

    # the test fixture (tests/fixtures/tf_ddpm_small): reduced width, forward outputs, README
    .venv-tf/bin/python tools/make_tf_checkpoint.py --config small --out tests/fixtures/tf_ddpm_small --readme
    # a full-size CIFAR-10 checkpoint (35,746,307 parameters, ~572 MB) for timing the reader
    .venv-tf/bin/python tools/make_tf_checkpoint.py --config cifar10 --steps 1 --batch 1 --out /tmp/tf_cifar10
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # plain kernels: reproducible outputs

import numpy as np  # noqa: E402

CONFIGS = {
    # reduced width: every layer type of the original (attention in encoder, middle and decoder,
    # nin shortcuts in the decoder, conv down- and upsampling); 285,667 parameters
    "small": dict(ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(16,), resolution=32,
                  out_ch=3, dropout=0.1),
    # the paper's CIFAR-10 network (35,746,307 parameters)
    "cifar10": dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                    resolution=32, out_ch=3, dropout=0.1),
}
GROUPS, GN_EPS, EMA_DECAY = 32, 1e-6, 0.9999


def build(tf, cfg, x, t, dropout):
    """The original U-Net's forward pass in TF ops: x [B, H, W, 3], t [B] -> (eps [B, H, W, out_ch],
    temb [B, 4 ch], the output of the timestep-embedding MLP)."""
    v1 = tf.compat.v1

    def var(name, shape, kind):
        if kind == "W":
            init = v1.glorot_uniform_initializer()
        elif kind == "gamma":
            init = v1.random_uniform_initializer(0.75, 1.25)
        else:  # b, beta
            init = v1.random_uniform_initializer(-0.1, 0.1)
        return v1.get_variable(name, shape, dtype=tf.float32, initializer=init)

    def swish(h):
        return h * tf.sigmoid(h)

    def dense(h, name, out):
        with v1.variable_scope(name):
            w = var("W", [int(h.shape[-1]), out], "W")
            return tf.matmul(h, w) + var("b", [out], "b")

    def conv(h, name, out, k=3, stride=1):
        with v1.variable_scope(name):
            w = var("W", [k, k, int(h.shape[-1]), out], "W")
            return tf.nn.conv2d(h, w, strides=[1, stride, stride, 1], padding="SAME") + var("b", [out], "b")

    def nin(h, name, out):
        with v1.variable_scope(name):
            w = var("W", [int(h.shape[-1]), out], "W")
            return tf.tensordot(h, w, axes=[[3], [0]]) + var("b", [out], "b")

    def norm(h, name):
        with v1.variable_scope(name):
            c = int(h.shape[-1])
            hh, ww = int(h.shape[1]), int(h.shape[2])
            gamma, beta = var("gamma", [c], "gamma"), var("beta", [c], "beta")
            g = tf.reshape(h, [-1, hh, ww, GROUPS, c // GROUPS])
            mean, variance = tf.nn.moments(g, axes=[1, 2, 4], keepdims=True)
            g = (g - mean) * tf.math.rsqrt(variance + GN_EPS)
            return tf.reshape(g, [-1, hh, ww, c]) * gamma + beta

    def resblock(h, temb, name, out):
        with v1.variable_scope(name):
            cin = int(h.shape[-1])
            a = conv(swish(norm(h, "norm1")), "conv1", out)
            a = a + dense(swish(temb), "temb_proj", out)[:, None, None, :]
            a = tf.nn.dropout(swish(norm(a, "norm2")), rate=dropout)
            a = conv(a, "conv2", out)
            if cin != out:
                h = nin(h, "nin_shortcut", out)
            return h + a

    def attn(h, name):
        with v1.variable_scope(name):
            c, hh, ww = int(h.shape[-1]), int(h.shape[1]), int(h.shape[2])
            a = norm(h, "norm")
            q, k, v = nin(a, "q", c), nin(a, "k", c), nin(a, "v", c)
            w = tf.einsum("bhwc,bHWc->bhwHW", q, k) * (c ** -0.5)
            w = tf.reshape(tf.nn.softmax(tf.reshape(w, [-1, hh, ww, hh * ww]), axis=-1), [-1, hh, ww, hh, ww])
            a = tf.einsum("bhwHW,bHWc->bhwc", w, v)
            return h + nin(a, "proj_out", c)

    def timestep_embedding(steps, dim):
        half = dim // 2
        freqs = tf.exp(tf.range(half, dtype=tf.float32) * -(math.log(10000.0) / (half - 1)))
        args = tf.cast(steps, tf.float32)[:, None] * freqs[None, :]
        return tf.concat([tf.sin(args), tf.cos(args)], axis=1)

    ch, mult, nrb = cfg["ch"], cfg["ch_mult"], cfg["num_res_blocks"]
    with v1.variable_scope("model"):
        with v1.variable_scope("temb"):
            temb = dense(timestep_embedding(t, ch), "dense0", 4 * ch)
            temb = dense(swish(temb), "dense1", 4 * ch)
        hs = [conv(x, "conv_in", ch)]
        for i, m in enumerate(mult):
            with v1.variable_scope(f"down_{i}"):
                for j in range(nrb):
                    h = resblock(hs[-1], temb, f"block_{j}", ch * m)
                    if int(h.shape[1]) in cfg["attn_resolutions"]:
                        h = attn(h, f"attn_{j}")
                    hs.append(h)
                if i != len(mult) - 1:
                    hs.append(conv(hs[-1], "downsample/conv", int(hs[-1].shape[-1]), stride=2))
        h = hs[-1]
        with v1.variable_scope("mid"):
            c = int(h.shape[-1])
            h = attn(resblock(h, temb, "block_1", c), "attn_1")
            h = resblock(h, temb, "block_2", c)
        for i, m in reversed(list(enumerate(mult))):
            with v1.variable_scope(f"up_{i}"):
                for j in range(nrb + 1):
                    h = resblock(tf.concat([h, hs.pop()], axis=-1), temb, f"block_{j}", ch * m)
                    if int(h.shape[1]) in cfg["attn_resolutions"]:
                        h = attn(h, f"attn_{j}")
                if i != 0:
                    size = [2 * int(h.shape[1]), 2 * int(h.shape[2])]
                    h = v1.image.resize_nearest_neighbor(h, size, align_corners=True)
                    h = conv(h, "upsample/conv", int(h.shape[-1]))
        assert not hs
        h = swish(norm(h, "norm_out"))
        return conv(h, "conv_out", cfg["out_ch"]), temb


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="small")
    p.add_argument("--out", required=True, help="output directory (created; must not hold a checkpoint)")
    p.add_argument("--seed", type=int, default=20200619)
    p.add_argument("--steps", type=int, default=3, help="Adam steps before saving (global_step)")
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate of those steps")
    p.add_argument("--batch", type=int, default=2, help="batch of the training steps")
    p.add_argument("--timesteps", default="0,1,250,999",
                   help="timesteps of the stored forward outputs (one input image each)")
    p.add_argument("--no-forward", action="store_true", help="skip the forward outputs")
    p.add_argument("--readme", action="store_true", help="also write README.md (provenance, versions)")
    args = p.parse_args(argv)

    import tensorflow as tf

    v1 = tf.compat.v1
    v1.disable_eager_execution()
    v1.reset_default_graph()
    v1.set_random_seed(args.seed)
    cfg = CONFIGS[args.config]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.glob("*.index")):
        sys.exit(f"error: {out}: already holds a checkpoint; choose an empty --out")
    res = cfg["resolution"]

    x = v1.placeholder(tf.float32, [None, res, res, 3], name="x")
    t = v1.placeholder(tf.int64, [None], name="t")
    rate = v1.placeholder_with_default(0.0, [], name="dropout")
    eps, temb = build(tf, cfg, x, t, rate)
    target = v1.placeholder(tf.float32, [None, res, res, cfg["out_ch"]], name="target")
    loss = tf.reduce_mean(tf.square(eps - target))
    global_step = v1.train.get_or_create_global_step()
    params = v1.trainable_variables()
    train_op = v1.train.AdamOptimizer(args.lr).minimize(loss, global_step=global_step, var_list=params)
    ema = v1.train.ExponentialMovingAverage(decay=EMA_DECAY)
    with tf.control_dependencies([train_op]):
        step_op = ema.apply(params)
    saver = v1.train.Saver(max_to_keep=None)
    n_params = int(sum(np.prod(v.shape.as_list()) for v in params))

    rng = np.random.default_rng(args.seed)
    config = v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    with v1.Session(config=config) as sess:
        sess.run(v1.global_variables_initializer())
        for _ in range(args.steps):
            xb = rng.standard_normal((args.batch, res, res, 3)).astype(np.float32)
            tb = rng.integers(0, 1000, args.batch)
            nb = rng.standard_normal((args.batch, res, res, cfg["out_ch"])).astype(np.float32)
            sess.run(step_op, {x: xb, t: tb, target: nb, rate: cfg["dropout"]})
        step = int(sess.run(global_step))
        prefix = saver.save(sess, str(out / "model.ckpt"), global_step=step, write_meta_graph=False)
        (out / "checkpoint").unlink(missing_ok=True)  # the release folders have no state file
        result = {"prefix": prefix, "config": args.config, "parameters": n_params, "global_step": step,
                  "variables": len(v1.global_variables())}
        if not args.no_forward:
            steps = np.array([int(s) for s in args.timesteps.split(",")], dtype=np.int64)
            xf = rng.standard_normal((len(steps), res, res, 3)).astype(np.float32)
            eps_raw, temb_raw = sess.run([eps, temb], {x: xf, t: steps})
            sess.run([v.assign(ema.average(v)) for v in params])  # after saving: the file is unchanged
            eps_ema, temb_ema = sess.run([eps, temb], {x: xf, t: steps})
            np.savez_compressed(out / "forward.npz", x=xf, t=steps, eps_raw=eps_raw, eps_ema=eps_ema,
                                temb_raw=temb_raw, temb_ema=temb_ema)
            result["forward_max_abs_ema_minus_raw"] = float(np.abs(eps_ema - eps_raw).max())

    versions = {"tensorflow": tf.__version__, "numpy": np.__version__, "python": platform.python_version(),
                "platform": platform.platform()}
    result["versions"] = versions
    result["command"] = "python tools/make_tf_checkpoint.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.readme:
        _write_readme(out, cfg, args, result)
    print(json.dumps(result, indent=1))
    return result


def _write_readme(out: Path, cfg: dict, args, result: dict) -> None:
    files = sorted(p.name for p in out.iterdir() if p.name != "README.md")
    sizes = "\n".join(f"| `{f}` | {(out / f).stat().st_size:,} |" for f in files)
    v = result["versions"]
    att = cfg["attn_resolutions"][0]
    text = f"""# A small checkpoint in the original TensorFlow layout (test fixture)

Written once by `tools/make_tf_checkpoint.py` with real TensorFlow; read by
`tests/test_tf_checkpoint.py` without it. Regenerate with (from the repository root, in an
environment with TensorFlow):

    {result['command']}

Versions: TensorFlow {v['tensorflow']}, NumPy {v['numpy']}, Python {v['python']}
({v['platform']}); date {_dt.date.today().isoformat()}; seed {args.seed}.

| file | bytes |
| --- | ---: |
{sizes}

* The network: the original U-Net at reduced width (`ch` {cfg['ch']}, `ch_mult` {cfg['ch_mult']},
  {cfg['num_res_blocks']} residual block per level, attention at {att}x{att},
  resolution {cfg['resolution']}): {result['parameters']:,} parameters in the original's exact variable
  names and layouts (`model/...`, `W`/`b`/`gamma`/`beta`, HWIO convolutions, `[in, out]` dense and
  nin kernels). It is not one of ddpm_ref's named configurations, so `convert` needs
  `--resolution {cfg['resolution']}` for it.
* The checkpoint `{Path(result['prefix']).name}`: {result['variables']} variables = the model's, their
  `ExponentialMovingAverage` shadows (decay {EMA_DECAY}), Adam's `Adam`/`Adam_1` slots, `beta1_power`,
  `beta2_power` and `global_step` = {result['global_step']} (that many Adam steps at lr {args.lr} on random
  data after a random initialisation, so the raw weights differ from their EMA shadows). No `.meta`
  and no `checkpoint` state file, like the release folders.
* `forward.npz`: the TensorFlow forward pass (eval mode, no dropout) on {len(args.timesteps.split(','))} fixed
  random NHWC inputs `x` at timesteps `t` = {args.timesteps}, with the raw weights (`eps_raw`) and with
  the EMA shadows (`eps_ema`); they differ by up to {result['forward_max_abs_ema_minus_raw']:.3g}. Also the
  output of the timestep-embedding MLP (`temb_raw`, `temb_ema`): at this width every GroupNorm group
  holds one channel, so the per-channel timestep term is normalised away and `eps` does not depend on
  `t`; `temb_*` checks the timestep path (embedding, `dense0`, swish, `dense1`) instead.
* The script sets `TF_ENABLE_ONEDNN_OPTS=0` and one thread, for reproducible outputs.
"""
    (out / "README.md").write_text(text)


if __name__ == "__main__":
    main()
