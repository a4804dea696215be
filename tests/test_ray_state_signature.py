"""The signature of Ray Tune's saved state (sah.tuning.state_seal) on plain folders: what
this installation signed passes; a file changed, added or removed, a symbolic link, a
signature list edited to match, or one made with another installation's key is refused by
``check_sealed`` with one line; ``--allow-pickle`` (the person's opt-in) skips the check."""

import json

import pytest

from sah.infra.checks import ConfigError
from sah.infra.pickle_opt_in import allow_pickle
from sah.tuning.state_seal import SEAL_FILE, SealCallback, check_sealed, seal


@pytest.fixture
def signed(tmp_path, monkeypatch):
    monkeypatch.setenv("SAH_CACHE_DIR", str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    exp = run_dir / "ray" / "exp"
    (exp / "trial_1").mkdir(parents=True)
    (exp / "tuner.pkl").write_bytes(b"state")
    (exp / "trial_1" / "params.pkl").write_bytes(b"params")
    seal(run_dir, "exp", str(exp))
    return run_dir, exp


def refused(run_dir, exp, *fragments):
    with pytest.raises(ConfigError) as info:
        check_sealed(run_dir, [("exp", str(exp))])
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{exp}: ")
    assert "--allow-pickle" in message and "--name" in message
    for fragment in fragments:
        assert fragment in message, message


def test_what_this_installation_signed_passes(signed):
    run_dir, exp = signed
    check_sealed(run_dir, [("exp", str(exp)), ("not-started", str(run_dir / "ray" / "none"))])


@pytest.mark.parametrize("change, fragment", [
    (lambda exp: (exp / "tuner.pkl").write_bytes(b"other"), "tuner.pkl changed"),
    (lambda exp: (exp / "trial_1" / "extra.pkl").write_bytes(b"x"), "extra.pkl was added"),
    (lambda exp: (exp / "trial_1" / "params.pkl").unlink(), "params.pkl was removed"),
    (lambda exp: (exp / "link.pkl").symlink_to(exp / "tuner.pkl"), "link.pkl is a symbolic link"),
])
def test_changed_folders_are_refused(signed, change, fragment):
    run_dir, exp = signed
    change(exp)
    refused(run_dir, exp, fragment)
    with allow_pickle():
        check_sealed(run_dir, [("exp", str(exp))])


def test_a_signature_list_edited_to_match_is_refused(signed):
    run_dir, exp = signed
    (exp / "tuner.pkl").write_bytes(b"evil")
    doc = json.loads((run_dir / SEAL_FILE).read_text())
    import hashlib
    doc["experiments"]["exp"]["files"]["tuner.pkl"] = hashlib.sha256(b"evil").hexdigest()
    (run_dir / SEAL_FILE).write_text(json.dumps(doc))
    refused(run_dir, exp, "not made by this installation")


def test_another_installation_and_no_signature_are_refused(signed, tmp_path, monkeypatch):
    run_dir, exp = signed
    monkeypatch.setenv("SAH_CACHE_DIR", str(tmp_path / "other-cache"))
    refused(run_dir, exp, "not made by this installation")
    (run_dir / SEAL_FILE).unlink()
    refused(run_dir, exp, f"no signature of this installation for it in {run_dir / SEAL_FILE}")


def test_the_callback_pickles_without_the_key_and_signs_new_files(signed, tmp_path):
    import pickle
    run_dir, exp = signed
    key = (tmp_path / "cache" / "keys" / "run-state.key").read_bytes()
    callback = SealCallback(run_dir, "exp", str(exp))
    callback.seal_now()
    data = pickle.dumps(callback)
    assert key not in data and key.hex().encode() not in data
    (exp / "trial_2").mkdir()
    (exp / "trial_2" / "result.json").write_text("{}")
    refused(run_dir, exp, "result.json was added")
    restored = pickle.loads(data)
    restored.on_experiment_end([])
    check_sealed(run_dir, [("exp", str(exp))])


def test_a_cache_folder_that_cannot_hold_the_key_is_refused_before_the_run(tmp_path, monkeypatch):
    import yaml

    from sah.recording import make_synthetic_recording, save_recording
    from sah.tuning.runner import RunOptions, run_study
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("SAH_CACHE_DIR", str(tmp_path / "a-file"))
    rec = tmp_path / "rec.safetensors"
    save_recording(make_synthetic_recording(num_layers=1, num_heads=2, num_kv_heads=1,
                                            head_dim=8, num_keys=32, num_queries=2, seed=0), rec)
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"name": "k", "recording": str(rec), "searcher": "random",
                                     "num_samples": 1, "chains": [{"name": "c", "maskers": [
                                         {"type": "LocalMaskerConfig", "window_size": 4}]}]}))
    with pytest.raises(ConfigError, match="cannot make or read this installation's key .*"
                                          "set SAH_CACHE_DIR"):
        run_study(RunOptions(config=str(study), results_dir=str(tmp_path / "results"),
                             progress=False))
    assert not (tmp_path / "results").exists()
