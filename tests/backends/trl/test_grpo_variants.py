"""The GRPO family as presets (dr_grpo, dapo, gspo) and RLOO: each maps to exactly the engine settings
its paper requires, dynamic sampling filters/refills/bounds as DAPO describes, and every preset trains
on the tiny model through the CLI.

The expected settings below are written from the papers, not read from the YAML presets, so a preset
that drifts from its paper fails here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import changed_params, read_jsonl

from aligntune import cli, preflight
from aligntune.backends.trl import dynamic_sampling as ds
from aligntune.backends.trl.grpo import grpo_args, overlong_reward, small_step_warning, to_grpo_config
from aligntune.backends.trl.rloo import MAPPED_FIELDS as RLOO_MAPPED
from aligntune.backends.trl.rloo import rloo_args, to_rloo_config
from aligntune.config import compose, schema
from aligntune.errors import ConfigError

OUT = "/nonexistent/aligntune-test-output"  # the mapping functions never touch it
HUB_MODEL = "model=qwen3_0_6b"  # a model without a tiny recipe: the preset's own values, no budget overrides


def preset(name: str, *overrides: str) -> schema.RunConfig:
    run, _ = compose.load([f"algorithm={name}", "dataset=letters", HUB_MODEL, *overrides])
    return run


def engine_settings(run: schema.RunConfig) -> dict:
    """What the engine will do for `run`: the algorithm-defining GRPOConfig arguments, plus the two
    techniques aligntune adds on top of TRL (dynamic sampling, overlong punishment)."""
    args = grpo_args(run, OUT)
    algo = run.algorithm
    keys = ("num_generations", "beta", "use_bias_correction_kl", "epsilon", "epsilon_high", "temperature", "top_p",
            "loss_type", "scale_rewards", "importance_sampling_level", "num_iterations", "mask_truncated_completions")
    settings = {k: args[k] for k in keys}
    settings["mini_batches_per_rollout"] = args["steps_per_generation"] // args["gradient_accumulation_steps"]
    settings["dynamic_sampling"] = algo.dynamic_sampling
    settings["dynamic_sampling_rounds"] = algo.dynamic_sampling_max_retries + 1 if algo.dynamic_sampling else None
    settings["overlong_fraction"] = (algo.overlong_buffer / algo.max_completion_length
                                     if algo.overlong_buffer is not None else None)
    settings["overlong_penalty"] = algo.overlong_penalty if algo.overlong_buffer is not None else None
    settings["rewards"] = len(args["reward_weights"])
    return settings


GRPO_PAPER = dict(  # Shao et al. 2024 (DeepSeekMath) with the seed's values
    num_generations=8, beta=0.01, use_bias_correction_kl=False, epsilon=0.2, epsilon_high=None, temperature=0.7,
    top_p=1.0, loss_type="grpo", scale_rewards="group", importance_sampling_level="token", num_iterations=1,
    mask_truncated_completions=False, mini_batches_per_rollout=1, dynamic_sampling=False,
    dynamic_sampling_rounds=None, overlong_fraction=None, overlong_penalty=None, rewards=1)
PAPERS = {
    "grpo": GRPO_PAPER,
    # Liu et al. 2025: no length normalisation (constant normaliser), no std scaling; released recipe beta 0, T 1.
    "dr_grpo": {**GRPO_PAPER, "loss_type": "dr_grpo", "scale_rewards": "none", "beta": 0.0, "temperature": 1.0},
    # Yu et al. 2025: clip-higher 0.2/0.28, token-level loss, no KL, 16 samples, 16 updates per rollout,
    # dynamic sampling (recipe: 10 generation rounds), soft overlong punishment (4096 of 20480 tokens) down to -1
    # against +-1 correctness, i.e. half the reward range: 0.5 for aligntune's 0/1 correctness.
    "dapo": {**GRPO_PAPER, "num_generations": 16, "beta": 0.0, "epsilon": 0.2, "epsilon_high": 0.28, "temperature": 1.0,
             "loss_type": "dapo", "mini_batches_per_rollout": 16, "dynamic_sampling": True,
             "dynamic_sampling_rounds": 10, "overlong_fraction": pytest.approx(4096 / 20480, abs=0.005),
             "overlong_penalty": 0.5, "rewards": 2},
    # Zheng et al. 2025: sequence-level ratio, epsilons 3e-4/4e-4, no KL, 4 mini-batches per rollout.
    "gspo": {**GRPO_PAPER, "importance_sampling_level": "sequence", "epsilon": 3e-4, "epsilon_high": 4e-4, "beta": 0.0,
             "mini_batches_per_rollout": 4},
}


# --- presets map to their papers' settings -------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PAPERS))
def test_preset_maps_to_exactly_the_papers_settings(name):
    run = preset(name)
    assert type(run.algorithm) is schema.GRPOAlgorithmConfig and run.algorithm.name == "grpo"  # same engine mapping
    assert run.algorithm.variant == name  # the composed config records the chosen preset
    assert engine_settings(run) == PAPERS[name]


@pytest.mark.parametrize("name", ["dr_grpo", "dapo", "gspo"])
def test_presets_build_a_real_grpo_config(name):
    config = to_grpo_config(preset(name), OUT)
    run = preset(name)
    assert config.generation_batch_size == run.train.batch_size * run.algorithm.group_size  # one rollout
    assert config.steps_per_generation == run.algorithm.num_mini_batches * config.gradient_accumulation_steps
    assert (config.loss_type, config.epsilon, config.beta) == (run.algorithm.loss_type, run.algorithm.cliprange, 0.0)


@pytest.mark.parametrize("name", ["dr_grpo", "dapo", "gspo"])
def test_the_tiny_recipe_changes_only_the_budget(name):
    on_tiny, _ = compose.load([f"algorithm={name}", "model=tiny"])  # tuning/tiny_<name>.yaml
    expected = dict(PAPERS[name])
    if name == "dapo":  # the buffer scales with the tiny model's 12-token completions: 2 tokens, the paper's fifth
        assert on_tiny.algorithm.max_completion_length == 12 and on_tiny.algorithm.overlong_buffer == 2
        expected["overlong_fraction"] = pytest.approx(2 / 12)
    assert engine_settings(on_tiny) == expected
    tiny_grpo, _ = compose.load(["algorithm=grpo", "model=tiny"])
    assert on_tiny.train == tiny_grpo.train  # tiny_grpo's batch, learning rate and steps


def test_overriding_a_preset_keeps_the_record_and_changes_the_engine():
    run = preset("dapo", "algorithm.dynamic_sampling=false", "algorithm.overlong_buffer=null", "beta=0.04")
    settings = engine_settings(run)
    assert run.algorithm.variant == "dapo"
    assert (settings["dynamic_sampling"], settings["overlong_fraction"], settings["beta"]) == (False, None, 0.04)


def test_plain_grpo_composes_its_own_variant_from_the_knobs():
    run, _ = compose.load(["algorithm.loss_type=dapo", "algorithm.cliprange_high=0.28", "algorithm.dynamic_sampling=true",
                           "algorithm.scale_rewards=none", "algorithm.importance_sampling_level=sequence",
                           "algorithm.num_mini_batches=2", "algorithm.kl_estimator=k3_is", "algorithm.overlong_buffer=4",
                           "algorithm.overlong_penalty=0.5", "algorithm.mask_truncated_completions=true"])
    s = engine_settings(run)
    assert run.algorithm.variant == "grpo"
    assert (s["loss_type"], s["epsilon_high"], s["dynamic_sampling"], s["scale_rewards"]) == ("dapo", 0.28, True, "none")
    assert (s["importance_sampling_level"], s["mini_batches_per_rollout"], s["use_bias_correction_kl"]) == ("sequence", 2, True)
    assert (s["overlong_penalty"], s["rewards"], s["mask_truncated_completions"]) == (0.5, 2, True)


@pytest.mark.parametrize("overrides,needle", [
    (["algorithm.overlong_buffer=300"], "algorithm.overlong_buffer=300"),  # beyond max_completion_length=256
    (["algorithm.overlong_buffer=0"], "algorithm.overlong_buffer=0"),
    (["algorithm.overlong_buffer=8", "algorithm.overlong_penalty=0"], "algorithm.overlong_penalty"),
    (["algorithm.dynamic_sampling_max_retries=-1"], "algorithm.dynamic_sampling_max_retries=-1"),
    (["algorithm.kl_estimator=k2"], "algorithm.kl_estimator='k2'"),
    (["algorithm.num_mini_batches=0"], "algorithm.num_mini_batches=0"),
    (["algorithm.num_mini_batches=3"], "does not divide the 16 completions of one rollout"),  # 2 prompts x 8
    (["algorithm.num_mini_batches=2", "train.micro_batch_size=16"], "algorithm.num_mini_batches=2"),
    (["algorithm.variant= "], "algorithm.variant is empty"),
])
def test_invalid_variant_knobs_are_refused_naming_the_key(overrides, needle):
    with pytest.raises(ConfigError) as err:
        compose.load([HUB_MODEL, *overrides])
    assert needle in str(err.value)


def test_mini_batches_split_one_rollout_into_steps():
    run = preset("grpo", "batch_size=4", "algorithm.num_mini_batches=4", "train.micro_batch_size=4")
    args = grpo_args(run, OUT)
    assert args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] == 8  # 32 completions / 4 steps
    assert args["steps_per_generation"] == 4 * args["gradient_accumulation_steps"]


def test_steps_of_few_completions_are_warned_about_with_the_numbers_and_the_fix():
    # DAPO at the seed's batch_size=2: 2 prompts x 16 / 16 mini-batches = 2 completions per optimizer step.
    text = small_step_warning(preset("dapo"))
    assert text == ("one optimizer step holds only 2 completions (train.batch_size=2 prompts x algorithm.group_size=16 "
                    "/ algorithm.num_mini_batches=16): num_mini_batches counts optimizer steps per rollout, not "
                    "completions per step, so each step's gradient rests on 2 samples (DAPO's recipe: 512 prompts x 16 "
                    "/ 16 = 512 completions per step). Raise train.batch_size to 16 or more, or lower "
                    "algorithm.num_mini_batches to 2 (16 completions per step).")
    # GSPO: 4 x 8 / 4 = 8; 6 prompts would make 12, so 8 prompts (16) is the next that fits; 1 mini-batch gives 32.
    assert "holds only 8 completions" in small_step_warning(preset("gspo", "batch_size=4"))
    assert "batch_size to 8 or more, or lower algorithm.num_mini_batches to 2 (16 completions" in small_step_warning(
        preset("gspo", "batch_size=4"))
    # A rollout under 16 completions in all: the fix is one step per rollout (still 8).
    assert small_step_warning(preset("grpo", "group_size=4", "algorithm.num_mini_batches=2")).endswith(
        "Raise train.batch_size to 8 or more, or lower algorithm.num_mini_batches to 1 (8 completions per step).")
    assert "algorithm.group_size=4" in small_step_warning(preset("rloo", "algorithm.num_mini_batches=2"))
    assert small_step_warning(preset("dapo", "batch_size=16")) is None  # 16 per step
    assert small_step_warning(preset("grpo")) is None  # one step per rollout: the rollout is the step
    assert small_step_warning(preset("grpo", "batch_size=1", "group_size=2")) is None


# --- the overlong punishment ---------------------------------------------------------------------------

def test_overlong_reward_is_dapos_soft_punishment_at_the_generation_limit():
    algo = schema.GRPOAlgorithmConfig(max_completion_length=12, overlong_buffer=4, overlong_penalty=1.0)
    reward = overlong_reward(algo)
    lengths = [1, 8, 9, 10, 11, 12]  # 0 up to 12 - 4 = 8 tokens, then linear to -1 at 12
    scores = reward(completions=["x"] * len(lengths), completion_ids=[[7] * n for n in lengths])
    assert scores == pytest.approx([0.0, 0.0, -0.25, -0.5, -0.75, -1.0])
    half = overlong_reward(dataclasses.replace(algo, overlong_penalty=0.5))
    assert half(completions=["x"], completion_ids=[[7] * 12]) == pytest.approx([-0.5])
    assert reward.__name__ == "overlong"  # TRL logs it as rewards/overlong/mean


def test_under_the_dapo_preset_a_right_answer_at_the_length_limit_beats_a_short_wrong_one():
    """DAPO's ramp ends at -1 against +-1 correctness; aligntune's correctness is 0/1, so with a penalty of 1 a right
    answer cut at the limit would score 0, the same as a short wrong one. Real arith rows, the preset's rewards."""
    from aligntune.data import loading
    from aligntune.rewards.registry import bind

    run, _ = compose.load(["algorithm=dapo", "dataset=arith", HUB_MODEL])
    algo = run.algorithm
    rows = loading.load(run.dataset, run.seed, "prompts")[0].select(range(2))
    answers = [row["answer"] for row in rows]
    assert list(run.rewards) == ["correctness"] and algo.overlong_buffer is not None
    rewards = {name: bind(name, spec.fn or name, spec.args) for name, spec in run.rewards.items()}

    def total(penalty, completions, lengths, answer):
        kwargs = {"completions": completions, "completion_ids": [[7] * n for n in lengths], "answer": answer}
        scored = sum(run.rewards[name].weight * torch.tensor(fn(**kwargs), dtype=torch.float64)
                     for name, fn in rewards.items())
        punish = overlong_reward(dataclasses.replace(algo, overlong_penalty=penalty))(**kwargs)
        return (scored + torch.tensor(punish, dtype=torch.float64)).tolist()

    limit, short = algo.max_completion_length, 5
    for answer in answers:
        right, wrong = f"The answer is {answer}.", f"The answer is {int(answer) + 1}."
        cases = [right, wrong, right, wrong], [limit, short, short, limit], [answer] * 4
        long_right, short_wrong, short_right, long_wrong = total(algo.overlong_penalty, *cases)
        assert (long_right, short_wrong, short_right, long_wrong) == pytest.approx((0.5, 0.0, 1.0, -0.5))
        assert long_right > short_wrong and short_right > long_right and long_wrong < short_wrong
        assert total(1.0, *cases)[:2] == pytest.approx([0.0, 0.0])  # the paper's 1 on a 0/1 reward: a tie


