"""`aligntune vllm-serve`: the command it builds (checked with TRL's own parser and command builder), what it
serves for a run directory, and its refusals (no vllm on this machine)."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys

import pytest

from aligntune import cli
from aligntune.errors import ConfigError
from aligntune.vllm_serve import command, served_model


def _model_dir(path, kind="config.json"):
    path.mkdir(parents=True)
    (path / kind).write_text(json.dumps({"model_type": "llama"}))
    return path


def test_the_command_is_trls_and_its_parser_takes_it(tmp_path):
    from trl.scripts.vllm_serve import build_command, make_parser

    cmd = command("/models/m", ["--port", "8001", "--tensor_parallel_size", "2", "--max-num-seqs", "64"])
    assert cmd[:5] == [sys.executable, "-m", "trl.cli.main", "vllm-serve", "--model"]
    args, extra = make_parser(prog="trl vllm-serve").parse_args_and_config(args=cmd[4:], return_remaining_strings=True)
    assert (args.model, args.port, args.tensor_parallel_size, extra) == ("/models/m", 8001, 2, ["--max-num-seqs", "64"])
    served = build_command(args, extra)  # what TRL then runs: vLLM's own server, our model and options
    assert served[served.index("serve") + 1] == "/models/m" and served[-2:] == ["--max-num-seqs", "64"]


def test_a_run_directory_resolves_to_its_full_weights(tmp_path):
    full = tmp_path / "full"
    _model_dir(full / "model")
    assert served_model(full) == full / "model" and served_model(full / "model") == full / "model"
    lora = tmp_path / "lora"
    _model_dir(lora / "model", "adapter_config.json")
    with pytest.raises(ConfigError, match="saved a LoRA adapter.*model.lora.save_merged=true"):
        served_model(lora)
    _model_dir(lora / "model_merged")
    assert served_model(lora) == lora / "model_merged" and served_model(lora / "model") == lora / "model_merged"
    with pytest.raises(ConfigError, match="holds no model to serve"):
        served_model(_model_dir(tmp_path / "empty", "notes.txt"))


def test_dry_run_prints_the_command_for_a_run_and_a_preset(tmp_path, capsys):
    run = tmp_path / "run"
    _model_dir(run / "model")
    assert cli.main(["vllm-serve", f"run={run}", "dry_run=true", "--port", "8001", "--enforce_eager"]) == 0
    printed = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == command(str(run / "model"), ["--port", "8001", "--enforce_eager"])
    assert cli.main(["vllm-serve", "model=tiny", "dry_run=true"]) == 0
    model = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])[5]  # the tiny preset, built locally
    assert json.loads(open(f"{model}/config.json").read())["model_type"]


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_without_vllm_it_is_refused_in_one_paragraph(tmp_path, capsys):
    run = tmp_path / "run"
    _model_dir(run / "model")
    assert cli.main(["vllm-serve", f"run={run}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n\n" not in err and "Traceback" not in err
    flat = " ".join(err.split())
    assert "vLLM is not installed" in flat and "pip install 'aligntune[vllm]'" in flat and "dry_run=true" in flat


@pytest.mark.parametrize("args, needle", [
    (["port=8001"], "does not take 'port=8001'"),
    (["run=a", "model=b"], "exactly one of run="),
    ([], "exactly one of run="),
    (["model=tiny", "--model", "x"], "--model among the options"),
    (["run=/nonexistent/run"], "run=/nonexistent/run does not exist"),
])
def test_bad_arguments_are_refused_naming_the_fix(capsys, args, needle):
    assert cli.main(["vllm-serve", *args]) == 2
    assert needle in " ".join(capsys.readouterr().err.split())
