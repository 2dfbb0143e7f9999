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


# ------------------------------------------------------------------------------------------------
# The registry of equations and claims behind the book's "Equation ledger" page.
#
# A notebook cell joins the ledger through its tags (cell metadata "tags"):
#   * one kind tag:  "derivation"        where the result is derived (markdown or code cell);
#                    "check-symbolic"    a SymPy identity whose two sides are computed independently;
#                    "check-numerical"   Monte Carlo / quadrature / exact arithmetic against ddpm_ref;
#                    "check-independent" agreement with an independent implementation (diffusers, ...);
#   * one or more entry tags, each a key of LEDGER below ("eq-4", "alg-2", "claim-langevin", ...).
# A check-* cell must be a code cell that asserts (tests/test_ledger.py). Every entry needs at least
# one symbolic and one numerical check, and a derivation.
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LedgerEntry:
    """One row of the equation ledger: a numbered equation, an algorithm or a claim."""

    key: str  #: the cell tag naming it, e.g. "eq-4"
    label: str  #: how the source names it, e.g. "eq. 4", "Algorithm 1", "Section 3.2"
    title: str  #: what it states, in words (inline TeX between $...$, rendered by the ledger page)
    source: str = "ho2020denoising"  #: BibTeX key (book/references.bib) of the paper that states it
    #: regular expression matched against ddpm_ref docstrings to name the implementing functions;
    #: for the paper's own equations it is derived from the label ("eq. N", "Algorithm N")
    cites: str | None = None


def _eq(n: int, title: str) -> LedgerEntry:
    return LedgerEntry(f"eq-{n}", f"eq. {n}", title)