def test_overlong_reward_may_not_be_configured_twice():
    with pytest.raises(ConfigError, match="count twice"):
        grpo_args(preset("dapo", "+rewards.len.fn=overlong", "+rewards.len.args.max_length=256",
                         "+rewards.len.args.cache=51"), OUT)


# --- RLOO: the one mapping to trl.RLOOConfig, key by key -------------------------------------------------

def rloo_run(**algorithm) -> schema.RunConfig:
    return schema.RunConfig(model=schema.ModelConfig(name_or_path="aligntune:tiny", dtype="fp32"),
                            dataset=schema.DatasetConfig(name="letters"), algorithm=schema.RLOOAlgorithmConfig(**algorithm),
                            train=schema.TrainConfig(batch_size=2), rewards={"letter_match": {"weight": 1.0}}, device="cpu")


def test_rloo_preset_maps_to_the_papers_settings():
    run = preset("rloo")
    args = rloo_args(run, OUT)
    # Ahmadian et al. 2024: k samples (k = 4), leave-one-out baseline, KL in the reward, plain REINFORCE:
    # one optimizer step per rollout and no reuse, so the PPO ratio TRL clips is 1 (up to rounding).
    expected = dict(num_generations=4, beta=0.05, epsilon=0.2, epsilon_high=None, temperature=1.0, top_p=1.0,
                    num_iterations=1, normalize_advantages=False, reward_clip_range=None, mask_truncated_completions=False)
    assert {k: args[k] for k in expected} == expected
    assert args["steps_per_generation"] == args["gradient_accumulation_steps"]  # on-policy
    assert type(run.algorithm) is schema.RLOOAlgorithmConfig and run.algorithm.name == "rloo"


