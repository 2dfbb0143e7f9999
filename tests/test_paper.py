"""The quoted numbers of ddpm_ref.paper are internally consistent with each other and with the recipe."""

import math

from ddpm_ref import paper


def test_table1_ours_rows_agree_with_table2_and_section_4_3():
    ours = [r for r in paper.TABLE1 if r.ours]
    assert [r.fid for r in ours] == [13.51, 3.17]
    t2 = {r.objective: r for r in paper.TABLE2 if r.target == "eps"}
    assert t2["L, fixed isotropic Sigma"].fid == ours[0].fid
    assert t2["||eps - eps_theta||^2 (L_simple)"].inception_score == ours[1].inception_score
    # Section 4.3: rate + distortion = the L_simple model's test NLL bound (3.75), to rounding
    assert math.isclose(paper.RATE_BITS_PER_DIM + paper.DISTORTION_BITS_PER_DIM, ours[1].nll_test, abs_tol=0.005)
    # and Table 4's first row is the same rate and RMSE, unrounded
    assert round(paper.TABLE4_RATE_DISTORTION[0][1], 2) == paper.RATE_BITS_PER_DIM
    assert round(paper.TABLE4_RATE_DISTORTION[0][2], 2) == paper.DISTORTION_RMSE_0_255
    # train/test gap "at most 0.03"
    assert all(r.nll_test - r.nll_train <= paper.TRAIN_TEST_GAP_BITS_PER_DIM + 1e-12 for r in ours)


def test_training_time_is_consistent():
    hours = paper.TRAINING_STEPS / paper.TPU_STEPS_PER_SECOND / 3600
    assert math.isclose(hours, paper.TPU_TRAINING_HOURS, abs_tol=0.05)
