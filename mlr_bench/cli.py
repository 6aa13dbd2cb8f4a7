"""``mlr-bench``: stock LightningCLI subcommands plus short names from the plugin registry.

``--method pvp`` / ``--data voc2007`` are rewritten to the registered class paths before
LightningCLI parses (``--method.lr 0.01`` becomes ``--model.lr 0.01``), so everything LightningCLI
offers keeps working: ``--config``, ``--print_config``, ``class_path/init_args``, ``--trainer.*``.
Extra commands: ``train`` (fit, then test on the best or last checkpoint) and ``list``.

Wrong input ends in one line and exit code 2 (:mod:`mlr_bench.cli_messages` words jsonargparse's
errors in the user's terms); machine-local data roots and defaults come from
:mod:`mlr_bench.user_config`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, NoReturn

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from mlr_bench import registry, user_config
from mlr_bench.cli_messages import (
    CURRENT,
    Source,
    Sources,
    explain,
    file_sources,
    load_class,
    normalise_prog,
    short_name,
)
from mlr_bench.datamodule import MLRDataModule
from mlr_bench.errors import MLRBenchError
from mlr_bench.eval.evaluator import Evaluator
from mlr_bench.method import MLRMethod
from mlr_bench.provenance import random_weights_warning
from mlr_bench.runs import run_dir
from mlr_bench.stages import fit_prior_stage

#: Machine-local settings (``$MLR_BENCH_CONFIG`` overrides it); format: mlr_bench.user_config.
USER_CONFIG = user_config.USER_CONFIG
TRAINER_COMMANDS = ("fit", "validate", "test", "predict", "train")
#: CLI option -> LightningCLI key. ``--model`` keeps working as LightningCLI's canonical key.
ALIASES = {"--method": ("method", "--model"), "--data": ("data", "--data")}
#: ``--logger NAME`` -> ``--trainer.logger`` value ("true": the default CSV logger, in the run dir).
LOGGERS = {
    "wandb": "mlr_bench.loggers.MLRWandbLogger",
    "csv": "true",
    "tensorboard": "mlr_bench.loggers.MLRTensorBoardLogger",
}


#: Extra commands, described in ``mlr-bench --help`` (the trainer commands describe themselves).
COMMAND_HELP = {
    "fit": "train a method (--method NAME --data NAME; PVP: both stages)",
    "validate": "evaluate on the validation split",
    "test": "evaluate on the test split (--ckpt_path for a trained run)",
    "predict": "write per-image scores (predictions.csv)",
    "train": "fit, then test on the best (or --test_ckpt last) checkpoint",
    "list": "installed methods and datasets (plugins included) and backbones",
    "benchmark": "the method x dataset x seed matrix into a leaderboard",
    "sweep": "equal-budget tuning of one method on one dataset (Optuna, val mAP only)",
    "generate": "text-to-image training images (Stable Diffusion or the world's renderer)",
    "prepare": "download, verify and extract a dataset (voc2007, coco2014, nuswide)",
    "captions": "LLM sentences for text-only training",
}
#: The method's own trainer defaults win over these; both only fill what the user left unset.
DEFAULT_TRAINER = {"max_epochs": 20}


# ---- argv rewriting ---------------------------------------------------------------------------
def _looks_like_class_or_file(value: str) -> bool:
    return "." in value or "/" in value or value.lstrip().startswith("{")


def _resolve_value(kind: str, value: str) -> str:
    """A registered short name becomes its class path; paths, files and dicts pass through.

    A name whose entry point cannot be used (import error, not an MLRMethod/MLRDataModule) is
    refused here with the reason, instead of inside a long parser dump.
    """
    if _looks_like_class_or_file(value):
        if not value.endswith((".yaml", ".yml", ".json")) and not value.lstrip().startswith("{"):
            _check_class_path(kind, value)
        return value
    known = registry.entries(registry.GROUPS[kind])
    entry = known.get(value.lower())
    if entry is None:
        # A class name typed as LightningCLI would accept it (e.g. "ZeroShotCLIP").
        by_class = {e.class_path.rsplit(".", 1)[-1].lower(): e for e in known.values()}
        entry = by_class.get(value.lower())
    if entry is None:
        raise registry.UnknownNameError(registry.unknown_name_message(kind, value, sorted(known)))
    failure = registry.failure_for(kind, entry.name)
    if failure is not None:
        raise MLRBenchError(failure.message(kind))
    return entry.class_path


def _check_class_path(kind: str, value: str) -> None:
    """A dotted ``package.module.Class`` that imports must be the right kind of class."""
    if "/" in value or value.count(".") < 1:
        return
    cls = load_class(value)
    if cls is None:
        return  # not importable: the parser reports it (it may also be a file)
    base = registry.base_class(registry.GROUPS[kind])
    if not issubclass(cls, base):
        raise MLRBenchError(f"--{kind} {value}: not a subclass of {base.__name__}")


def _logger_value(name: str) -> str:
    """``--logger`` shortcut; ``--trainer.logger CLASS_PATH`` stays available for the rest."""
    if name.lower() not in LOGGERS:
        choices = ", ".join(LOGGERS)
        raise MLRBenchError(f"--logger: unknown logger '{name}'; choose one of: {choices}")
    if name.lower() == "tensorboard":
        from mlr_bench.loggers import require_tensorboard

        require_tensorboard()
    return LOGGERS[name.lower()]


def translate_config(data: dict[str, Any], label: str) -> dict[str, Any]:
    """A config file in CLI words made LightningCLI's: ``method:`` becomes ``model:``, and a
    short name (``taidpt``, ``world``) as a section's value or class_path its class path."""
    if "method" in data:
        if "model" in data:
            raise MLRBenchError(f"{label}: both 'method:' and 'model:' are given; keep one")
        data = {("model" if k == "method" else k): v for k, v in data.items()}
    for section, kind in (("model", "method"), ("data", "data")):
        value = data.get(section)
        try:
            if isinstance(value, str) and not _looks_like_class_or_file(value):
                data = {**data, section: _resolve_value(kind, value)}
            elif isinstance(value, dict) and isinstance(value.get("class_path"), str):
                path = value["class_path"]
                if not _looks_like_class_or_file(path):
                    data = {**data, section: {**value, "class_path": _resolve_value(kind, path)}}
        except MLRBenchError as exc:
            raise MLRBenchError(f"{label}: {section}: {exc}") from None
    return data


