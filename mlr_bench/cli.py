"""``mlr-bench``: stock LightningCLI subcommands plus short names from the plugin registry.

``--method pvp`` / ``--data voc2007`` are rewritten to the registered class paths before
LightningCLI parses (``--method.lr 0.01`` becomes ``--model.lr 0.01``), so everything LightningCLI
offers keeps working: ``--config``, ``--print_config``, ``class_path/init_args``, ``--trainer.*``.
Extra commands: ``train`` (fit, then test on the best or last checkpoint) and ``list``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_warn

from mlr_bench import registry
from mlr_bench.datamodule import MLRDataModule
from mlr_bench.errors import MLRBenchError
from mlr_bench.eval.evaluator import Evaluator
from mlr_bench.method import MLRMethod
from mlr_bench.runs import run_dir
from mlr_bench.stages import fit_prior_stage

USER_CONFIG = "~/.config/mlr-bench.yaml"
TRAINER_COMMANDS = ("fit", "validate", "test", "predict", "train")
#: CLI option -> LightningCLI key. ``--model`` keeps working as LightningCLI's canonical key.
ALIASES = {"--method": ("method", "--model"), "--data": ("data", "--data")}
#: ``--logger NAME`` -> ``--trainer.logger`` value ("true": the default CSV logger, in the run dir).
LOGGERS = {
    "wandb": "mlr_bench.loggers.MLRWandbLogger",
    "csv": "true",
    "tensorboard": "mlr_bench.loggers.MLRTensorBoardLogger",
}


# ---- argv rewriting ---------------------------------------------------------------------------
def _looks_like_class_or_file(value: str) -> bool:
    return "." in value or "/" in value or value.lstrip().startswith("{")


def _resolve_value(kind: str, value: str) -> str:
    """A registered short name becomes its class path; paths, files and dicts pass through."""
    if _looks_like_class_or_file(value):
        return value
    known = registry.entries(registry.GROUPS[kind])
    if value.lower() in known:
        return known[value.lower()].class_path
    # A class name typed as LightningCLI would accept it (e.g. "ZeroShotCLIP").
    by_class = {e.class_path.rsplit(".", 1)[-1].lower(): e for e in known.values()}
    if value.lower() in by_class:
        return by_class[value.lower()].class_path
    raise registry.UnknownNameError(registry.unknown_name_message(kind, value, sorted(known)))


def _logger_value(name: str) -> str:
    """``--logger`` shortcut; ``--trainer.logger CLASS_PATH`` stays available for the rest."""
    if name.lower() not in LOGGERS:
        choices = ", ".join(LOGGERS)
        raise MLRBenchError(f"--logger: unknown logger '{name}'; choose one of: {choices}")
    return LOGGERS[name.lower()]


def rewrite_argv(argv: Sequence[str]) -> list[str]:
    """Turn ``--method NAME``/``--data NAME`` (and ``--method.x``) into LightningCLI arguments."""
    out: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        key, eq, inline = arg.partition("=")
        if key in ALIASES:
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
        elif arg.startswith("--method."):
            out.append("--model." + arg[len("--method.") :])
        else:
            out.append(arg)
        i += 1
    return out


# ---- Lightning pieces ---------------------------------------------------------------------
class MLRTrainer(Trainer):
    """A Trainer with ``train`` (the benchmark unit, fit followed by test) that also fits the
    prior stage a staged method asks for (PVP's pre-training) before the method itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.init_kwargs = dict(kwargs)  # a prior stage's Trainer runs on the same devices
        kwargs.update(_atomic_checkpoint_plugins(kwargs))  # keep `**kwargs`: jsonargparse reads it
        super().__init__(*args, **kwargs)

    def fit(self, model: Any, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Fit; for a method with nothing to train under DDP, validate and checkpoint instead.

        DDP refuses to wrap a module without trainable parameters, while such a method's fit
        is only validation anyway (zero-shot CLIP): run exactly that, on every rank, and save
        the usual ``last.ckpt`` (hyperparameters only) so ``train``/``test`` work as for others.
        """
        datamodule = kwargs.get("datamodule") or (args[2] if len(args) > 2 else None)
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
    """Parse errors as one message and exit code 2, without the full usage listing."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        print(f"(run `{self.prog} --help` for the options)", file=sys.stderr)
        raise SystemExit(2)


class MLRBenchCLI(LightningCLI):
    """LightningCLI over MLRMethod/MLRDataModule subclasses with the shared evaluator."""

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
            "data.class_names", "model.init_args.class_names", apply_on="instantiate"
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
            check_classes_match(ckpt_path, hparams, list(self.datamodule.class_names))
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


def _cli(args: list[str] | None, run: bool = True) -> MLRBenchCLI:
    config_files = [USER_CONFIG] if Path(USER_CONFIG).expanduser().is_file() else []
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
            **{c: {"default_config_files": config_files} for c in TRAINER_COMMANDS},
            "description": (
                "mlr-bench: text-only multi-label recognition with CLIP. "
                "Select a method and a dataset by short name: --method NAME --data NAME "
                "(see `mlr-bench list`). Other commands: `mlr-bench list`, "
                "`mlr-bench prepare <dataset> --root DIR`, `mlr-bench captions --help`."
            ),
        },
        args=args,
        run=run,
    )


