"""The shared job set-up: λ-free sweep objectives, per-rank seeds and RNG state, the one split."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from orpo.collate import PreferenceCollator
from orpo.config import replace_values
from orpo.data import TokenizeSpec, tokenize_records
from orpo.engine import TorchEngine
from orpo.job import seed_for_training
from orpo.objective import GlobalCounts, batch_counts, micro_batch_loss
from orpo.synthetic import make_preference_records
from orpo.trainer import TrainState, restore_checkpoint, save_checkpoint
from pipelines.config import OBJECTIVE_MODES, Config


def test_every_sweep_objective_ties_for_the_same_model_under_two_lambdas(tiny_model_dir, tiny_tokenizer):
    """A sweep over λ compares models trained with different λ, so its objective must score the
    same model the same whatever λ the trial used. ``eval/loss`` (NLL + λ·L_OR) does not: with λ
    from 0.25 to 2 the same model's loss grows, so grid and ASHA would always pick the smallest λ."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    examples = tokenize_records(make_preference_records(8, seed=4), tiny_tokenizer, TokenizeSpec(256, 128)).examples
    batch = PreferenceCollator(tiny_tokenizer.pad_token_id)(examples)
    scores = {}
    for lam in (0.25, 2.0):
        loss_cfg = replace_values(Config(), {"loss.lam": lam}).loss
        pairs, tokens = batch_counts(batch, loss_cfg).tolist()
        with torch.no_grad():
            _, metrics, _ = micro_batch_loss(model, batch, loss_cfg, GlobalCounts(pairs, tokens), world_size=1)
        scores[lam] = {name: float(value) for name, value in metrics.items()}
    for objective in OBJECTIVE_MODES:
        if objective.startswith("eval/"):
            name = objective.removeprefix("eval/")
            assert scores[0.25][name] == pytest.approx(scores[2.0][name], abs=1e-6), objective
    assert scores[2.0]["loss"] > scores[0.25]["loss"] + 0.1  # why eval/loss is not an objective
    assert "eval/loss" not in OBJECTIVE_MODES and "eval/rewards/margins" not in OBJECTIVE_MODES


def test_ranks_draw_different_dropout_masks_and_resume_their_own():
    """Every rank used to seed alike, and under ZeRO <= 2 only rank 0's RNG state was saved, so
    after a resume all ranks drew identical dropout masks. Each rank now seeds apart and saves
    and restores its own state."""
    cfg = Config()
    draws = {}
    for rank in (0, 1):
        seed_for_training(cfg, rank)
        draws[rank] = torch.rand(8)
    assert not torch.equal(draws[0], draws[1])


class _Ctx:
    def __init__(self, rank: int, checkpoint_dir: Path):
        self.rank, self.world_size, self.device = rank, 2, torch.device("cpu")
        self.checkpoint_dir, self.restore_dir = checkpoint_dir, None


def test_checkpoint_keeps_each_ranks_rng_state(tmp_path):
    model = torch.nn.Linear(2, 2)
    engine = TorchEngine(model, Config().optim, total_steps=4)
    expected = {}
    for rank in (0, 1):  # both ranks write into the same checkpoint, as Ray merges them
        seed_for_training(Config(), rank)
        directory = save_checkpoint(_Ctx(rank, tmp_path), engine, TrainState(step=2))
        expected[rank] = torch.rand(4)
    for rank in (1, 0):
        torch.manual_seed(123)  # anything: the restore must bring back this rank's own stream
        state = restore_checkpoint(_Ctx(rank, tmp_path), engine, directory)
        assert state.step == 2
        assert torch.equal(torch.rand(4), expected[rank]), rank
    with pytest.raises(FileNotFoundError, match="no RNG state for rank 2"):
        restore_checkpoint(_Ctx(2, tmp_path), engine, directory)


def test_a_second_run_into_the_same_directory_refuses(tmp_path):
    """Two runs in one directory used to overwrite each other's manifest; the second now refuses."""
    from pipelines.run import run_dir_lock

    with run_dir_lock(tmp_path):
        with pytest.raises(RuntimeError, match="is in use by another run \\(pid"):
            with run_dir_lock(tmp_path):
                pass
    with run_dir_lock(tmp_path):  # released with the first run
        pass