def _translate_config_text(content: str, label: str) -> str:
    """``content`` with :func:`translate_config` applied; unchanged when nothing to do or
    when it does not parse (the parser then reports it)."""
    import yaml

    try:
        data = yaml.safe_load(content)
    except yaml.YAMLError:
        return content
    if not isinstance(data, dict):
        return content
    translated = translate_config(data, label)
    if translated == data:
        return content
    return yaml.safe_dump(translated, sort_keys=False)


def rewrite_argv(argv: Sequence[str]) -> list[str]:
    """Turn ``--method NAME``/``--data NAME`` (and ``--method.x``) into LightningCLI arguments."""
    out: list[str] = []
    args = list(argv)
    protocol: list[str] = []  # --data.protocol goes last: after --data and any --config
    i = 0
    while i < len(args):
        arg = args[i]
        key, eq, inline = arg.partition("=")
        if key == "--protocol":
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("--"):
                i += 1
                inline = args[i]
            protocol = [f"--data.protocol={inline}"]
        elif key in ALIASES:
            kind, target = ALIASES[key]
            if eq:
                value = inline
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                i += 1
                value = args[i]
            else:
                out.append(target if key == "--method" else arg)  # let the parser complain
                i += 1
                continue
            out.append(f"{target}={_resolve_value(kind, value)}")
        elif key == "--logger":
            if not eq and i + 1 < len(args):
                i += 1
                inline = args[i]
            out.append(f"--trainer.logger={_logger_value(inline)}")
        elif key in ("--method.help", "--data.help", "--model.help"):
            kind = "data" if key == "--data.help" else "method"
            if not eq and i + 1 < len(args) and not args[i + 1].startswith("-"):
                i += 1
                inline = args[i]
            target = "--data.help" if kind == "data" else "--model.help"
            out.append(f"{target}={_resolve_value(kind, inline)}" if inline else target)
        elif arg.startswith("--method."):
            out.append("--model." + arg[len("--method.") :])
        else:
            out.append(arg)
        i += 1
    return out + protocol