@pytest.mark.parametrize("field,value,trl_key,expected", [
    ("group_size", 8, "num_generations", 8),
    ("beta", 0.0, "beta", 0.0),
    ("cliprange", 0.3, "epsilon", 0.3),
    ("cliprange_high", 0.28, "epsilon_high", 0.28),
    ("temperature", 0.7, "temperature", 0.7),
    ("top_p", 0.9, "top_p", 0.9),
    ("max_completion_length", 32, "max_completion_length", 32),
    ("num_iterations", 2, "num_iterations", 2),
    ("normalize_advantages", True, "normalize_advantages", True),
    ("reward_clip", 5.0, "reward_clip_range", (-5.0, 5.0)),
    ("mask_truncated_completions", True, "mask_truncated_completions", True),
])
def test_rloo_algorithm_key(field, value, trl_key, expected):
    assert rloo_args(rloo_run(**{field: value}), OUT)[trl_key] == expected


def test_rloo_every_field_reaches_rlooconfig():
    """No silent no-op keys: every RLOO field changes rloo_args (name selects the engine)."""
    variations = {"group_size": 8, "beta": 0.0, "cliprange": 0.3, "cliprange_high": 0.3, "temperature": 0.7, "top_p": 0.9,
                  "max_completion_length": 32, "num_iterations": 2, "num_mini_batches": 2, "normalize_advantages": True,
                  "reward_clip": 1.0, "mask_truncated_completions": True}
    fields = {f.name for f in dataclasses.fields(schema.RLOOAlgorithmConfig)}
    assert fields == set(variations) | {"name"}, "an RLOO field was added or removed: add it to the variations"
    base = rloo_args(rloo_run(), OUT)
    for name, value in variations.items():
        changed = rloo_args(rloo_run(**{name: value}), OUT)
        key = RLOO_MAPPED[f"algorithm.{name}"]
        assert changed[key] != base[key], f"algorithm.{name} did not change RLOOConfig.{key}"


