"""aligntune/patches.py: every private TRL/transformers symbol aligntune patches or reads still exists on the
installed versions with the signature it was written against. A failure here means an upgrade changed one: update
aligntune/patches.py (and its users) before trusting a run."""

from __future__ import annotations

import importlib
import inspect

import pytest

from aligntune import patches


def _resolve(target: str):
    module, _, qualname = target.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split(".")[:-1]:
        obj = getattr(obj, part)
    return obj, qualname.rsplit(".", 1)[-1]


@pytest.mark.parametrize("target", sorted(patches.PRIVATE))
def test_each_private_symbol_is_there_as_patched(target):
    owner, name = _resolve(target)
    expected = patches.PRIVATE[target]
    if expected is None:  # an instance attribute the class's __init__ sets
        assert name in inspect.getsource(owner), f"{target} is gone: update aligntune/patches.py"
        return
    symbol = getattr(owner, name, None)
    assert callable(symbol), f"{target} is gone: update aligntune/patches.py"
    params = tuple(inspect.signature(symbol).parameters)
    assert params == expected, f"{target} changed its signature to {params}: update aligntune/patches.py"


def test_timed_methods_exist_on_the_installed_trl():
    import trl

    for cls, methods in patches.TIMED_METHODS.items():
        for name, _ in methods:
            assert callable(getattr(getattr(trl, cls), name, None)), f"trl.{cls}.{name} is gone: update aligntune/patches.py"


def test_the_guard_passes_the_installed_versions_and_refuses_others(monkeypatch):
    for package in patches.TESTED:
        assert patches.guard(package)
    patches.guard.cache_clear()
    monkeypatch.setattr(patches.importlib.metadata, "version", lambda name: "2.1.0")
    try:
        with pytest.raises(patches.UntestedVersion, match=r"trl 2.1.0 is installed.*1.16 up to \(not including\) 2.0"):
            patches.guard("trl")
    finally:
        patches.guard.cache_clear()


def test_output_dir_is_overridden_only_inside(tmp_path):
    class Trainer:
        def _get_output_dir(self, trial=None):
            return "class"

    trainer = Trainer()
    with patches.output_dir(trainer, tmp_path):
        assert trainer._get_output_dir() == str(tmp_path)
    assert trainer._get_output_dir() == "class"


def test_set_token_count_keeps_the_counter_type_and_skips_trainers_without_one():
    class Counting:
        _total_train_tokens = 0

    trainer = Counting()
    assert patches.set_token_count(trainer, 12.0) and trainer._total_train_tokens == 12
    assert isinstance(trainer._total_train_tokens, int)
    assert not patches.set_token_count(object(), 5)