# ---- extra commands -----------------------------------------------------------------------
def print_registry(out: Any = sys.stdout) -> int:
    """``mlr-bench list``: every method and datamodule with a one-line description."""
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
            print(
                f"  {failure.entry.name:<{width}}  FAILED TO LOAD ({failure.entry.target}, "
                f"from {failure.entry.distribution}): {failure.error}",
                file=out,
            )
        print(file=out)
    bundled = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.json"))
    print("Backbones: any open_clip model name + pretrained tag (e.g. RN50/openai,", file=out)
    print(f"  ViT-B-16/openai), local-dir:<dir>, or bundled: {', '.join(bundled)}", file=out)
    return 0


def _prepare(argv: list[str]) -> int:
    """``mlr-bench prepare <dataset> --root DIR``: download, verify, extract, validate."""
    from mlr_bench.prepare import prepare_main

    return prepare_main(argv)


def _captions(argv: list[str]) -> int:
    """``mlr-bench captions --data NAME --llm DIR ...``: LLM sentences for text-only training."""
    from mlr_bench.text.generate import captions_main

    return captions_main(argv, class_names_for=class_names_for)


def class_names_for(data: str) -> list[str]:
    """Class names of a dataset by short name, without needing its files on disk."""
    from mlr_bench.text.synonyms import synonym_table
    from mlr_bench.world import CLASS_NAMES

    known = ["coco2014", "nuswide", "voc2007", "world"]
    if data not in known:
        raise registry.UnknownNameError(registry.unknown_name_message("data", data, known))
    return list(CLASS_NAMES) if data == "world" else synonym_table(data)[0]


def _benchmark(argv: list[str]) -> int:
    """``mlr-bench benchmark --methods all --data world --seeds 1,2,3``: the matrix."""
    from mlr_bench.benchmark import benchmark_main

    return benchmark_main(argv)


def _generate(argv: list[str]) -> int:
    """``mlr-bench generate --generator world|diffusers ...``: text-to-image training images."""
    from mlr_bench.generation.cli import generate_main

    return generate_main(argv)


#: Commands outside LightningCLI: name -> function(argv) returning an exit code.
EXTRA_COMMANDS = {
    "prepare": _prepare,
    "captions": _captions,
    "benchmark": _benchmark,
    "generate": _generate,
}


def _report_plugin_failures() -> None:
    for group in registry.GROUPS.values():
        for failure in registry.load_group(group)[1]:
            print(
                f"mlr-bench: warning: plugin '{failure.entry.name}' ({group}) failed to load: "
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
    try:
        if args[:1] and args[0] in EXTRA_COMMANDS:
            code = EXTRA_COMMANDS[args[0]](args[1:])
            if code:
                raise SystemExit(code)
            return None
        rewritten = rewrite_argv(args)
        check_yaml_files(rewritten)
        _report_plugin_failures()
        if from_sys:
            # Rewrite in place: DDP's re-launch of this script then sees the same arguments.
            sys.argv[1:] = rewritten
            return _finish_runs(_cli(None))
        return _finish_runs(_cli(rewritten))
    except MLRBenchError as exc:
        print(f"mlr-bench: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


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