@pytest.mark.parametrize("batch,group,minis,micro,per_device,accumulation,steps_per_generation", [
    (2, 4, 1, None, 8, 1, 1),
    (2, 4, 1, 2, 2, 4, 4),
    (4, 4, 2, 4, 4, 2, 4),
    (4, 4, 4, None, 4, 1, 4),
])
def test_rloo_batch_arithmetic(batch, group, minis, micro, per_device, accumulation, steps_per_generation):
    run = dataclasses.replace(rloo_run(group_size=group, num_mini_batches=minis),
                              train=schema.TrainConfig(batch_size=batch, micro_batch_size=micro))
    args = rloo_args(run, OUT)
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"],
            args["steps_per_generation"]) == (per_device, accumulation, steps_per_generation)
    config = to_rloo_config(run, OUT)
    assert config.generation_batch_size == batch * group  # one rollout: batch prompts x group completions


def test_rloo_trl_args_pass_through_but_not_for_mapped_fields():
    run = dataclasses.replace(rloo_run(), backend=schema.BackendConfig(trl_args={"top_k": 5}))
    assert rloo_args(run, OUT)["top_k"] == 5
    for field in set(RLOO_MAPPED.values()) | {"steps_per_generation", "learning_rate"}:
        run = dataclasses.replace(rloo_run(), backend=schema.BackendConfig(trl_args={field: 1}))
        with pytest.raises(ConfigError, match="already maps"):
            rloo_args(run, OUT)


