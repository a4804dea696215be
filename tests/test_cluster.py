"""Scale-out: a real two-node Ray cluster on this machine (own ports, own temp dirs, token
auth), trial resources checked against the cluster before anything is written, and the
device a trial computes on (the placement logic, on CPU: no GPU is needed)."""

import math
import time

import pytest
import yaml

from cluster_support import clean_env, finish_all, run_cli, start_cli, two_node_cluster
from sah.tuning.cluster import check_trial_resources, pick_device, trial_request
from sah.tuning.runner import RunOptions, run_study
from sah.infra.checks import ConfigError
from tuning_support import read_csv, recording_fixture, write_study

STABLE = ("chain", "trial", "status", "SinkMaskerConfig_sink_size",
          "LocalMaskerConfig_window_size", "HashAttentionTopKMaskerConfig_heavy_size",
          "output_error", "density", "score", "aux_bits_per_token")


def write_scale_study(path, rec, pinned=False, **extra):
    """Write the study of two chains on ``rec`` to ``path``; ``pinned``: sink_local's trials
    on node_a, hat's on node_b."""
    sink_local = {"name": "sink_local", "maskers": [
        {"type": "SinkMaskerConfig", "sink_size": {"search": "randint", "low": 1, "high": 16}},
        {"type": "LocalMaskerConfig", "window_size": {"search": "uniform", "low": 0.02, "high": 0.3}}]}
    hat = {"name": "hat", "num_samples": 4, "maskers": [
        {"type": "HashAttentionTopKMaskerConfig",
         "heavy_size": {"search": "uniform", "low": 0.05, "high": 0.3}}]}
    if pinned:
        sink_local["resources_per_trial"] = {"custom_resources": {"node_a": 1}}
        hat["resources_per_trial"] = {"custom_resources": {"node_b": 1}}
    data = {"name": "scale", "recording": str(rec), "searcher": "random", "num_samples": 6,
            "seed": 3, "density_targets": [0.2], "configs_per_trial": 2,
            "fit_hash_attention": {"bits": 8, "steps": 3, "hat_mlp_layers": 1},
            "chains": [sink_local, hat], **extra}
    return write_study(path, data)


rec = recording_fixture(num_heads=4, num_kv_heads=2, head_dim=32, num_keys=256, num_queries=8,
                        seed=1)


# ---------------------------------------------------------------------- placement logic
def test_device_of_a_trial_from_ray_gpu_ids_and_visible_devices():
    assert pick_device(0, [], None, 0) == "cpu"
    # GPU fractions: four trials of gpu 0.25 on physical GPU 1; Ray sets CUDA_VISIBLE_DEVICES
    # to the assigned id in each worker, so all four compute on that GPU (cuda:0 there)
    assert [pick_device(0.25, ["1"], "1", 1) for _ in range(4)] == ["cuda:0"] * 4
    # CUDA_VISIBLE_DEVICES not narrowed by Ray: the id's position among the visible ones
    assert pick_device(0.5, ["2"], "0,1,2,3", 4) == "cuda:2"
    assert pick_device(1, ["GPU-b"], "GPU-a,GPU-b", 2) == "cuda:1"  # UUIDs
    assert pick_device(1, [3], None, 4) == "cuda:3"  # nothing visible set: the id is the index
    assert pick_device(2, ["0", "1"], "0,1", 2) == "cuda:0"  # several GPUs: the first one
    with pytest.raises(RuntimeError, match="assigned it none"):
        pick_device(0.25, [], "", 1)
    with pytest.raises(RuntimeError, match="not in CUDA_VISIBLE_DEVICES"):
        pick_device(1, ["3"], "0,1", 2)
    with pytest.raises(RuntimeError, match="torch sees 0 CUDA device"):
        pick_device(1, ["0"], "0", 0)  # a CPU build of torch on a GPU node: said, not hidden


def test_fitting_requests_against_nodes():
    one_gpu = [{"CPU": 8.0, "GPU": 1.0}]
    check_trial_resources(trial_request(1, 0.25, {}), one_gpu)  # a quarter of the GPU
    two = [{"CPU": 1.0, "node_a": 1.0}, {"CPU": 1.0, "node_b": 1.0}]
    check_trial_resources(trial_request(1, 0, {"node_b": 1}), two)
    cases = [
        (trial_request(1, 1, {}), [{"CPU": 2.0, "GPU": 0.0}], r"resources_per_trial.gpu: .* has no GPU"),
        (trial_request(1000, 0, {}), one_gpu, r"resources_per_trial.cpu: .*cpu 1000 .* has 8"),
        (trial_request(2, 0, {}), two, r"cpu 2 but the largest node .* has 1 \(2 nodes: cpu 2"),
        (trial_request(1, 0, {"tpu": 1}), two, r"custom_resources.tpu: .* no node .* 'tpu'"),
        (trial_request(1, 0, {"node_a": 1, "node_b": 1}), two, r"no single node .* together"),
        (trial_request(1, 2, {}), one_gpu, r"gpu: a trial asks for gpu 2 but the largest node"),
    ]
    for request, nodes, message in cases:
        with pytest.raises(ConfigError, match=message):
            check_trial_resources(request, nodes)


