"""Top-level shortcuts (`group_size=16`) are rewritten to their real keys before Hydra sees them.

Pure string tests of `aliases.rewrite`, plus a few compositions showing the real keys land in the
composed config. No torch, no training.
"""

from __future__ import annotations

import pytest

from aligntune import preflight
from aligntune.config import aliases, compose
from aligntune.errors import ConfigError

# shortcut -> real key, written out here (not read from aliases.SHORTCUTS) so a silent change fails.
PLAIN_SHORTCUTS = {
    "group_size": "algorithm.group_size",
    "beta": "algorithm.beta",
    "cliprange": "algorithm.cliprange",
    "temperature": "algorithm.temperature",
    "learning_rate": "train.learning_rate",
    "batch_size": "train.batch_size",
    "num_epochs": "train.num_epochs",
    "max_steps": "train.max_steps",
}
# Shortcuts that name a source: they select the preset whose YAML has that value, or `custom`.
SOURCE_SHORTCUTS = {"model_name": "model.name_or_path", "dataset_name": "dataset.name"}


def test_the_shortcut_table_is_the_documented_one():
    assert aliases.SHORTCUTS == {**PLAIN_SHORTCUTS, **SOURCE_SHORTCUTS}


@pytest.mark.parametrize("short,real", sorted(PLAIN_SHORTCUTS.items()))
def test_plain_shortcut_maps_to_its_real_key(short, real):
    assert aliases.rewrite([f"{short}=3"]) == ([f"{real}=3"], {real: short})


@pytest.mark.parametrize("override,expected", [
    ("model_name=aligntune:tiny", ["model=tiny"]),
    ("model_name=Qwen/Qwen3-0.6B", ["model=qwen3_0_6b"]),
    ("model_name='aligntune:tiny'", ["model=tiny"]),  # quotes do not defeat the preset lookup
    ("model_name=/models/mine", ["model=custom", "model.name_or_path=/models/mine"]),
    ("dataset_name=letters", ["dataset=letters"]),
    ("dataset_name=Anthropic/hh-rlhf", ["dataset=hh_rlhf"]),
    ("dataset_name=data/train.jsonl", ["dataset=custom", "dataset.name=data/train.jsonl"]),
])
def test_source_shortcut_selects_the_preset_or_custom(override, expected):
    out, used = aliases.rewrite([override])
    assert out == expected
    short = override.split("=", 1)[0]
    assert used == {SOURCE_SHORTCUTS[short]: short}


@pytest.mark.parametrize("override,expected", [
    ("group_size=4,8", "algorithm.group_size=4,8"),
    ("beta=0.0,0.01,0.1", "algorithm.beta=0.0,0.01,0.1"),
    ("beta=range(0,1)", "algorithm.beta=range(0,1)"),
    ("beta=range(0,1,step=0.5)", "algorithm.beta=range(0,1,step=0.5)"),
    ("group_size=choice(4,8)", "algorithm.group_size=choice(4,8)"),
    ("learning_rate=interval(1e-6,1e-4)", "train.learning_rate=interval(1e-6,1e-4)"),
    ("temperature=glob(*)", "algorithm.temperature=glob(*)"),
    # A sweep over sources cannot select one preset per value: it sets the key itself.
    ("model_name=aligntune:tiny,/models/mine", "model.name_or_path=aligntune:tiny,/models/mine"),
    ("dataset_name=choice(letters,prefs)", "dataset.name=choice(letters,prefs)"),
])
def test_sweep_syntax_is_kept(override, expected):
    assert aliases.rewrite([override])[0] == [expected]


@pytest.mark.parametrize("override,expected", [
    ("~group_size", "~algorithm.group_size"),
    ("~group_size=8", "~algorithm.group_size=8"),
    ("~model_name", "~model.name_or_path"),
    # `+` on a shortcut means plain assignment: the real key always exists in the schema.
    ("+group_size=4", "algorithm.group_size=4"),
    ("++beta=0.1", "algorithm.beta=0.1"),
    ("+model_name=x", "model.name_or_path=x"),
])
def test_prefixes(override, expected):
    assert aliases.rewrite([override])[0] == [expected]