def test_rloo_refuses_other_algorithms_and_grpo_refuses_rloo():
    with pytest.raises(TypeError):
        rloo_args(preset("dapo"), OUT)
    with pytest.raises(TypeError):
        grpo_args(preset("rloo"), OUT)


def test_rloo_takes_the_grpo_shortcuts_and_needs_a_reward():
    run = preset("rloo", "group_size=2", "beta=0.0", "cliprange=0.1", "temperature=0.9")
    assert (run.algorithm.group_size, run.algorithm.beta, run.algorithm.cliprange, run.algorithm.temperature) == (2, 0.0, 0.1, 0.9)
    with pytest.raises(ConfigError, match="RLOO needs at least one reward"):
        preflight.check_rewards_configured(preset("rloo", "~rewards.letter_match"))


# --- dynamic sampling: the pure algorithm ----------------------------------------------------------------

def scripted(rounds: list[list[list[float]]]):
    """A draw(n) that returns the next scripted round (checking it was asked for that many groups)."""
    asked: list[int] = []

    def draw(n):
        asked.append(n)
        script = rounds[len(asked) - 1]
        assert len(script) == n, f"round {len(asked) - 1}: asked for {n} groups, script has {len(script)}"
        return script

    return draw, asked


SAME, DIFF = [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]


@pytest.mark.parametrize("rewards,expected", [
    ([1.0, 1.0, 1.0, 1.0], False),
    ([0.0, 0.0, 1.0, 0.0], True),
    ([0.5, 0.5 + 1e-9], False),  # within ATOL: equal
    ([0.5, 0.5 + 1e-3], True),
    ([math.nan, 1.0, 1.0], False),  # unscorable completions do not count
    ([math.nan, 0.0, 1.0], True),
    ([math.nan, 1.0], False),  # one scored completion: its advantage is 0
    ([math.nan, math.nan], False),
])
def test_informative(rewards, expected):
    assert ds.informative(rewards) is expected


def test_all_equal_groups_are_removed_and_the_batch_refilled():
    draw, asked = scripted([[SAME, DIFF, SAME, DIFF], [DIFF, SAME], [DIFF]])
    r = ds.fill_rollout(draw, groups=4, max_retries=5)
    assert asked == [4, 2, 1]  # each refill asks for exactly the groups still missing
    assert r.picks == ((0, 1), (0, 3), (1, 0), (2, 0))  # only informative groups, in the order found
    assert (r.kept, r.filtered, r.retries, r.padded, r.sampled) == (4, 3, 2, 0, 7)
    assert r.metrics() == {"dynamic_sampling/filtered_groups": 3, "dynamic_sampling/retries": 2,
                           "dynamic_sampling/padded_groups": 0, "dynamic_sampling/sampled_groups": 7}


def test_a_full_first_round_needs_no_retry():
    draw, asked = scripted([[DIFF, DIFF]])
    r = ds.fill_rollout(draw, groups=2, max_retries=3)
    assert asked == [2] and r.picks == ((0, 0), (0, 1)) and (r.retries, r.filtered, r.padded) == (0, 0, 0)


def test_the_retry_bound_holds_and_the_shortfall_is_padded_with_dropped_groups():
    draw, asked = scripted([[SAME, DIFF, SAME], [SAME, SAME], [DIFF, SAME]])
    r = ds.fill_rollout(draw, groups=3, max_retries=2)
    assert asked == [3, 2, 2]  # 1 + max_retries rounds, never more
    assert r.retries == 2 and r.kept == 2 and r.filtered == 5 and r.sampled == 7
    assert r.picks == ((0, 1), (2, 0), (0, 0))  # kept first, then the first dropped group as padding
    assert r.padding == ((0, 0),) and r.padded == 1
    assert len(r.picks) == 3  # the rollout keeps its size


def test_nothing_informative_pads_the_whole_rollout():
    draw, asked = scripted([[SAME, SAME]] + [[SAME, SAME]] * 3)
    r = ds.fill_rollout(draw, groups=2, max_retries=3)
    assert asked == [2, 2, 2, 2] and r.kept == 0 and r.padded == 2 and r.filtered == 8
    assert r.picks == r.padding == ((0, 0), (0, 1))


def test_zero_retries_means_one_round():
    draw, asked = scripted([[SAME, DIFF]])
    r = ds.fill_rollout(draw, groups=2, max_retries=0)
    assert asked == [2] and r.retries == 0 and r.picks == ((0, 1), (0, 0)) and r.padded == 1


def test_a_draw_that_returns_the_wrong_count_is_an_error():
    with pytest.raises(ValueError, match="returned 1 groups"):
        ds.fill_rollout(lambda n: [DIFF], groups=2, max_retries=1)