@pytest.fixture
def ray_with_one_logical_gpu():
    """A private local Ray that announces one GPU (Ray only counts it; nothing runs on it)."""
    import ray
    ray.init(address="local", num_cpus=2, num_gpus=1, object_store_memory=100 * 1024 * 1024,
             include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_gpu_fractions_share_one_gpu(ray_with_one_logical_gpu):
    """Four tasks of gpu 0.25 run at the same time on the one GPU; each is given its id and
    CUDA_VISIBLE_DEVICES, which pick_device maps to that GPU."""
    import os

    import ray

    @ray.remote(num_cpus=0)
    class Barrier:
        def __init__(self):
            self.count = 0

        def arrive(self):
            self.count += 1

        def arrived(self):
            return self.count

    @ray.remote(num_cpus=0, num_gpus=0.25)
    def placed(barrier):
        ray.get(barrier.arrive.remote())
        deadline = time.time() + 60
        while ray.get(barrier.arrived.remote()) < 4 and time.time() < deadline:
            time.sleep(0.05)  # all four hold their quarter at once
        return ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"), ray.get(barrier.arrived.remote())

    barrier = Barrier.remote()
    results = ray.get([placed.remote(barrier) for _ in range(4)], timeout=120)
    assert all(arrived == 4 for _, _, arrived in results)  # concurrent, not one after another
    assert [pick_device(0.25, ids, visible, 1) for ids, visible, _ in results] == ["cuda:0"] * 4
    from sah.tuning.ray_setup import cluster_nodes
    check_trial_resources(trial_request(1, 0.25, {}), cluster_nodes())
    with pytest.raises(ConfigError, match="gpu 2 but the largest node of the Ray cluster has 1"):
        check_trial_resources(trial_request(1, 2, {}), cluster_nodes())


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize("change, message", [
    ({"cpus_per_trial": 1000.0}, r"resources_per_trial.cpu: a trial asks for cpu 1000 but the largest node of this machine's local Ray has"),
    ({"gpus_per_trial": 1.0}, r"resources_per_trial.gpu: a trial asks for 1 GPU but this machine's local Ray has no GPU"),
    ({"cpus_per_trial": math.inf}, r"resources_per_trial.cpu: got inf; expected a finite number"),
    ({"cpus_per_trial": math.nan}, r"resources_per_trial.cpu: got nan; expected a finite number"),
    ({"gpus_per_trial": 1.5}, r"resources_per_trial.gpu: got 1.5; use a fraction <= 1"),
    ({"resources_per_trial": {"cpu": 1, "custom_resources": {"tpu": 1}}},
     r"custom_resources.tpu: a trial asks for tpu 1 but no node of this machine's local Ray"),
    ({"chain_resources": {"gpu": 0.5}}, r"chains\[1\].resources_per_trial.gpu: a trial asks"),
])
def test_impossible_resources_are_refused_before_anything_is_written(rec, tmp_path, change, message):
    import ray
    import torch
    if torch.cuda.is_available() and "gpu" in message:
        pytest.skip("this machine has a GPU")
    extra = {}
    if "resources_per_trial" in change:
        extra["resources_per_trial"] = change.pop("resources_per_trial")
    if "chain_resources" in change:
        path = write_scale_study(tmp_path / "s.yaml", rec)
        data = yaml.safe_load(path.read_text())
        data["chains"][1]["resources_per_trial"] = change.pop("chain_resources")
        path.write_text(yaml.safe_dump(data))
    else:
        path = write_scale_study(tmp_path / "s.yaml", rec, **extra)
    results = tmp_path / "results"
    with pytest.raises(ConfigError, match=message) as info:
        run_study(RunOptions(config=str(path), results_dir=str(results), progress=False, **change))
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    assert not results.exists()  # no run folder, nothing at all
    assert not ray.is_initialized()  # a local run is checked without starting Ray


def test_cli_refuses_impossible_resources_in_seconds(rec, tmp_path):
    study = write_scale_study(tmp_path / "s.yaml", rec)
    results = tmp_path / "results"
    for flag, value, reason in (("--cpus-per-trial", "inf", "finite"),
                                ("--cpus-per-trial", "1000", "largest node of this machine's local Ray")):
        started = time.time()
        out = run_cli(["tune", "--config", str(study), flag, value, "--results-dir",
                       str(results), "--quiet"], clean_env(), timeout=120)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, out.stderr
        assert lines[0].startswith("sah tune: error: ") and reason in lines[0]
        assert not results.exists()
        print(f"refused {flag} {value} in {time.time() - started:.1f} s (whole command)")


# ---------------------------------------------------------------------- two nodes
@pytest.mark.slow
def test_two_node_cluster_runs_a_study_like_one_node(rec, tmp_path):
    started = time.time()
    study = write_scale_study(tmp_path / "pinned.yaml", rec, pinned=True)
    single = write_scale_study(tmp_path / "single.yaml", rec)
    storage = tmp_path / "shared_storage"  # "every node can reach it": same machine here
    with two_node_cluster() as cluster:
        up = time.time() - started
        # a plain ray.init() elsewhere cannot find it: its address file is in its own temp dir
        from ray._private.services import canonicalize_bootstrap_address
        found = canonicalize_bootstrap_address(None)  # what ray.init() here would join
        assert found is None or found.rsplit(":", 1)[-1] != cluster.address.rsplit(":", 1)[-1]
        # three commands at once (each mostly waits on process and Ray start-up):
        # the study on the cluster; a local run that must not join the cluster although
        # RAY_ADDRESS and the token point at it; an impossible request against the cluster
        on_cluster = start_cli(["tune", "--config", str(study), "--address", cluster.address,
                                "--storage-path", str(storage), "--results-dir",
                                str(tmp_path / "cluster_runs"), "--quiet"], cluster.env)
        local = start_cli(["tune", "--config", str(single), "--results-dir",
                           str(tmp_path / "local_runs"), "--quiet"],
                          {**cluster.env, "RAY_ADDRESS": cluster.address})
        refused = start_cli(["tune", "--config", str(single), "--address", cluster.address,
                             "--cpus-per-trial", "2", "--results-dir", str(tmp_path / "refused"),
                             "--quiet"], cluster.env)
        outs = finish_all([on_cluster, local, refused])
        nodes = dict(cluster.nodes)
    for out in outs[:2]:
        assert out.returncode == 0, out.stdout + out.stderr
    run_dir = tmp_path / "cluster_runs" / "scale"
    local_dir = tmp_path / "local_runs" / "scale"
    # the impossible request was refused against the cluster's nodes, nothing written
    assert outs[2].returncode == 2, outs[2].stdout + outs[2].stderr
    assert "resources_per_trial.cpu: a trial asks for cpu 2 but the largest node of the " \
           f"Ray cluster at {cluster.address} has 1 (2 nodes" in outs[2].stderr
    assert not (tmp_path / "refused").exists()
    wall = time.time() - started

    rows = read_csv(run_dir / "trials.csv")
    assert len(rows) == 6 + 4 and all(r["status"] == "completed" for r in rows)
    # trials ran on both nodes, each chain on the node its custom resource pins it to
    assert {r["node_id"] for r in rows} == set(nodes)
    for r in rows:
        assert nodes[r["node_id"]] == ("node_a" if r["chain"] == "sink_local" else "node_b")
    # batched: the rows of one Ray trial share its node
    for trial_id in {r["trial_id"] for r in rows}:
        assert len({r["node_id"] for r in rows if r["trial_id"] == trial_id}) == 1

    # Ray Tune's state went to the storage path; every output stayed in the run folder
    stored = yaml.safe_load((run_dir / "run.yaml").read_text())["ray_storage"]
    assert stored.startswith(str(storage)) and (storage / stored.split("/")[-1] / "_batched").is_dir()
    assert not (run_dir / "ray").exists()
    for name in ("summary.md", "pareto.png", "pareto.json", "tuned/hat.yaml",
                 "tuned/hash_attention.safetensors", "resources/hat.json"):
        assert (run_dir / name).is_file(), name

    # the single-node run of the same seed gives the same figures and files
    local_rows = read_csv(local_dir / "trials.csv")
    assert not {r["node_id"] for r in local_rows} & set(nodes)  # its own Ray, not the cluster
    assert [[r[k] for k in STABLE] for r in rows] == [[r[k] for k in STABLE] for r in local_rows]
    for name in ("pareto.json", "pareto.png", "tuned/sink_local.yaml", "tuned/hat.yaml",
                 "tuned/hat.density_0.2.yaml", "tuned/hash_attention.safetensors",
                 "resources/sink_local.json", "resources/hat.json"):
        assert (run_dir / name).read_bytes() == (local_dir / name).read_bytes(), name
    table = [ln for ln in (run_dir / "summary.md").read_text().splitlines() if ln.startswith("|")]
    assert table == [ln for ln in (local_dir / "summary.md").read_text().splitlines()
                     if ln.startswith("|")]
    print(f"two-node test: cluster up in {up:.1f} s, {wall:.1f} s in all")
