"""The progress bars of a run: what the person sees while trials finish."""

import re


def test_progress_bar_shows_the_current_best(capsys):
    """The bar's best score is set with the update that brings it (never a stale best), and
    a finished chain's bar is drawn at once with its final best (real Ray Trial objects
    drive the callback)."""
    from ray.tune.experiment import Trial

    from sah.tuning.progress import TrialProgress

    def finished(score):
        trial = Trial("__fake", config={"chain": "a"}, stub=True)
        trial.run_metadata.last_result = {"score": score, "complete": True}
        return trial

    progress = TrialProgress({"a": 2})
    progress.setup()
    progress.on_trial_complete(0, [], finished(0.5))
    progress.on_trial_complete(1, [], finished(0.2))
    shown = capsys.readouterr().err  # before close(): what the person sees now
    frames = [f for f in re.split(r"[\r\n]", shown) if "2/2" in f]
    assert frames and "best_score=0.2" in frames[-1], shown
    progress.close()