@pytest.mark.parametrize("override", [
    "hydra.run.dir=somewhere",
    "hydra.job.chdir=true",
    "hydra/launcher=basic",
    "+hydra.searchpath=[file:///tmp]",
    "algorithm.group_size=4",
    "train.batch_size=3",
    "experiment=smoke",
    "seed=1",
    "group_size_extra=1",  # a longer key that starts with a shortcut's name
    "algorithm.beta=0.0,0.01",
    "+rewards.mine.fn=my_rewards.py:score",
    "+backend.trl_args.top_k=50",
    "~rewards.letter_match",
])
def test_other_overrides_are_left_alone(override):
    assert aliases.rewrite([override]) == ([override], {})


def test_order_and_mixture_are_preserved():
    out, used = aliases.rewrite(["experiment=smoke", "group_size=4", "hydra.run.dir=x", "train.max_steps=2", "beta=0"])
    assert out == ["experiment=smoke", "algorithm.group_size=4", "hydra.run.dir=x", "train.max_steps=2", "algorithm.beta=0"]
    assert used == {"algorithm.group_size": "group_size", "algorithm.beta": "beta"}


# --- composed: the real keys, never the shortcuts, end up in the config ---------------------------

COMPOSED = {  # shortcut override -> (real key, value in the RunConfig)
    "group_size=16": ("algorithm.group_size", 16),
    "beta=0.0": ("algorithm.beta", 0.0),
    "cliprange=0.3": ("algorithm.cliprange", 0.3),
    "temperature=1.0": ("algorithm.temperature", 1.0),
    "learning_rate=1e-5": ("train.learning_rate", 1e-5),
    "batch_size=3": ("train.batch_size", 3),
    "num_epochs=2": ("train.num_epochs", 2.0),
    "max_steps=7": ("train.max_steps", 7),
}


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part) if not isinstance(obj, dict) and hasattr(obj, part) else obj[part]
    return obj


def test_composed_config_has_the_real_keys():
    run, cfg = compose.load(list(COMPOSED))  # one composition for all plain shortcuts
    for override, (path, value) in COMPOSED.items():
        assert _get(run, path) == value, override
        assert _get(cfg, path) == value, override  # the DictConfig Hydra saves as config.yaml
        assert override.split("=")[0] not in cfg  # no stray top-level shortcut key


@pytest.mark.parametrize("override,name", [
    ("model_name=aligntune:tiny", "aligntune:tiny"),
    ("model_name=Qwen/Qwen3-0.6B", "Qwen/Qwen3-0.6B"),
    ("dataset_name=letters", "letters"),
])
def test_composed_source_shortcut(override, name):
    run, cfg = compose.load([override])
    path = SOURCE_SHORTCUTS[override.split("=")[0]]
    assert _get(run, path) == name
    assert override.split("=")[0] not in cfg


def test_group_size_16_lands_on_algorithm_group_size():
    run, cfg = preflight.load(["group_size=16"])
    assert run.algorithm.group_size == 16
    assert cfg.algorithm.group_size == 16 and "group_size" not in cfg


def test_dataset_name_of_a_file_selects_custom_without_preset_rewards(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "hi"}\n')
    run, _ = preflight.load([f"dataset_name={data}", "+rewards.letter_match.weight=1.0"])
    assert run.dataset.name == str(data)
    assert list(run.rewards) == ["letter_match"]  # only the one added: `custom` brings none


def test_shortcut_the_selected_algorithm_lacks_is_an_error_naming_the_shortcut():
    with pytest.raises(ConfigError) as err:
        compose.load(["algorithm=dpo", "group_size=4"])
    msg = str(err.value)
    assert "'group_size'" in msg and "algorithm.group_size" in msg and "grpo" in msg