def test_metrics_are_per_rollout_means_over_the_logging_window():
    a = ds.Rollout(picks=(), kept=2, padded=0, filtered=1, retries=1, sampled=3)
    b = ds.Rollout(picks=(), kept=1, padded=1, filtered=3, retries=2, sampled=4)
    assert ds.mean_metrics([a, b]) == {"dynamic_sampling/filtered_groups": 2.0, "dynamic_sampling/retries": 1.5,
                                       "dynamic_sampling/padded_groups": 0.5, "dynamic_sampling/sampled_groups": 3.5}
    assert ds.mean_metrics([]) == {}


def test_prompt_stream_cycles_through_every_row_in_a_seeded_order():
    stream = ds.PromptStream(5, seed=3)
    first, second = stream.take(5), stream.take(5)
    assert sorted(first) == sorted(second) == [0, 1, 2, 3, 4]
    assert ds.PromptStream(5, seed=3).take(7) == first + second[:2]


# --- dynamic sampling: merging the rounds' tensors ------------------------------------------------------

def _round(prompt_width: int, completion_width: int, groups: int, size: int, start: float) -> dict:
    rows = groups * size
    prompt_ids = torch.arange(rows * prompt_width).view(rows, prompt_width) + 100
    completion_ids = torch.arange(rows * completion_width).view(rows, completion_width) + 500
    return {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids),
            "completion_ids": completion_ids, "completion_mask": torch.ones_like(completion_ids),
            "old_per_token_logps": torch.full((rows, completion_width), -1.0),
            "advantages": torch.arange(rows, dtype=torch.float32) + start, "num_items_in_batch": torch.tensor(999)}


def test_select_groups_repads_prompts_left_and_completions_right_and_makes_padding_inert():
    rounds = [_round(3, 4, groups=2, size=2, start=1.0), _round(5, 2, groups=1, size=2, start=10.0)]
    batch = ds.select_groups(rounds, picks=[(1, 0), (0, 1), (0, 0)], group_size=2, pad_token_id=0, inert=[(0, 0)])
    assert batch["prompt_ids"].shape == (6, 5) and batch["completion_ids"].shape == (6, 4)
    # Round 1's rows are widest on the prompt side: unchanged. Round 0's prompts get 2 pad columns on the left.
    assert torch.equal(batch["prompt_ids"][:2], rounds[1]["prompt_ids"])
    assert torch.equal(batch["prompt_ids"][2:4, 2:], rounds[0]["prompt_ids"][2:4])
    assert batch["prompt_ids"][2:, :2].eq(0).all() and batch["prompt_mask"][2:, :2].eq(0).all()
    # Round 1's completions are narrower: 2 pad columns on the right, masked, log-probs 0.
    assert torch.equal(batch["completion_ids"][:2, :2], rounds[1]["completion_ids"])
    assert batch["completion_mask"][:2, 2:].eq(0).all() and batch["old_per_token_logps"][:2, 2:].eq(0).all()
    assert torch.equal(batch["completion_ids"][2:4], rounds[0]["completion_ids"][2:4])
    # The padding group (round 0, group 0) is inert: no advantage, no loss tokens.
    assert batch["advantages"].tolist() == [10.0, 11.0, 3.0, 4.0, 0.0, 0.0]
    assert batch["completion_mask"][4:].eq(0).all()
    assert int(batch["num_items_in_batch"]) == 2 * 2 + 2 * 4  # recomputed: round 1's 2x2 + round 0's kept 2x4 tokens


def test_select_groups_refuses_outputs_it_cannot_merge():
    rounds = [{**_round(3, 4, groups=1, size=2, start=0.0), "pixel_values": torch.zeros(2, 3)}]
    with pytest.raises(ConfigError, match="pixel_values"):
        ds.select_groups(rounds, picks=[(0, 0)], group_size=2, pad_token_id=0)


# --- dynamic sampling: inert padding does not dilute the loss ------------------------------------------

KEPT_GROUPS, INERT_GROUPS, GROUP = 3, 1, 2  # 6 kept rows and 2 inert ones: undiluted, 0.75 of the gradient