_LEDGER_ENTRIES = (
    _eq(1, r"the reverse process $p_\theta(x_{0:T})$: a Markov chain of Gaussians from $p(x_T) = \mathcal{N}(0, I)$"),
    _eq(2, r"the forward process $q(x_{1:T} \mid x_0)$: Gaussian steps with variances $\beta_t$"),
    _eq(3, r"the variational bound on the negative log-likelihood"),
    _eq(4, r"$q(x_t \mid x_0) = \mathcal{N}(\sqrt{\bar\alpha_t}\, x_0, (1 - \bar\alpha_t) I)$ in closed form"),
    _eq(5, r"the bound as $L_T + \sum_{t>1} L_{t-1} + L_0$ (KL divergences between Gaussians)"),
    _eq(6, r"the forward-process posterior $q(x_{t-1} \mid x_t, x_0) = \mathcal{N}(\tilde\mu_t, \tilde\beta_t I)$"),
    _eq(7, r"the posterior mean $\tilde\mu_t(x_t, x_0)$ and variance $\tilde\beta_t$"),
    _eq(8, r"$L_{t-1} = \mathbb{E}\,\|\tilde\mu_t - \mu_\theta\|^2 / (2\sigma_t^2) + C$"),
    _eq(9, r"$L_{t-1}$ with $x_t$ reparameterised as $x_t(x_0, \epsilon)$"),
    _eq(10, r"$L_{t-1}$ with $\tilde\mu_t$ written through $x_t$ and $\epsilon$"),
    _eq(11, r"$\mu_\theta(x_t, t) = \big(x_t - \beta_t \epsilon_\theta(x_t, t) / \sqrt{1 - \bar\alpha_t}\big)"
            r" / \sqrt{\alpha_t}$"),
    _eq(12, r"$L_{t-1} - C$ as a weighted $\epsilon$-prediction (denoising score matching) error"),
    _eq(13, r"the discretised Gaussian decoder $p_\theta(x_0 \mid x_1)$"),
    _eq(14, r"$L_\mathrm{simple}$: the unweighted $\epsilon$-prediction error"),
    _eq(15, r"the estimate $\hat x_0 = (x_t - \sqrt{1 - \bar\alpha_t}\, \epsilon_\theta) / \sqrt{\bar\alpha_t}$"),
    _eq(16, r"the bound as $D_\mathrm{KL}(q(x_T) \,\|\, p(x_T)) + \sum_t \mathbb{E}\,"
            r" D_\mathrm{KL}(q(x_{t-1} \mid x_t) \,\|\, p_\theta(x_{t-1} \mid x_t)) + H(x_0)$"),
    _eq(17, r"Appendix A: the bound as $\mathbb{E}_q[-\log p_\theta(x_{0:T}) / q(x_{1:T} \mid x_0)]$"),
    _eq(18, r"Appendix A: the log of the factorised ratio as a sum over steps"),
    _eq(19, r"Appendix A: the $t = 1$ term split off"),
    _eq(20, r"Appendix A: forward steps reversed with Bayes' rule through $q(x_{t-1} \mid x_t, x_0)$"),
    _eq(21, r"Appendix A: the marginal ratios telescope"),
    _eq(22, r"Appendix A: the bound as expectations of KL divergences (eq. 5)"),
    _eq(23, r"Appendix A: the bound written with the forward steps $q(x_t \mid x_{t-1})$"),
    _eq(24, r"Appendix A: the forward steps reversed with the marginals $q(x_{t-1})$, $q(x_t)$"),
    _eq(25, r"Appendix A: the telescoped marginals and the entropy of the data"),
    _eq(26, r"Appendix A: the bound as KL terms of the true reverse steps plus $H(x_0)$ (eq. 16)"),
    LedgerEntry("alg-1", "Algorithm 1",
                r"training: gradient steps on $\|\epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t} x_0"
                r" + \sqrt{1 - \bar\alpha_t}\, \epsilon, t)\|^2$"),
    LedgerEntry("alg-2", "Algorithm 2",
                r"sampling: $x_T \sim \mathcal{N}(0, I)$, then $x_{t-1} = \mu_\theta(x_t, t) + \sigma_t z$"),
    LedgerEntry("alg-3", "Algorithm 3", r"sending $x_0$: transmit $x_T$, then each $x_{t-1}$ given $x_t$, then $x_0$"),
    LedgerEntry("alg-4", "Algorithm 4", r"receiving: decode $x_T$, the $x_{t-1}$ in turn, then $x_0$"),
    LedgerEntry("claim-variance-choices", "Section 3.2",
                r"$\sigma_t^2 = \beta_t$ is optimal for $x_0 \sim \mathcal{N}(0, I)$, $\sigma_t^2 = \tilde\beta_t$ for"
                r" $x_0$ deterministic"),
    LedgerEntry("claim-langevin", "Section 3.2",
                r"sampling with eq. 11 resembles Langevin dynamics with $\epsilon_\theta$ as a learned gradient of the"
                r" data density"),
    LedgerEntry("claim-t1-decoder", "Section 3.3",
                r"the $t = 1$ term of $L_\mathrm{simple}$ approximates $L_0$ (the discrete decoder's NLL)"),
    LedgerEntry("claim-rate-distortion", "Section 4.3",
                r"rate $L_1 + \dots + L_T$ and distortion $L_0$; the rate-distortion curve along the reverse process"),
    LedgerEntry("claim-small-beta-gaussian", "Section 2",
                r"for small $\beta_t$ the reverse step $q(x_{t-1} \mid x_t)$ is Gaussian to first order (Feller)",
                cites=r"Feller|[Ss]mall[- ]β|small beta"),
    # ---- past the paper (issue 11): results the book derives because it uses them
    LedgerEntry("ext-ddim-marginals", "DDIM Lemma 1",
                r"the non-Markovian family $q_\sigma(x_{1:T} \mid x_0)$ has the marginals of eq. 4 for every $\sigma$",
                "song2021denoising", r"DDIM[^.]{0,40}Lemma 1|Lemma 1 of DDIM"),
    LedgerEntry("ext-ddim-step", "DDIM eq. 12",
                r"the generative step with $\eta$, through $\hat x_0$ and $\epsilon_\theta$",
                "song2021denoising", r"DDIM[^.]{0,40}eq\. ?12"),
    LedgerEntry("ext-ddim-objective", "DDIM Theorem 1",
                r"$J_\sigma = L_\gamma + C$: one $\epsilon$-network serves every $\sigma$ ($\eta$)",
                "song2021denoising", r"DDIM[^.]{0,40}Theorem 1"),
    LedgerEntry("ext-snr-bound", "VDM eq. 13",
                r"$L_{t-1} = \tfrac12 (\mathrm{SNR}(t-1) - \mathrm{SNR}(t))\, \mathbb{E}\|x_0 - \hat x_0\|^2$ per"
                r" dimension",
                "kingma2021variational", r"SNR\(t ?- ?1\) ?- ?SNR\(t\)|Kingma et al\.[^.]{0,40}eq\."),
    LedgerEntry("ext-continuous-bound", "VDM eq. 17-18",
                r"the continuous-time bound depends on the schedule only through the SNR at the endpoints",
                "kingma2021variational", r"continuous-time bound|endpoints? of the SNR"),
    LedgerEntry("ext-vp-sde", "Song et al. 2021 eq. 11",
                r"the forward chain tends to the variance-preserving SDE"
                r" $\mathrm{d}x = -\tfrac12 \beta(t) x\, \mathrm{d}t + \sqrt{\beta(t)}\, \mathrm{d}w$",
                "song2021score", r"VP[- ]SDE|variance-preserving SDE"),
    LedgerEntry("ext-reverse-sde", "Song et al. 2021 eq. 6, 13",
                r"the reverse-time SDE and the probability-flow ODE share the forward marginals",
                "song2021score", r"probability[- ]flow|reverse-time SDE"),
    LedgerEntry("ext-ode-likelihood", "Song et al. 2021 eq. 39",
                r"exact log-likelihood through the instantaneous change of variables",
                "song2021score", r"change of variables|Hutchinson"),
)

#: The ledger's rows, by tag. tests/test_ledger.py checks every notebook tag against it.
LEDGER: dict[str, LedgerEntry] = {e.key: e for e in _LEDGER_ENTRIES}

#: The kinds of ledger cell, as cell tags.
LEDGER_KINDS = ("derivation", "check-symbolic", "check-numerical", "check-independent")