# ---- Lightning pieces ---------------------------------------------------------------------
class MLRTrainer(Trainer):
    """A Trainer with ``train`` (the benchmark unit, fit followed by test) that also fits the
    prior stage a staged method asks for (PVP's pre-training) before the method itself."""

    def __init__(self, *args: Any, budget_fraction: float | None = None, **kwargs: Any) -> None:
        """
        Args:
            budget_fraction: train every stage for this fraction of the method's reference
                optimizer steps, epochs derived from the corpus (:mod:`mlr_bench.budget_policy`;
                the world recipes' policy); None: ``max_epochs`` as given.
        """
        if budget_fraction is not None and not budget_fraction > 0:
            raise MLRBenchError(
                f"--trainer.budget_fraction must be a number > 0, got {budget_fraction!r}"
            )
        self.budget_fraction = budget_fraction
        self.init_kwargs = dict(kwargs)  # a prior stage's Trainer runs on the same devices
        kwargs.update(_atomic_checkpoint_plugins(kwargs))  # keep `**kwargs`: jsonargparse reads it
        kwargs["callbacks"] = _with_budget_meter(kwargs.get("callbacks"))
        super().__init__(*args, **kwargs)

    def fit(self, model: Any, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Fit; for a method with nothing to train under DDP, validate and checkpoint instead.

        DDP refuses to wrap a module without trainable parameters, while such a method's fit
        is only validation anyway (zero-shot CLIP): run exactly that, on every rank, and save
        the usual ``last.ckpt`` (hyperparameters only) so ``train``/``test`` work as for others.
        """
        datamodule = kwargs.get("datamodule") or (args[2] if len(args) > 2 else None)
        if self.budget_fraction is not None and datamodule is not None:
            from mlr_bench.budget_policy import apply_budget_fraction

            model.budget_policy = apply_budget_fraction(
                self, model, datamodule, self.budget_fraction
            )
        fit_prior_stage(self, self.init_kwargs, model, datamodule)
        trainable = any(p.requires_grad for p in model.parameters())
        if trainable or not isinstance(self.strategy, DDPStrategy):
            return super().fit(model, *args, **kwargs)
        self.validate(model, datamodule=datamodule)
        callback = self.checkpoint_callback
        if callback is not None:
            folder = Path(callback.dirpath) if callback.dirpath else run_dir(self) / "checkpoints"
            path = str(folder / f"{callback.CHECKPOINT_NAME_LAST}.ckpt")
            self.save_checkpoint(path)
            callback.last_model_path = path
        return None

    def train(  # type: ignore[override]  # nn.Module-style train(mode) does not exist on Trainer
        self,
        model: MLRMethod,
        datamodule: MLRDataModule,
        ckpt_path: str | None = None,
        test_ckpt: Literal["best", "last"] = "best",
    ) -> list[dict[str, float]]:
        """Fit, then test on the best (by val/mAP) or the last checkpoint.

        Args:
            ckpt_path: checkpoint to resume fitting from.
            test_ckpt: which checkpoint to test; falls back to the in-memory weights when no
                checkpoint was written (e.g. ``--trainer.fast_dev_run``).
        """
        self.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        callback = self.checkpoint_callback
        path = None
        if callback is not None:
            best = getattr(callback, "best_model_path", "")
            last = getattr(callback, "last_model_path", "")
            path = (best or last) if test_ckpt == "best" else (last or best)
        if not path:
            rank_zero_warn("train: no checkpoint was saved; testing the in-memory weights")
        return self.test(model, datamodule=datamodule, ckpt_path=path or None)


def _with_budget_meter(callbacks: Any) -> list[Any]:
    """``callbacks`` plus a :class:`BudgetMeter` (every fit records what it spent)."""
    from mlr_bench.budget import BudgetMeter

    if callbacks is None:
        callbacks = []
    elif not isinstance(callbacks, list | tuple):
        callbacks = [callbacks]
    callbacks = list(callbacks)
    if not any(isinstance(c, BudgetMeter) for c in callbacks):
        callbacks.append(BudgetMeter())
    return callbacks


def _atomic_checkpoint_plugins(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``plugins`` that write checkpoints atomically (see ``AtomicCheckpointIO``), unless the
    user brought a CheckpointIO or a strategy that saves its own way (FSDP, DeepSpeed)."""
    from lightning.fabric.plugins import CheckpointIO

    from mlr_bench.checkpoints import AtomicCheckpointIO

    strategy = kwargs.get("strategy", "auto")
    plain = strategy is None or isinstance(strategy, DDPStrategy)
    plain = plain or (isinstance(strategy, str) and strategy.startswith(("auto", "ddp", "single")))
    plugins = kwargs.get("plugins")
    listed = list(plugins) if isinstance(plugins, list | tuple) else [plugins] if plugins else []
    if not plain or any(isinstance(p, CheckpointIO) for p in listed):
        return {}
    return {"plugins": [*listed, AtomicCheckpointIO()]}


class RunDirSaveConfig(SaveConfigCallback):
    """Save ``config.yaml`` in the run's own directory (never shared between runs)."""

    #: The run folder this callback created (on global rank 0), to mark it if the run fails.
    run_path: Path | None = None

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        path = run_dir(trainer) / self.config_filename
        if trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.run_path = path.parent
            self.parser.save(self.config, str(path), skip_none=False, overwrite=True)
        self.already_saved = trainer.strategy.broadcast(True)


class MLRArgumentParser(LightningArgumentParser):
    """Parse errors as one message and exit code 2, without the full usage listing; help and
    config files in the CLI's own words (``--method``, ``method:``, short names)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        prog = normalise_prog(self.prog)
        text = explain(message, self)
        if "`mlr-bench" not in text:
            text += f" (`{prog} --help` lists the options)"
        print(f"{prog}: error: {text}", file=sys.stderr)
        raise SystemExit(2)

    def format_help(self) -> str:
        """LightningCLI's help with ``--method`` for ``--model`` and the short names explained
        (the options are LightningCLI's; the spelling users type is ours)."""
        text = super().format_help()
        if getattr(self, "_subcommands_action", None) is not None:
            return text + _commands_epilog()
        if "--model" not in text:
            return text
        text = re.sub(r"--model\.init_args\.", "--method.", text)
        text = re.sub(r"--model(?=[\s.=,\]\)}|:]|$)", "--method", text)
        return text + SHORT_NAMES_EPILOG

    def parse_path(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        """Remember which file is being read, to name it in messages about its content."""
        token = _CONFIG_FILE.set(str(path))
        try:
            return super().parse_path(path, *args, **kwargs)
        finally:
            _CONFIG_FILE.reset(token)

    def _load_config_parser_mode(self, content: str, path: Any = "", *args: Any, **kw: Any) -> Any:
        """Config files may say ``method:`` and use short names, like the command line."""
        label = _CONFIG_FILE.get() or str(path) or "config"
        content = _translate_config_text(content, label)
        return super()._load_config_parser_mode(content, path, *args, **kw)


_CONFIG_FILE: ContextVar[str | None] = ContextVar("mlr_bench_config_file", default=None)

SHORT_NAMES_EPILOG = """
mlr-bench short names:
  --method NAME         a method from `mlr-bench list` (zeroshot, taidpt, comc, pvp, t2ipal,
                        plugins); a class path or a YAML file works too. --method.X VALUE sets
                        its init argument X; `--method.help NAME` lists them.
  --data NAME           a dataset from `mlr-bench list` (world, folder, voc2007, coco2014,
                        nuswide); --data.X VALUE, `--data.help NAME` as for --method.
  --protocol NAME       clean (default: validation from the training side, no test captions)
                        or reference (the reference code's choices); = --data.protocol NAME.
  --logger NAME         csv (default), tensorboard (needs `pip install tensorboard`) or wandb;
                        = --trainer.logger CLASS_PATH.
  --trainer.max_epochs  unset: the method's reference epochs (20 for the built-ins).
  Config files may write `method:` for `model:` and short names as values. Data roots per
  dataset can live in ~/.config/mlr-bench.yaml ($MLR_BENCH_CONFIG): data_roots: {voc2007: DIR}.
"""


def _commands_epilog() -> str:
    width = max(len(c) for c in COMMAND_HELP)
    lines = [f"  {name:<{width}}  {what}" for name, what in COMMAND_HELP.items()]
    return (
        "\ncommands (`mlr-bench COMMAND --help` for each):\n"
        + "\n".join(lines)
        + "\n\nExample: mlr-bench train --method zeroshot --data world\n"
    )


class MLRBenchCLI(LightningCLI):
    """LightningCLI over MLRMethod/MLRDataModule subclasses with the shared evaluator."""

    def __init__(self, *args: Any, defaults: dict[str, Any] | None = None, **kwargs: Any):
        #: Defaults from the user config (``defaults:``), applied to every trainer command.
        self.user_defaults = dict(defaults or {})
        super().__init__(*args, **kwargs)

    def before_instantiate_classes(self) -> None:
        """Fill an unset epoch budget with the method's reference one (recorded in the run's
        config.yaml): Lightning's own fallback, 1000 epochs, is nobody's recipe."""
        subcommand = self.subcommand
        sources = CURRENT.get()
        if subcommand in ("fit", "train") and sources is not None:
            _note_world_recipe(sources)
        config = self.config.get(str(subcommand)) if subcommand else self.config
        trainer = config.get("trainer") if config is not None else None
        if trainer is None or trainer.get("fast_dev_run"):
            return
        unset = trainer.get("max_epochs") is None and trainer.get("max_time") is None
        unset = unset and trainer.get("max_steps") in (None, -1)
        if trainer.get("budget_fraction") is not None and not unset:
            print(
                f"mlr-bench: --trainer.budget_fraction {trainer['budget_fraction']} is off: "
                "max_epochs, max_steps or max_time is set, and wins"
            )
            trainer["budget_fraction"] = None
        if unset:
            model = config.get("model")
            cls = load_class(str(getattr(model, "class_path", "") or ""))
            defaults = {**DEFAULT_TRAINER, **dict(getattr(cls, "trainer_defaults", {}))}
            trainer["max_epochs"] = defaults["max_epochs"]

    def after_instantiate_classes(self) -> None:
        """Refuse settings that only the chosen method and data together reveal as wrong
        (e.g. an image size the backbone cannot take), before any run folder exists."""
        super().after_instantiate_classes()
        datamodule, model = getattr(self, "datamodule", None), getattr(self, "model", None)
        if isinstance(datamodule, MLRDataModule) and model is not None:
            datamodule.check_image_size(model)
        if self.subcommand is not None:
            _warn_random_weights(model)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as exc:  # jsonargparse folds a constructor's error into its own
            user_error = _find_user_error(exc)
            if user_error is None:
                raise
            raise user_error from None

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        commands = LightningCLI.subcommands()
        commands["train"] = {"model", "datamodule"}
        return commands

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments(
            "data.prompt_class_names", "model.init_args.class_names", apply_on="instantiate"
        )
        parser.add_lightning_class_args(Evaluator, "evaluator")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/mAP",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch}",
            }
        )
        self._user_defaults_to(parser)

    def _user_defaults_to(self, parser: LightningArgumentParser) -> None:
        """The user config's ``defaults`` as parser defaults (so the command line and --config
        files win, and --help shows them); unknown keys name the file."""
        if not self.user_defaults:
            return
        keys = {a.dest for a in parser._actions}
        flat: dict[str, Any] = {}

        def walk(data: dict[str, Any], prefix: str) -> None:
            for key, value in data.items():
                full = f"{prefix}{key}"
                if isinstance(value, dict) and any(k.startswith(full + ".") for k in keys):
                    walk(value, full + ".")
                elif full in keys:
                    flat[full] = value
                elif any(k.startswith(full + ".") for k in keys) or full in flat:
                    continue
                else:
                    from mlr_bench.cli_messages import closest

                    section, _, name = full.rpartition(".")
                    near = [k.rpartition(".")[2] for k in keys if k.startswith(section + ".")]
                    guess = closest(name, near)
                    hint = f"; did you mean '{guess}'?" if guess else ""
                    label = user_config.UserConfig(user_config.user_config_path()).label
                    raise MLRBenchError(
                        f"{label}: defaults.{section}: option '{name}' is not accepted{hint}"
                    )

        walk(self.user_defaults, "")
        if flat:
            parser.set_defaults(flat)

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` before LightningCLI applies the hyperparameters saved in it:
        it must be a readable, safe checkpoint of the requested method and backbone."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        self._ckpt: dict[str, Any] | None = None
        if ckpt_path:
            from mlr_bench.checkpoints import check_method_matches, read_checkpoint

            self._ckpt = read_checkpoint(ckpt_path)
            if self._ckpt is not None:
                model = self.config[subcommand].get("model")
                init_args = getattr(model, "init_args", None) if model is not None else None
                init_args = init_args.as_dict() if hasattr(init_args, "as_dict") else {}
                hparams = self._ckpt.get("hyper_parameters") or {}
                class_path = getattr(model, "class_path", None) if model is not None else None
                check_method_matches(ckpt_path, hparams, class_path, init_args)
        super()._parse_ckpt_path()

    def _check_run_fits(self, trainer_config: dict[str, Any]) -> None:
        """Refuse, before any run folder exists, a run whose result would silently be wrong: a
        checkpoint for other classes or tensors, or a fit that trains a trainable method for
        zero epochs/steps/batches (its "results" would be those of the untrained model)."""
        from mlr_bench.checkpoints import check_classes_match, check_state_matches

        subcommand = str(self.subcommand)
        ckpt = getattr(self, "_ckpt", None)
        if ckpt is not None:
            ckpt_path = str(self.config[subcommand].get("ckpt_path"))
            hparams = ckpt.get("hyper_parameters") or {}
            check_classes_match(ckpt_path, hparams, list(self.datamodule.prompt_class_names))
            check_state_matches(ckpt_path, ckpt["state_dict"], self.model)
        if subcommand not in ("fit", "train"):
            return
        if not any(p.requires_grad for p in self.model.parameters()):
            return  # nothing to train (zero-shot): zero epochs change nothing
        for key in ("max_epochs", "max_steps", "limit_train_batches"):
            value = trainer_config.get(key)
            if value is not None and not isinstance(value, bool) and value == 0:
                method = registry.name_for_class("method", type(self.model))
                raise MLRBenchError(
                    f"--trainer.{key} 0 trains nothing, but {type(self.model).__name__} "
                    f"({method}) has trainable parameters: the run would report an untrained "
                    f"model as its result. Set --trainer.{key} to 1 or more; to evaluate the "
                    f"untrained model on purpose, run `mlr-bench test --method {method}` "
                    "without --ckpt_path"
                )

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it; a run that fails or is interrupted gets its folder marked ``FAILED`` (its
        config and partial files are not results), and a full disk becomes one message."""
        import errno

        from mlr_bench.runs import mark_failed

        try:
            super()._run_subcommand(subcommand)
        except BaseException as exc:
            saver = [c for c in self.trainer.callbacks if isinstance(c, RunDirSaveConfig)]
            folder = saver[0].run_path if saver else None
            marker = mark_failed(folder, exc) if folder is not None else None
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                where = f" writing '{exc.filename}'" if exc.filename else ""
                marked = f"; the run folder {folder} is marked {marker.name}" if marker else ""
                raise MLRBenchError(
                    f"no space left on the device{where} ({exc.strerror}): free some space or "
                    f"set --trainer.default_root_dir to another disk, then run again{marked}"
                ) from exc
            raise

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """Apply the method's own trainer needs and give every run its own directory."""
        config = self._get(self.config_init, "trainer", default={})
        overrides = dict(getattr(self.model, "trainer_overrides", {}))
        self._check_run_fits({**config, **overrides, **kwargs})
        if config.get("logger") in (None, True):
            method = registry.name_for_class("method", type(self.model))
            data = registry.name_for_class("data", type(self.datamodule))
            root = config.get("default_root_dir") or "runs"
            overrides["logger"] = CSVLogger(save_dir=root, name=f"{method}/{data}")
        trainer = super().instantiate_trainer(**overrides, **kwargs)
        if any(hasattr(logger, "bind_run") for logger in trainer.loggers):
            from mlr_bench.loggers import RunContext, bind_loggers

            context = RunContext(
                stage=str(self.subcommand),
                model=self.model,
                datamodule=self.datamodule,
                root_dir=str(config.get("default_root_dir") or "runs"),
                config=self._resolved_config(),
            )
            bind_loggers(trainer.loggers, context)
        return trainer

    def _resolved_config(self) -> dict[str, Any]:
        """The full resolved config as plain data (what ``config.yaml`` holds), for loggers."""
        import yaml

        config = self.config.get(str(self.subcommand), self.config)
        dumped = self._parser(self.subcommand).dump(config, skip_none=False, skip_validation=True)
        return yaml.safe_load(dumped) or {}


def _find_user_error(exc: BaseException) -> MLRBenchError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MLRBenchError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def check_yaml_files(args: Sequence[str]) -> None:
    """Fail early, naming the file and line, on a config file that is not valid YAML."""
    import yaml

    for arg in args:
        value = arg.partition("=")[2] if arg.startswith("--") else arg
        if not value.endswith((".yaml", ".yml")):
            continue
        path = Path(value).expanduser()
        if not path.is_file():
            continue
        try:
            with path.open(encoding="utf-8") as f:
                yaml.safe_load(f)
        except yaml.YAMLError as exc:
            detail = " ".join(str(exc).split())
            raise MLRBenchError(f"{path}: not valid YAML: {detail}") from None


def _cli(
    args: list[str] | None, run: bool = True, user: user_config.UserConfig | None = None
) -> MLRBenchCLI:
    """The LightningCLI of a trainer command (``args`` already rewritten)."""
    user = user if user is not None else user_config.load_user_config()
    token = None
    if CURRENT.get() is None:  # called directly (tests, mlr_bench.testing): describe args
        given = list(sys.argv[1:] if args is None else args)
        token = CURRENT.set(command_sources(given, given, user))
    try:
        return MLRBenchCLI(
            MLRMethod,
            MLRDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_class=MLRTrainer,
            parser_class=MLRArgumentParser,
            save_config_callback=RunDirSaveConfig,
            trainer_defaults={"default_root_dir": "runs", "log_every_n_steps": 10},
            seed_everything_default=0,  # reproducible unless the user picks a seed
            parser_kwargs={
                "prog": "mlr-bench",
                "description": (
                    "mlr-bench: text-only multi-label recognition with CLIP. "
                    "Select a method and a dataset by short name: --method NAME --data NAME "
                    "(see `mlr-bench list`)."
                ),
            },
            defaults=user.defaults,
            args=args,
            run=run,
        )
    finally:
        if token is not None:
            CURRENT.reset(token)


def command_sources(
    typed: list[str], rewritten: list[str], user: user_config.UserConfig
) -> Sources:
    """What a command was given (argv as typed, its config files, the user config's
    defaults), for messages that name the option, file and section of a problem."""
    files = file_sources(rewritten, translate_config)
    if user.defaults:
        files.insert(0, Source(f"{user.label} (defaults)", dict(user.defaults)))
    return Sources(argv=typed, files=files, rewritten=rewritten)


def apply_data_roots(
    rewritten: list[str], sources: Sources, user: user_config.UserConfig
) -> list[str]:
    """Add ``--data.root`` from the user config's ``data_roots`` for the chosen dataset, when
    nothing else sets a root (announced on stderr; recorded in the run's config.yaml)."""
    if not user.data_roots:
        return rewritten
    name = short_name("data", sources.chosen("data"))
    root = user.data_roots.get(name)
    if root is None or sources.sets("data", "root"):
        return rewritten
    print(
        f"mlr-bench: --data.root {root} (data_roots.{name} in {user.label})",
        file=sys.stderr,
    )
    return [*rewritten, f"--data.root={root}"]


#: The reference recipes, ``<method>_<dataset>.yaml``, in a source checkout.
RECIPES = Path(__file__).resolve().parent.parent / "configs" / "experiment"


def _note_world_recipe(sources: Sources) -> None:
    """A world run without a config uses the method's own (real-data) defaults; say in one
    line which recipe gives the README's world numbers, when this checkout has it."""
    if any(a.split("=")[0] in ("--config", "-c") for a in sources.rewritten or sources.argv):
        return
    if short_name("data", sources.chosen("data")) != "world":
        return
    method = short_name("model", sources.chosen("model"))
    recipe = RECIPES / f"{method}_world.yaml"
    if recipe.is_file():
        print(
            f"mlr-bench: note: {method} runs with its own defaults; the world recipe behind the "
            f"README's numbers is --config {recipe}",
            file=sys.stderr,
        )


def _warn_random_weights(model: Any) -> None:
    """Say once, before a run's numbers exist, that random CLIP weights make them meaningless
    (on rank 0 only: DDP starts the CLI again in every process)."""
    line = random_weights_warning(model)
    if line and rank_zero_only.rank == 0:
        print(line, file=sys.stderr)


def check_command(args: Sequence[str]) -> None:
    """An unknown or missing command is one line listing the commands (closest first)."""
    import difflib

    commands = list(COMMAND_HELP)
    if not args:
        raise MLRBenchError(
            f"a command is required: {', '.join(commands)} (`mlr-bench --help` describes them)"
        )
    first = args[0]
    if first.startswith("-") or first in commands:
        return
    close = difflib.get_close_matches(first, commands, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise MLRBenchError(
        f"unknown command '{first}'.{hint} Commands: {', '.join(commands)} "
        "(`mlr-bench --help` describes them)"
    )


# ---- extra commands -----------------------------------------------------------------------
def print_registry(out: Any = None) -> int:
    """``mlr-bench list``: every method and datamodule with a one-line description; entry
    points that cannot be used are listed as FAILED TO LOAD or INVALID, with the reason."""
    out = out or sys.stdout
    from mlr_bench.clip.backbone import MODEL_CONFIG_DIR

    failed = 0
    for kind, title in (("method", "Methods"), ("data", "Datamodules")):
        group = registry.GROUPS[kind]
        loaded, failures = registry.load_group(group)
        print(f"{title} (--{kind} NAME; entry-point group {group}):", file=out)
        width = max([len(n) for n in registry.entries(group)] + [8])
        for name, cls in loaded.items():
            print(f"  {name:<{width}}  {registry.describe(cls)}", file=out)
        for failure in failures:
            failed += 1
            dist = failure.entry.distribution
            source = f", from {dist}" if dist else ""
            print(
                f"  {failure.entry.name:<{width}}  {failure.status} ({failure.entry.target}"
                f"{source}): {failure.error}",
                file=out,
            )
        print(file=out)
    bundled = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))
    print("Backbones: any open_clip model name + pretrained tag (e.g. RN50/openai,", file=out)
    print(f"  ViT-B-16/openai), local-dir:<dir>, or bundled: {', '.join(bundled)}", file=out)
    return 0


def class_names_for(data: str) -> list[str]:
    """Class names of a dataset by short name, without needing its files on disk."""
    from mlr_bench.text.synonyms import synonym_table
    from mlr_bench.world import CLASS_NAMES

    known = ["coco2014", "nuswide", "voc2007", "world"]
    if data not in known:
        raise registry.UnknownNameError(registry.unknown_name_message("data", data, known))
    return list(CLASS_NAMES) if data == "world" else synonym_table(data)[0]


#: Commands outside LightningCLI: name -> "module:function" taking argv, returning an exit
#: code. Named, not imported: those modules import this one (a benchmark cell runs the CLI),
#: so the CLI must not import them back; each is imported when its command runs.
EXTRA_COMMANDS = {
    "prepare": "mlr_bench.prepare:prepare_main",
    "captions": "mlr_bench.text.generate:captions_main",
    "benchmark": "mlr_bench.benchmark.command:benchmark_main",
    "sweep": "mlr_bench.sweep.command:sweep_main",
    "generate": "mlr_bench.generation.cli:generate_main",
}


def run_extra_command(name: str, argv: list[str]) -> int:
    """Import and run one of :data:`EXTRA_COMMANDS`."""
    import importlib

    module, function = EXTRA_COMMANDS[name].split(":")
    command = getattr(importlib.import_module(module), function)
    if name == "captions":  # the captions command learns class names without dataset files
        return command(argv, class_names_for=class_names_for)
    return command(argv)


def _report_plugin_failures() -> None:
    for group in registry.GROUPS.values():
        for failure in registry.load_group(group)[1]:
            print(
                f"mlr-bench: warning: plugin '{failure.entry.name}' ({group}) {failure.reason}: "
                f"{failure.error}",
                file=sys.stderr,
            )


def run_cli(argv: Sequence[str] | None = None) -> MLRBenchCLI | None:
    """Run one command and return the LightningCLI object (None for ``list``).

    ``argv`` defaults to ``sys.argv[1:]``. User errors (unknown names, bad files) raise
    ``SystemExit(2)`` after printing one message, like jsonargparse's own parse errors.
    """
    from_sys = argv is None
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["list"]:
        print_registry()
        return None
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    token = None
    try:
        if args[:1] and args[0] in EXTRA_COMMANDS:
            code = run_extra_command(args[0], args[1:])
            if code:
                raise SystemExit(code)
            return None
        check_command(args)
        user = user_config.load_user_config()
        rewritten = rewrite_argv(args)
        check_yaml_files(rewritten)
        sources = command_sources(args, rewritten, user)
        rewritten = apply_data_roots(rewritten, sources, user)
        sources.rewritten = rewritten
        token = CURRENT.set(sources)
        _report_plugin_failures()
        if from_sys:
            # Rewrite in place: DDP's re-launch of this script then sees the same arguments.
            sys.argv[1:] = rewritten
            return _finish_runs(_cli(None, user=user))
        return _finish_runs(_cli(rewritten, user=user))
    except MLRBenchError as exc:
        print(f"mlr-bench: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except MisconfigurationException as exc:  # Lightning's word for a bad trainer setting
        print(f"mlr-bench: error: invalid trainer setting: {' '.join(str(exc).split())}",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2) from None
    finally:
        if token is not None:
            CURRENT.reset(token)


def _finish_runs(cli: MLRBenchCLI) -> MLRBenchCLI:
    """Close runs a logger holds open (W&B), so each command is one complete run."""
    from mlr_bench.loggers import finish_loggers

    trainer = getattr(cli, "trainer", None)
    if trainer is not None:
        finish_loggers(trainer.loggers)
    return cli


def main() -> int:
    """Console entry point of ``mlr-bench``."""
    _quiet_known_warnings()
    run_cli()
    return 0


def _quiet_known_warnings() -> None:
    """Silence warnings that are expected by design here and only confuse users."""
    import warnings

    benign = [
        r".*module\(s\) in eval mode.*",  # the frozen CLIP stays in eval mode on purpose
        r".*LeafSpec.*",  # Lightning's internal deprecation, not actionable by users
        r".*`training_step` returned `None`.*",  # methods without training (zero-shot)
    ]
    for pattern in benign:
        warnings.filterwarnings("ignore", message=pattern)


if __name__ == "__main__":
    main()