@pytest.fixture(scope="module")
def ds_trainer(tmp_path_factory):
    """A DynamicSamplingGRPOTrainer on the tiny model in fp32 (numbers compared below), with a KL term so the
    check covers more than the advantage-weighted part of the loss."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig

    from aligntune.models import tiny

    path = tiny.resolve("aligntune:tiny")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    args = GRPOConfig(output_dir=str(tmp_path_factory.mktemp("ds")), per_device_train_batch_size=GROUP,
                      num_generations=GROUP, max_completion_length=6, beta=0.04, epsilon=0.2, bf16=False, fp16=False,
                      use_cpu=True, report_to=[], logging_steps=1)
    trainer = ds.DynamicSamplingGRPOTrainer(
        model=model, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)], args=args,
        train_dataset=Dataset.from_list([{"prompt": "a"}] * 4), processing_class=AutoTokenizer.from_pretrained(path),
        max_retries=0)
    trainer.model.train()
    return trainer


def _rollout(trainer, seed: int = 0) -> dict:
    """One generation round's outputs (prompts, completions of varied lengths, advantages, old and reference
    log-probabilities off the policy's, so ratios clip and the KL is not zero), for KEPT + INERT groups."""
    g = torch.Generator().manual_seed(seed)
    rows = (KEPT_GROUPS + INERT_GROUPS) * GROUP
    vocab = trainer.model.config.vocab_size
    completion_mask = (torch.arange(6).expand(rows, 6) < torch.randint(2, 7, (rows, 1), generator=g)).long()
    return {"prompt_ids": torch.randint(4, vocab, (rows, 5), generator=g), "prompt_mask": torch.ones(rows, 5).long(),
            "completion_ids": torch.randint(4, vocab, (rows, 6), generator=g), "completion_mask": completion_mask,
            "old_per_token_logps": -4.5 + 0.3 * torch.randn(rows, 6, generator=g),
            "ref_per_token_logps": -4.5 + 0.3 * torch.randn(rows, 6, generator=g),
            "advantages": torch.randn(rows, generator=g), "num_items_in_batch": torch.tensor(0)}


def _step_gradient(trainer, batch: dict, micro_batches: int) -> torch.Tensor:
    """The gradient one optimizer step takes from `batch`, fed as TRL feeds a rollout: shuffled, split into
    `micro_batches` accumulation steps (one mini-batch per rollout)."""
    from trl.trainer.utils import shuffle_sequence_dict, split_tensor_dict

    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = trainer.args.steps_per_generation = micro_batches
    torch.manual_seed(0)
    for chunk in split_tensor_dict(shuffle_sequence_dict(batch), micro_batches):
        trainer._compute_loss(trainer.model, chunk).backward()
    return torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])


@pytest.mark.parametrize("micro_batches", [1, 2])
@pytest.mark.parametrize("loss_type", ["grpo", "sapo", "dr_grpo", "dapo", "cispo", "bnpo"])
def test_inert_padding_leaves_the_kept_rows_gradient_unchanged(ds_trainer, loss_type, micro_batches):
    """A padded rollout (3 kept groups + 1 inert) gives the gradient of the same kept groups alone. grpo, sapo and
    dr_grpo count rows, so without the fix the padded gradient is 6/8 of it; dapo and cispo (rollout token count)
    and bnpo (micro-batch token count) never counted inert rows. bnpo with 2 micro-batches is left out: its
    per-micro-batch token mean depends on how rows fall into micro-batches even without padding.
    Tolerance: fp32, every element within 1e-5 of the gradient's largest entry. The two sides differ only in
    summation order (the batch's row count changes BLAS blocking, accumulation adds two micro-batches): measured
    at most 2e-7 of the largest entry here; the dilution this catches is 25% of every entry."""
    if loss_type == "bnpo" and micro_batches == 2:
        pytest.skip("bnpo normalises per micro-batch: not partition-invariant, padding or not")
    ds_trainer.loss_type = loss_type
    ds_trainer.epsilon_high = 0.28 if loss_type == "cispo" else 0.2  # cispo caps its ratios at epsilon_high
    rounds = [_rollout(ds_trainer)]
    groups = [(0, i) for i in range(KEPT_GROUPS + INERT_GROUPS)]
    kept, inert = groups[:KEPT_GROUPS], groups[KEPT_GROUPS:]
    pad = ds_trainer.processing_class.pad_token_id
    padded = ds.select_groups(rounds, groups, GROUP, pad, inert=inert)
    assert float(padded[ds.KEPT_FRACTION]) == pytest.approx(KEPT_GROUPS / (KEPT_GROUPS + INERT_GROUPS))
    alone = ds.select_groups(rounds, kept, GROUP, pad)
    expected = _step_gradient(ds_trainer, alone, 1)
    got = _step_gradient(ds_trainer, padded, micro_batches)
    assert expected.abs().max() > 1e-4  # a real gradient
    ratio = float(got.norm() / expected.norm())
    worst = float((got - expected).abs().max() / expected.abs().max())
    assert worst <= 1e-5, f"padded/kept-only gradient norm ratio {ratio:.4f} (worst entry off by {worst:.2g})"


def test_dynamic_sampling_refuses_an_entropy_bonus_it_would_rescale(workdir, capsys):
    code = cli.main(["train", "model=tiny", "dataset=letters", "algorithm.dynamic_sampling=true",
                     "+backend.trl_args.entropy_coef=0.01", "max_steps=1", f"hydra.run.dir={workdir / 'run'}"])
    assert code == 2
    assert "entropy_coef" in capsys.readouterr().err
    assert json.loads((workdir / "run" / "summary.json").read_text())["status"] == "failed"


# --- real tiny runs through the CLI ---------------------------------------------------------------------

