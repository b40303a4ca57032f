"""From overrides to a validated `RunConfig`, without importing torch.

    argv overrides -> alias rewrite -> Hydra compose (configs/primary/train.yaml, the search path the
                      overrides name + dataclass schemas) -> OmegaConf.to_object (value and cross-field
                      checks)

`load` is the one function that turns (search path, overrides) into the typed RunConfig, and every stage
calls it: validation of each job of a sweep before Hydra launches anything (a bad value fails the whole
command in about a second), each Hydra job (cli._task), resume.plan, the accelerate workers
(distributed/worker.recompose), eval/generate recomposing a run, `aligntune check` and the Python API.
The search path travels inside the overrides as the recorded `hydra.searchpath=[user dirs]`; `compose`
(the only call of Hydra's compose) and the Hydra app (cli._run_hydra) both hand Hydra `hydra_overrides`.
Then aligntune.preflight (above config/, which is a leaf) checks what needs backends, data or models:
`preflight.load` = `load` + `preflight.check`, which the stages that run a config call.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from aligntune.config import aliases, schema
from aligntune.errors import AligntuneError, ConfigError

CONFIG_NAME = "train"
_registered = False


def config_dir() -> str:
    """The shipped configs/ tree (inside the installed package, editable or wheel)."""
    from aligntune.config.searchpath import shipped_dir

    return str(shipped_dir())


def new_run_id() -> str:
    """A fresh suffix for run directories: two runs started in the same second never collide."""
    return secrets.token_hex(3)


def register() -> None:
    """Register the schemas with Hydra's ConfigStore and the run-id resolver (idempotent)."""
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=schema.RunConfig)
    for name, node in schema.ALGORITHM_SCHEMAS.items():
        cs.store(group="algorithm", name=f"{name}_schema", node=node)
    # Cached per composed config, so one config has one id; no module state: Hydra copies a sweep's resolver cache
    # to each of its jobs (ConfigLoaderImpl.load_sweep_config), and the CLI fixes a sweep's directory before launching
    # (cli._sweep_dir), so a launcher's worker processes write where the command reads.
    OmegaConf.register_new_resolver("aligntune_run_id", new_run_id, replace=True, use_cache=True)
    from aligntune.config.sweeps import job_dir_name

    OmegaConf.register_new_resolver("aligntune_job_dir", job_dir_name, replace=True)
    _registered = True


def group_options(group: str, dirs: list[Path] | None = None) -> list[str]:
    """The options of a config group on the search path (shipped configs + the user directories `dirs`)."""
    from aligntune.config.searchpath import options

    return sorted(options(group, list(dirs or [])))


def unknown_keys_error(keys: list[str]) -> ConfigError:
    return ConfigError(f"Unknown config key{'s' if len(keys) > 1 else ''} {', '.join(keys)}: the schema has no such field.",
                       "Check the spelling against `aligntune train --cfg job`; only the dict-valued keys (rewards, "
                       "backend.trl_args, dataset.columns, rewards.<name>.args) take new entries, with +key=value.")


