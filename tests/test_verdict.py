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
    best = {"id": 1, "objective": 0.5, "objective_std": 0.01}
    assert judge(objective=0.6, std=0.01, best=best, direction="maximize", sigmas=2).verdict == "improved"
    assert judge(objective=0.4, std=0.01, best=best, direction="maximize", sigmas=2).verdict == "not_improved"


def test_no_noise_estimate_means_a_gain_is_inconclusive_with_the_fix():
    """One fold, one seed, no reruns: the noise is unknown, so no gain counts as progress."""
    best = {"id": 7, "objective": 10.0, "objective_std": None}
    v = judge(objective=6.0, std=None, best=best, direction="minimize", sigmas=2)
    assert v.verdict == "inconclusive" and not v.keep and "no noise estimate" in v.reason
    assert "rerun_experiment(7, seeds=2)" in v.reason
    assert judge(objective=10.0, std=None, best=best, direction="minimize", sigmas=2).verdict == "not_improved"
    assert judge(objective=10.0, std=0.0, best={**best, "objective_std": 0.0}, direction="minimize",
                 sigmas=2).verdict == "not_improved"


def test_a_run_stopped_by_time_is_incomparable():
    from tools.verdict import stop_note
    assert stop_note(12, 300, "time") == "stopped by time at step 12/300"
    assert stop_note(300, 300, "steps") is None
    assert stop_note(120, 300, "steps") == "stopped by steps at step 120/300"  # fewer steps than its budget