def train(workdir: Path, *overrides: str, steps: int = 2) -> tuple[list[dict], dict, Path]:
    run_dir = workdir / "run"
    assert cli.main(["train", "model=tiny", "dataset=letters", *overrides, f"max_steps={steps}",
                     f"hydra.run.dir={run_dir}"]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == steps
    return read_jsonl(run_dir / "metrics.jsonl"), yaml.safe_load((run_dir / "config.yaml").read_text()), run_dir


def test_dr_grpo_trains(workdir):
    metrics, config, run_dir = train(workdir, "algorithm=dr_grpo")
    algo = config["algorithm"]
    assert (algo["variant"], algo["loss_type"], algo["scale_rewards"], algo["beta"]) == ("dr_grpo", "dr_grpo", "none", 0.0)
    assert all("kl" not in m for m in metrics)  # beta 0: no KL term, no reference model
    assert all(isinstance(m["reward"], float) and isinstance(m["loss"], float) for m in metrics)
    assert changed_params(run_dir / "model")


def test_dapo_trains_with_dynamic_sampling_and_overlong_punishment(workdir):
    metrics, config, run_dir = train(workdir, "algorithm=dapo")
    assert config["algorithm"]["variant"] == "dapo" and config["algorithm"]["dynamic_sampling"] is True
    first = metrics[0]  # one rollout of 4 prompts x 16 feeds 16 steps; it is generated at step 1
    assert first["dynamic_sampling/sampled_groups"] >= 4 and first["dynamic_sampling/padded_groups"] == 0
    assert first["dynamic_sampling/sampled_groups"] == 4 + first["dynamic_sampling/filtered_groups"]
    assert first["rewards/overlong/mean"] <= 0 and "rewards/letter_match/mean" in first
    assert "clip_ratio/high_mean" in first and all("kl" not in m for m in metrics)
    assert "dynamic_sampling/sampled_groups" not in metrics[1]  # step 2 reuses the rollout: no sampling
    assert changed_params(run_dir / "model")
    # 4 prompts x 16 / 16 mini-batches: 4 completions per step, warned once (train.log has it, with the fix)
    assert (run_dir / "train.log").read_text().count("one optimizer step holds only 4 completions") == 1


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])  # bf16: forced on every CPU kind (emulated where not native)
def test_dynamic_sampling_bound_pads_with_inert_groups_end_to_end(workdir, dtype):
    """Every group scores the same, so every round is dropped: the bound stops refilling after 2 retries,
    the rollout is padded, counted, and (all rows inert, no KL) the step leaves the weights untouched: in bf16 too,
    where the saved weights are the fp32 masters, which start from the weights as loaded (not their bf16 rounding)."""
    (workdir / "const.py").write_text("def constant(completions, **kwargs):\n    return [1.0] * len(completions)\n")
    metrics, _, run_dir = train(workdir, "algorithm=dapo", "~rewards.letter_match", "+rewards.const.fn=const.py:constant",
                                "algorithm.overlong_buffer=null", "algorithm.dynamic_sampling_max_retries=2",
                                "group_size=4", "batch_size=2", "algorithm.num_mini_batches=1", f"model.dtype={dtype}",
                                steps=1)
    first = metrics[0]
    assert first["dynamic_sampling/retries"] == 2  # the bound
    assert first["dynamic_sampling/filtered_groups"] == 2 + 2 + 2 and first["dynamic_sampling/sampled_groups"] == 6
    assert first["dynamic_sampling/padded_groups"] == 2  # the whole rollout
    assert first["grad_norm"] == 0.0
    assert changed_params(run_dir / "model") == []


def test_gspo_trains_off_policy_with_sequence_clipping(workdir):
    metrics, config, run_dir = train(workdir, "algorithm=gspo")
    assert config["algorithm"]["importance_sampling_level"] == "sequence" and config["algorithm"]["variant"] == "gspo"
    step1, step2 = metrics
    assert "reward" in step1 and "reward" not in step2  # one rollout feeds 4 steps: step 2 reuses it
    assert step1["clip_ratio/region_mean"] == 0.0  # the first mini-batch is on-policy: every ratio is 1
    assert step2["clip_ratio/region_mean"] > 0.0  # after one update, sequence ratios leave [1 - 3e-4, 1 + 4e-4]
    assert changed_params(run_dir / "model")


def test_rloo_trains(workdir):
    from aligntune.core.registry import BACKENDS

    assert BACKENDS["trl"].algorithms.get("rloo") == "aligntune.backends.trl.rloo:build", "the registry lacks rloo"
    metrics, config, run_dir = train(workdir, "algorithm=rloo")
    assert config["algorithm"]["name"] == "rloo" and config["algorithm"]["group_size"] == 4
    assert all(isinstance(m["kl"], float) and isinstance(m["reward"], float) for m in metrics)  # KL in the reward
    assert changed_params(run_dir / "model")