def explain(exc: Exception, shortcuts: dict[str, str], dirs: list[Path] | None = None) -> ConfigError:
    """Turn a Hydra/OmegaConf composition error into one paragraph with the problem and the fix. `dirs`: the user
    config directories on the search path (an unknown option lists every directory's options)."""
    from hydra.errors import MissingConfigException, OverrideParseException

    from aligntune.config.searchpath import options, shipped_dir

    msg = str(exc).strip()
    cause = exc.__cause__ or exc.__context__
    broken = _broken_yaml(exc, dirs)
    if broken:
        return broken
    if isinstance(exc, MissingConfigException):
        m = re.search(r"Could not find '([^/']+)/([^']+)'", msg)
        if m:
            group, option = m.groups()
            found = options(group, list(dirs or []))
            shipped = shipped_dir()
            where = {}
            for name, path in found.items():
                root = "shipped" if path.is_relative_to(shipped) else str(path.parent.parent)
                where.setdefault(root, []).append(name)
            listing = "; ".join(f"{root}: {', '.join(names)}" for root, names in where.items())
            searched = "the shipped configs" + "".join(f", {d}" for d in dirs or [])
            return ConfigError(f"{group}={option} is not an option of the '{group}' group (searched {searched}).",
                               f"Valid options: {listing}. A team's own options go in <dir>/{group}/<name>.yaml, "
                               "with --config-dir <dir> (or ALIGNTUNE_CONFIG_PATH).")
        return ConfigError(msg.splitlines()[0], "Check the config name.")
    if isinstance(exc, OverrideParseException):
        return ConfigError(f"Cannot parse the override: {msg.splitlines()[0]}",
                           "Overrides look like key=value, +new_key=value or ~key; quote a value with spaces, commas "
                           "or brackets: 'key=\"a value, quoted\"'.")
    m = re.match(r"Ambiguous value for argument '(.*)'$", msg.splitlines()[0]) if msg else None
    if m:
        return sweep_without_multirun(m.group(1))
    inner = cause if isinstance(cause, OmegaConfBaseException) else exc
    while isinstance(inner.__cause__, OmegaConfBaseException):
        inner = inner.__cause__
    key = getattr(inner, "full_key", None) or getattr(exc, "full_key", None) or ""
    m = re.search(r"(?:Could not override|Error merging override) '?([\w.+~]+)", msg)
    override_key = m.group(1).lstrip("+~") if m else key
    short = shortcuts.get(override_key) or shortcuts.get(key)
    if isinstance(inner, (ConfigKeyError, ConfigAttributeError)):
        bad = override_key or key
        if short:
            head, _, leaf = bad.partition(".")
            having = [n for n, s in schema.ALGORITHM_SCHEMAS.items() if leaf in {f.name for f in dataclasses.fields(s)}]
            return ConfigError(f"'{short}' is a shortcut for {bad}, which the selected {head} does not have"
                               f"{' (it applies to ' + ', '.join(having) + ')' if having and head == 'algorithm' else ''}.",
                               f"Drop '{short}', or select an {head} that has it.")
        return unknown_keys_error([bad])
    if isinstance(inner, ValidationError):
        value_msg = str(inner).splitlines()[0]
        name = short or key or override_key
        return ConfigError(f"Invalid value for {name}{' (' + key + ')' if short and key else ''}: {value_msg}.",
                           "Give a value of the key's type (see `aligntune train --cfg job`).")
    if isinstance(inner, MissingMandatoryValue):
        return ConfigError(f"{key} has no value.", f"Set it, e.g. {key}=...")
    first = msg.splitlines()[0] if msg else type(exc).__name__
    return ConfigError(f"The configuration does not compose: {first}", "Check the overrides against `aligntune train --cfg job`.")


def _broken_yaml(exc: BaseException, dirs: list[Path] | None) -> ConfigError | None:
    """A YAML syntax error somewhere in the chain: Hydra does not say which file, so find the file on the search path
    that fails to parse, and name it with the line."""
    import yaml

    from aligntune.config.searchpath import shipped_dir

    seen, error = set(), None
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, yaml.YAMLError):
            error = exc
            break
        exc = exc.__cause__ or exc.__context__
    if error is None:
        return None
    for root in [*(dirs or []), shipped_dir()]:
        for path in sorted(Path(root).rglob("*.yaml")):
            try:
                yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as found:
                mark = getattr(found, "problem_mark", None)
                where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
                problem = getattr(found, "problem", None) or str(found).splitlines()[0]
                return ConfigError(f"{where}: the YAML does not parse ({getattr(found, 'context', None) or ''} "
                                   f"{problem}).".replace("( ", "("), "Fix the YAML syntax in that file.")
            except OSError:
                continue
    return ConfigError(f"A config file does not parse as YAML: {str(error).splitlines()[0]}", "Fix its YAML syntax.")

def quoted(override: str) -> str:
    """`override` as a shell word whose value Hydra reads as one string: double quotes for Hydra inside single
    quotes for the shell (inside shell double quotes when the value has a single quote)."""
    key, _, value = override.partition("=")
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    hydra = f'{key}="' + value.replace('"', '\\"') + '"'  # Hydra: a backslash escapes only a quote
    if "'" not in hydra:
        return f"'{hydra}'"
    return '"' + "".join("\\" + c if c in '\\"$`' else c for c in hydra) + '"'


def sweep_without_multirun(override: str) -> ConfigError:
    return ConfigError(f"{override!r} reads as several values: Hydra takes a comma (or choice(), range(), glob()) "
                       "as a sweep, and this is a single run.",
                       f"Quote the value to pass one string: {quoted(override)} (single quotes for the shell, "
                       "double quotes for Hydra); for a list, key=[a,b]; to sweep over the values, add -m.")


def check_grammar(overrides: list[str], multirun: bool = False) -> None:
    """Each override against Hydra's grammar, one at a time, so the error names it and shows it quoted. Values with
    spaces, commas, parentheses, brackets, quotes, '!' or ';' need quoting; a comma makes a sweep (-m only)."""
    from hydra.errors import HydraException

    from aligntune.config.overrides import is_hydra_key
    from aligntune.config.overrides import parser as overrides_parser

    parser = overrides_parser()
    for override in overrides:
        try:
            parsed = parser.parse_override(override)
        except HydraException as exc:  # the parser's syntax errors (parse_overrides wraps them in OverrideParseException)
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"Hydra cannot parse the override {override!r} ({detail}): its value has characters "
                              "Hydra's override grammar reserves (spaces, commas, parentheses, brackets, quotes, "
                              "'=', '!', ';').",
                              f"Quote the value: {quoted(override)} (single quotes for the shell, double quotes for "
                              "Hydra).") from None
        if not multirun and parsed.is_sweep_override() and not is_hydra_key(parsed.key_or_group):
            raise sweep_without_multirun(override)