@pytest.mark.parametrize("target", ["/", "..", "../other", "train/../../escape", "."])
def test_deletions_stay_inside_the_run_directory(tmp_path, target):
    from pipelines.run import _inside

    run_dir = (tmp_path / "run").resolve()
    run_dir.mkdir()
    with pytest.raises(ValueError, match="not inside the run directory"):
        _inside(run_dir, run_dir / target)
    assert _inside(run_dir, run_dir / "train" / "orpo") == run_dir / "train" / "orpo"


def test_a_rerun_with_other_settings_into_the_same_directory_refuses(tmp_path):
    """Ray Train restores a run's checkpoints by name and storage path: a rerun with new
    hyperparameters into the same directory used to resume the old run silently."""
    from orpo.config import to_dict
    from orpo.job import claim_output_dir

    cfg = Config()
    claim_output_dir(to_dict(cfg), tmp_path)
    claim_output_dir(to_dict(replace_values(cfg, {"checkpoint.max_failures": 5})), tmp_path)  # same run
    with pytest.raises(ValueError, match=r"other settings \(loss.lam, optim.lr changed\)"):
        claim_output_dir(to_dict(replace_values(cfg, {"loss.lam": 0.5, "optim.lr": 1e-4})), tmp_path)
    with pytest.raises(ValueError, match="checkpoint.resume_from changed"):
        claim_output_dir(to_dict(replace_values(cfg, {"checkpoint.resume_from": "x"})), tmp_path)


def test_a_job_that_would_starve_ray_data_fails_fast_naming_the_numbers():
    """`ray job submit` of configs/tiny_cpu.yaml to a head with 2 CPUs used to hang forever: the two
    workers took both CPUs and Ray Data's read tasks waited behind them with no error."""
    from orpo.config import load_config
    from pipelines.train import check_placement

    cfg = load_config(Config, "configs/tiny_cpu.yaml")
    with pytest.raises(RuntimeError, match=r"has 2 CPUs and the 2 training workers take 2 .* need 1"):
        check_placement(cfg, {"CPU": 2.0})
    check_placement(cfg, {"CPU": 4.0})  # the embedded default: room for the data tasks
    check_placement(cfg, {"CPU": 1.0})  # workers do not fit yet: an autoscaler adds nodes, Ray Train waits
    check_placement(replace_values(cfg, {"scaling.resources_per_worker": {"CPU": 0.5}}), {"CPU": 2.0})
    check_placement(replace_values(cfg, {"scaling.check_placement": False}), {"CPU": 2.0})


def test_a_changed_sweep_does_not_resume_the_old_one(tmp_path):
    """`Tuner.restore` keeps the search space it started with; a sweep dir claimed by one search
    refuses another."""
    from orpo.config import to_dict
    from orpo.job import claim_output_dir

    cfg = Config()
    claim_output_dir(to_dict(cfg), tmp_path, extra_keys=("sweep",))
    changed = replace_values(cfg, {"sweep.space": {"loss.lam": {"grid": [0.5, 1.0]}}})
    with pytest.raises(ValueError, match="sweep.space.loss.lam.grid changed"):
        claim_output_dir(to_dict(changed), tmp_path, extra_keys=("sweep",))


def test_a_resumed_run_rechecks_its_input_files(tmp_path):
    """`pipelines.run` recorded the input hashes once and never rechecked them: a resumed run
    silently mixed stages made from the old data with stages made from the new."""
    import json

    from pipelines.run import Manifest

    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    cfg = replace_values(Config(), {"data.source": str(data), "output_dir": str(tmp_path / "run")})
    (tmp_path / "run").mkdir()
    Manifest(tmp_path / "run", cfg)
    Manifest(tmp_path / "run", cfg)  # unchanged: resumes
    data.write_text(data.read_text() + json.dumps({"prompt": "q", "chosen": "c", "rejected": "d"}) + "\n")
    with pytest.raises(ValueError, match=f"other input data \\({data}"):
        Manifest(tmp_path / "run", cfg)
