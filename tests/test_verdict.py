from tools.verdict import judge


def test_first_run_is_the_baseline():
    v = judge(objective=10.0, std=1.0, best=None, direction="minimize", sigmas=2)
    assert v.verdict == "baseline" and v.keep


def test_gain_beyond_the_noise_is_improved_and_within_is_inconclusive():
    best = {"id": 1, "objective": 10.0, "objective_std": 0.3}
    # sigma = sqrt(0.3^2 + 0.4^2) = 0.5; margin = 1.0
    assert judge(objective=8.9, std=0.4, best=best, direction="minimize", sigmas=2).verdict == "improved"
    v = judge(objective=9.5, std=0.4, best=best, direction="minimize", sigmas=2)
    assert v.verdict == "inconclusive" and not v.keep and "rerun" in v.reason
    assert abs(v.margin - 1.0) < 1e-9
    assert judge(objective=10.2, std=0.4, best=best, direction="minimize", sigmas=2).verdict == "not_improved"


def test_direction_maximize_flips_the_sign():
    best = {"id": 1, "objective": 0.5, "objective_std": 0.0}
    assert judge(objective=0.6, std=0.0, best=best, direction="maximize", sigmas=2).verdict == "improved"
    assert judge(objective=0.4, std=0.0, best=best, direction="maximize", sigmas=2).verdict == "not_improved"


def test_no_spread_means_any_strict_gain_counts():
    best = {"id": 1, "objective": 10.0, "objective_std": None}
    v = judge(objective=9.99, std=None, best=best, direction="minimize", sigmas=2)
    assert v.verdict == "improved" and "no spread" in v.reason
    assert judge(objective=10.0, std=None, best=best, direction="minimize", sigmas=2).verdict == "not_improved"