def hydra_overrides(overrides: list[str]) -> list[str]:
    """`overrides` as Hydra is given them, by every stage: the recorded search path (hydra.searchpath of the user
    directories, aligntune.config.searchpath) becomes the full one, the user directories then the shipped configs."""
    from aligntune.config.overrides import is_searchpath
    from aligntune.config.searchpath import from_overrides, hydra_override

    return [o for o in overrides if not is_searchpath(o)] + [hydra_override(from_overrides(overrides))]


def compose(overrides: list[str], shortcuts: dict[str, str] | None = None, with_hydra: bool = False) -> DictConfig:
    """Compose the primary config (configs/primary/train.yaml) with `overrides` (already alias-rewritten) on the
    search path they name: the only call of Hydra's compose. `with_hydra`: keep the `hydra` node (the sweeper's
    search space). Safe inside a running Hydra app: its GlobalHydra is put back after."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.initialize import get_gh_backup, restore_gh_from_backup

    from aligntune.config.searchpath import from_overrides, primary_dir

    check_grammar(overrides)
    register()
    backup = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(primary_dir()), version_base="1.3"):
            return hydra_compose(config_name=CONFIG_NAME, overrides=hydra_overrides(overrides),
                                 return_hydra_config=with_hydra)
    except AligntuneError:
        raise
    except Exception as exc:  # Hydra and OmegaConf raise many types; explain() sorts them out
        raise explain(exc, shortcuts or {}, from_overrides(overrides)) from exc
    finally:
        restore_gh_from_backup(backup)


def sweeper_params(overrides: list[str]) -> dict[str, str]:
    """The search space of the sweeper the overrides select (hydra.sweeper.params, e.g. an hparams_search preset)."""
    rewritten, used = aliases.rewrite(list(overrides))
    cfg = compose(rewritten, used, with_hydra=True)
    params = OmegaConf.select(cfg, "hydra.sweeper.params")
    return {str(k): str(v) for k, v in (params or {}).items()}


def _unknown_keys(node, prefix: str = "") -> list[str]:
    """Keys Hydra's `+key=value` added to a schema node (Hydra allows it; the schema does not)."""
    unknown = []
    node_type = OmegaConf.get_type(node)
    fields = {f.name for f in dataclasses.fields(node_type)} if dataclasses.is_dataclass(node_type) else None
    for key in node.keys():
        path = f"{prefix}{key}"
        if fields is not None and key not in fields:
            unknown.append(path)
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            unknown += _unknown_keys(child, path + ".")
    return unknown


def to_run_config(cfg: DictConfig, shortcuts: dict[str, str] | None = None) -> schema.RunConfig:
    """The typed config: values and cross-field rules are checked by the schemas' __post_init__."""
    register()
    cfg = cfg.copy()
    if "hydra" in cfg:
        with_flag = OmegaConf.is_struct(cfg)
        OmegaConf.set_struct(cfg, False)
        cfg.pop("hydra")
        OmegaConf.set_struct(cfg, with_flag)
    unknown = _unknown_keys(cfg)
    if unknown:
        raise unknown_keys_error(unknown)
    try:
        run = OmegaConf.to_object(cfg)
    except AligntuneError:
        raise
    except OmegaConfBaseException as exc:
        if isinstance(exc.__cause__, AligntuneError):
            raise exc.__cause__ from None
        raise explain(exc, shortcuts or {}) from exc
    if not isinstance(run, schema.RunConfig):
        raise ConfigError("The composed config is not a RunConfig.", "Keep `run_schema` first in train.yaml's defaults.")
    return run


def load(overrides: list[str]) -> tuple[schema.RunConfig, DictConfig]:
    """overrides -> (RunConfig, the composed DictConfig). Raises ConfigError with a clear message. The checks that
    need backends, data or models are the pre-flight's (aligntune.preflight.load = this + aligntune.preflight.check)."""
    rewritten, used = aliases.rewrite(list(overrides))
    cfg = compose(rewritten, used)
    run = to_run_config(cfg, used)
    return run, cfg


def default_run(searchpath: list[str] | None = None) -> schema.RunConfig:
    """The config plain `aligntune train` composes (no overrides) on the search path `searchpath` (the recorded
    hydra.searchpath override, or none): what the console's start panel compares a run with."""
    return load(list(searchpath or []))[0]


def default_run_dir(root: str | Path = "outputs") -> Path:
    """outputs/<date>/<time>_<id>, the same shape Hydra's hydra.run.dir produces for the CLI."""
    return Path(root) / time.strftime("%Y-%m-%d") / f"{time.strftime('%H-%M-%S')}_{new_run_id()}"
