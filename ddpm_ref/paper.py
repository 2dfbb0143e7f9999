"""Numbers quoted from the paper, in one place, with where each comes from.

Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020, arXiv:2006.11239v2.
These are *quotations*, not results of this package: the book labels them "the paper's" wherever
it shows them, and compares them with what ddpm_ref computes. Nothing here can be regenerated
on a CPU; the commands that would reproduce them on GPUs are in the book's CIFAR-10 chapter.
"""

from __future__ import annotations

from dataclasses import dataclass

CITATION = "Ho, Jain & Abbeel (2020), Denoising Diffusion Probabilistic Models, arXiv:2006.11239v2"


@dataclass(frozen=True)
class Table1Row:
    """One row of Table 1 ("CIFAR10 results. NLL measured in bits/dim.")."""

    model: str
    conditional: bool
    inception_score: float | None = None
    inception_score_std: float | None = None
    fid: float | None = None
    nll_test: float | None = None  #: bits/dim; for diffusion models an upper bound ("<=")
    nll_train: float | None = None
    nll_is_bound: bool = False
    ours: bool = False


#: Table 1 of the paper, row by row (blank cells are None). Source: arXiv:2006.11239v2, p. 6.
TABLE1 = (
    Table1Row("EBM", True, 8.30, None, 37.9),
    Table1Row("JEM", True, 8.76, None, 38.4),
    Table1Row("BigGAN", True, 9.22, None, 14.73),
    Table1Row("StyleGAN2 + ADA (v1)", True, 10.06, None, 2.67),
    Table1Row("Diffusion (original)", False, nll_test=5.40, nll_is_bound=True),
    Table1Row("Gated PixelCNN", False, 4.60, None, 65.93, nll_test=3.03, nll_train=2.90),
    Table1Row("Sparse Transformer", False, nll_test=2.80),
    Table1Row("PixelIQN", False, 5.29, None, 49.46),
    Table1Row("EBM", False, 6.78, None, 38.2),
    Table1Row("NCSNv2", False, fid=31.75),
    Table1Row("NCSN", False, 8.87, 0.12, 25.32),
    Table1Row("SNGAN", False, 8.22, 0.05, 21.7),
    Table1Row("SNGAN-DDLS", False, 9.09, 0.10, 15.42),
    Table1Row("StyleGAN2 + ADA (v1)", False, 9.74, 0.05, 3.26),
    Table1Row("Ours (L, fixed isotropic Sigma)", False, 7.67, 0.13, 13.51, 3.70, 3.69, True, True),
    Table1Row("Ours (L_simple)", False, 9.46, 0.11, 3.17, 3.75, 3.72, True, True),
)


@dataclass(frozen=True)
class Table2Row:
    """One row of Table 2 (unconditional CIFAR-10 parameterisation and objective ablation).

    ``None`` scores mark the runs the paper reports as "unstable to train and generated poor
    samples with out-of-range scores"."""

    target: str  #: what the network predicts: "mu~" (the posterior mean, baseline) or "eps" (ours)
    objective: str
    inception_score: float | None
    inception_score_std: float | None
    fid: float | None


#: Table 2 of the paper. Source: arXiv:2006.11239v2, p. 6.
TABLE2 = (
    Table2Row("mu~", "L, learned diagonal Sigma", 7.28, 0.10, 23.69),
    Table2Row("mu~", "L, fixed isotropic Sigma", 8.06, 0.09, 13.22),
    Table2Row("mu~", "||mu~ - mu~_theta||^2", None, None, None),
    Table2Row("eps", "L, learned diagonal Sigma", None, None, None),
    Table2Row("eps", "L, fixed isotropic Sigma", 7.67, 0.13, 13.51),
    Table2Row("eps", "||eps - eps_theta||^2 (L_simple)", 9.46, 0.11, 3.17),
)

#: FID of the L_simple model against the CIFAR-10 *test* set (Section 4.1; Table 1 uses the training set).
FID_TEST_SET = 5.24

#: Section 4.3: rate (L_1 + ... + L_T) and distortion (L_0) of the best-sample CIFAR-10 model, bits/dim,
#: and the distortion as a root mean squared error on the 0..255 scale.
RATE_BITS_PER_DIM = 1.78
DISTORTION_BITS_PER_DIM = 1.97
DISTORTION_RMSE_0_255 = 0.95
#: Section 4.3: "The gap between train and test is at most 0.03 bits per dimension".
TRAIN_TEST_GAP_BITS_PER_DIM = 0.03
#: Section 4 (first paragraph): L_T = KL(q(x_T | x_0) || N(0, I)) is about 1e-5 bits per dimension.
PRIOR_TERM_BITS_PER_DIM_APPROX = 1e-5

#: Section 4 and Appendix B: the CIFAR-10 recipe as stated in the paper.
T = 1000
BETA_1 = 1e-4
BETA_T = 0.02
CIFAR10_PARAMS_MILLIONS = 35.7
LSUN_CELEBAHQ_PARAMS_MILLIONS = 114
TRAINING_STEPS = 800_000
BATCH_SIZE = 128
LEARNING_RATE = 2e-4
DROPOUT = 0.1
EMA_DECAY = 0.9999
#: Appendix B: TPU v3-8 ("similar to 8 V100 GPUs"): 21 steps/s at batch 128, 10.6 h to 800k steps;
#: sampling a batch of 256 images takes 17 s.
TPU_STEPS_PER_SECOND = 21
TPU_TRAINING_HOURS = 10.6
TPU_SAMPLE_BATCH = 256
TPU_SAMPLE_BATCH_SECONDS = 17

#: Table 4 (Appendix D): unconditional CIFAR-10 test-set rate-distortion values along the reverse
#: process. Columns: reverse-process time T - t + 1, rate (bits/dim), distortion (RMSE on [0, 255]).
TABLE4_RATE_DISTORTION = (
    (1000, 1.77581, 0.95136),
    (900, 0.11994, 12.02277),
    (800, 0.05415, 18.47482),
    (700, 0.02866, 24.43656),
    (600, 0.01507, 30.80948),
    (500, 0.00716, 38.03236),
    (400, 0.00282, 46.12765),
    (300, 0.00081, 54.18826),
    (200, 0.00013, 60.97170),
    (100, 0.00000, 67.60125),
)

#: Table 3 (Appendix D): FID on LSUN 256x256 for the paper's models (L_simple; "large" = 256M params).
TABLE3_LSUN_FID = {
    "Ours (L_simple)": {"LSUN Bedroom": 6.36, "LSUN Church": 7.89, "LSUN Cat": 19.75},
    "Ours (L_simple, large)": {"LSUN Bedroom": 4.90},
}
