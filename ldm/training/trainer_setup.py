"""Turning the ``lightning:`` config section (plus command-line Trainer flags) into a Lightning 2
Trainer: Trainer arguments (PL 1.x names translated), logger, checkpointing and callbacks with the
original defaults, and the learning-rate scaling rule."""
from __future__ import annotations

import inspect
import os
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import DictConfig, OmegaConf

from ldm.training.cli import trainer_parameters
from ldm.training.config import ConfigError
from ldm.training.logdir import RunPaths
from ldm.util import first_line, get_obj_from_str, instantiate_from_config

# PL 1.x Trainer arguments that Lightning 2 removed without a replacement we can map.
REMOVED_TRAINER_ARGS = (
    "weights_summary", "progress_bar_refresh_rate", "flush_logs_every_n_steps", "terminate_on_nan",
    "auto_select_gpus", "track_grad_norm", "amp_backend", "amp_level", "move_metrics_to_cpu",
    "multiple_trainloader_mode", "stochastic_weight_avg", "prepare_data_per_node", "truncated_bptt_steps",
    "log_gpu_memory", "process_position", "auto_lr_find", "auto_scale_batch_size", "weights_save_path",
    "reload_dataloaders_every_epoch", "checkpoint_callback", "num_processes", "tpu_cores", "ipus",
)
LEGACY_STRATEGY_NAMES = {"ddp", "ddp_spawn", "ddp_cpu", "ddp2", "dp", "ddp_sharded", "horovod"}
DEFAULT_LOGGER = "pytorch_lightning.loggers.CSVLogger"
PERIODIC_CHECKPOINT = "ldm.training.checkpointing.PeriodicModelCheckpoint"
LIGHTNING_CHECKPOINTS = {"pytorch_lightning.callbacks.ModelCheckpoint",
                         "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
                         "lightning.pytorch.callbacks.ModelCheckpoint"}
LEGACY_LOGGERS = {"pytorch_lightning.loggers.TestTubeLogger", "pytorch_lightning.loggers.testtube.TestTubeLogger"}


def legacy_gpus(gpus) -> Tuple[str, Any]:
    """PL 1.x ``gpus``: ``0``/empty -> CPU; ``"0,"``/``"0,1"`` -> those GPU indices; ``n`` -> n GPUs."""
    text = str(gpus).strip()
    if text in ("", "0", "None", "null"):
        return "cpu", None
    if "," in text:
        try:
            return "gpu", [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"gpus must look like 0, or 0,1 or a count, got {gpus!r}") from None
    try:
        return "gpu", int(text)
    except ValueError:
        raise ConfigError(f"gpus must look like 0, or 0,1 or a count, got {gpus!r}") from None


def trainer_config_with_cli(lightning_config: DictConfig, cli_trainer_args: Dict[str, Any]) -> DictConfig:
    """``lightning.trainer`` with the command-line Trainer flags on top (saved with the run)."""
    trainer_config = lightning_config.get("trainer") or OmegaConf.create()
    return OmegaConf.merge(trainer_config, OmegaConf.create(cli_trainer_args))


def trainer_kwargs_from(trainer_config: DictConfig, find_unused_parameters: bool = False) -> Dict[str, Any]:
    """Lightning 2 Trainer keyword arguments for a (possibly PL 1.x style) trainer config."""
    kwargs = OmegaConf.to_container(trainer_config, resolve=True)
    if kwargs.pop("resume_from_checkpoint", None) is not None:
        raise ConfigError("lightning.trainer.resume_from_checkpoint is gone; resume with --resume <run dir or ckpt>")
    for name in ("accelerator", "distributed_backend"):
        if kwargs.get(name) in LEGACY_STRATEGY_NAMES:
            kwargs["strategy"] = kwargs.pop(name)
    kwargs.pop("distributed_backend", None)
    if "gpus" in kwargs:
        accelerator, devices = legacy_gpus(kwargs.pop("gpus"))
        kwargs.setdefault("accelerator", accelerator)
        if devices is not None:
            kwargs.setdefault("devices", devices)
    if kwargs.get("strategy") in ("ddp2", "dp", "horovod", "ddp_sharded"):
        raise ConfigError(f"strategy {kwargs['strategy']!r} does not exist in Lightning 2; use ddp or fsdp")
    if kwargs.get("strategy") == "ddp_cpu":
        kwargs["strategy"], kwargs["accelerator"] = "ddp", "cpu"
    if find_unused_parameters and kwargs.get("strategy") in ("ddp", "ddp_spawn"):
        kwargs["strategy"] = f"{kwargs['strategy']}_find_unused_parameters_true"
    dropped = [name for name in REMOVED_TRAINER_ARGS if kwargs.pop(name, None) is not None]
    if dropped:
        print(f"Ignoring PL 1.x Trainer arguments that Lightning 2 removed: {', '.join(dropped)}")
    unknown = sorted(set(kwargs) - trainer_parameters())
    if unknown:
        raise ConfigError(f"lightning.trainer.{unknown[0]} is not an argument of Lightning's Trainer")
    return kwargs


def _accepts(cls, name: str) -> bool:
    params = inspect.signature(cls.__init__).parameters
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def build_logger(lightning_config: DictConfig, paths: RunPaths, project: Optional[str] = None):
    """The ``lightning.logger`` logger (default: CSVLogger in the run directory). PL 1.x's removed
    TestTubeLogger is replaced by the CSVLogger."""
    default = OmegaConf.create({"target": DEFAULT_LOGGER, "params": {"name": "csv", "save_dir": paths.logdir}})
    user = lightning_config.get("logger") or OmegaConf.create()
    if user.get("target") in LEGACY_LOGGERS:
        print("TestTubeLogger no longer exists in Lightning; logging with CSVLogger instead")
        user = OmegaConf.create({"params": {k: v for k, v in (user.get("params") or {}).items()
                                            if k in ("name", "save_dir", "version")}})
    cfg = OmegaConf.merge(default, user)
    cls = get_obj_from_str(cfg.target)
    params = {k: v for k, v in OmegaConf.to_container(cfg.get("params") or {}).items() if _accepts(cls, k)}
    if project is not None:
        if _accepts(cls, "project"):
            params["project"] = project
        else:
            print(f"--project {project} ignored: {cfg.target} takes no project")
    try:
        return cls(**params)
    except ModuleNotFoundError as err:
        raise ConfigError(f"logger {cfg.target} needs the package {err.name!r} (pip install it), "
                          "or drop lightning.logger to use the CSVLogger") from None


def checkpoint_config(lightning_config: DictConfig, paths: RunPaths, model) -> DictConfig:
    """ModelCheckpoint: ``{epoch:06}.ckpt`` + ``last.ckpt`` in the run's checkpoints folder; the top 3
    by ``model.monitor`` when the model has one; ``lightning.modelcheckpoint`` on top. Lightning's
    own ModelCheckpoint is replaced by :class:`PeriodicModelCheckpoint` (same arguments), which
    keeps ``last.ckpt`` on schedule whatever is monitored."""
    params = {"dirpath": paths.ckptdir, "filename": "{epoch:06}", "verbose": True, "save_last": True}
    if getattr(model, "monitor", None):
        params.update(monitor=model.monitor, save_top_k=3)
        print(f"Monitoring {model.monitor} as checkpoint metric.")
    default = OmegaConf.create({"target": PERIODIC_CHECKPOINT, "params": params})
    merged = OmegaConf.merge(default, lightning_config.get("modelcheckpoint") or OmegaConf.create())
    if merged.target in LIGHTNING_CHECKPOINTS:
        merged.target = PERIODIC_CHECKPOINT
    return merged


def callback_configs(lightning_config: DictConfig, paths: RunPaths, config: DictConfig, model) -> DictConfig:
    """The original default callbacks merged with ``lightning.callbacks``."""
    defaults = {
        "setup_callback": {"target": "ldm.training.callbacks.SetupCallback",
                           "params": {"resume": paths.resume_ckpt or "", "now": paths.now, "logdir": paths.logdir,
                                      "ckptdir": paths.ckptdir, "cfgdir": paths.cfgdir,
                                      "config": config, "lightning_config": lightning_config}},
        "image_logger": {"target": "ldm.training.callbacks.ImageLogger",
                         "params": {"batch_frequency": 750, "max_images": 4, "clamp": True}},
        "learning_rate_logger": {"target": "pytorch_lightning.callbacks.LearningRateMonitor",
                                 "params": {"logging_interval": "step"}},
        "cuda_callback": {"target": "ldm.training.callbacks.CUDACallback"},
        "checkpoint_callback": checkpoint_config(lightning_config, paths, model),
    }
    user = lightning_config.get("callbacks") or OmegaConf.create()
    if "metrics_over_trainsteps_checkpoint" in user:
        defaults["metrics_over_trainsteps_checkpoint"] = {
            "target": "pytorch_lightning.callbacks.ModelCheckpoint",
            "params": {"dirpath": os.path.join(paths.ckptdir, "trainstep_checkpoints"),
                       "filename": "{epoch:06}-{step:09}", "verbose": True, "save_top_k": -1,
                       "every_n_train_steps": 10000, "save_weights_only": True}}
    if getattr(model, "lora_layers", None) is not None:
        defaults["lora_checkpoint"] = lora_checkpoint_config(paths, config, model)
    merged = OmegaConf.merge(OmegaConf.create(defaults), user)
    if "ignore_keys_callback" in merged:
        if paths.resume_ckpt:
            merged.ignore_keys_callback.params["ckpt_path"] = paths.resume_ckpt
        else:
            del merged["ignore_keys_callback"]
    return merged


def lora_checkpoint_config(paths: RunPaths, config: DictConfig, model) -> dict:
    """For a model trained with ``lora_config``: its LoRA files go to ``<logdir>/lora/<run name>...``,
    every ``lora_config.save_every`` steps and at the end."""
    name = paths.nowname.split("_", 1)[-1] or "lora"
    base = os.path.basename(str(config.model.get("params", {}).get("ckpt_path") or ""))
    return {"target": "ldm.training.callbacks.LoraCheckpoint",
            "params": {"dirpath": os.path.join(paths.logdir, "lora"), "name": name,
                       "every_n_train_steps": model.lora_config.get("save_every"), "base_model": base}}


def build_callbacks(lightning_config: DictConfig, paths: RunPaths, config: DictConfig, model) -> List:
    """The callbacks; one that its parameters do not build is a ConfigError naming its entry."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    cfgs = callback_configs(lightning_config, paths, config, model)
    callbacks = []
    for name in cfgs:
        try:
            callbacks.append(instantiate_from_config(cfgs[name]))
        except (TypeError, ValueError, MisconfigurationException) as err:
            where = "lightning.modelcheckpoint" if name == "checkpoint_callback" else f"lightning.callbacks.{name}"
            raise ConfigError(f"cannot build {where} ({cfgs[name].get('target')}): {first_line(err)}") from None
    return callbacks


def scaled_learning_rate(config: DictConfig, accumulate: int, num_devices: int, scale_lr: bool) -> float:
    """``accumulate x devices x batch size x base_lr`` (or ``base_lr`` without scaling, or when
    the data section gives no batch size); printed."""
    if "base_learning_rate" not in config.model:
        raise ConfigError("model.base_learning_rate is missing from the config (needed to train)")
    base_lr = float(config.model.base_learning_rate)
    batch_size = OmegaConf.select(config, "data.params.batch_size", default=None)
    if not scale_lr or batch_size is None:
        print("++++ NOT USING LR SCALING ++++" if not scale_lr else "No data.params.batch_size: not scaling the LR")
        print(f"Setting learning rate to {base_lr:.2e}")
        return base_lr
    lr = accumulate * num_devices * int(batch_size) * base_lr
    print(f"Setting learning rate to {lr:.2e} = {accumulate} (accumulate_grad_batches) * {num_devices} "
          f"(num_gpus) * {batch_size} (batchsize) * {base_lr:.2e} (base_lr)")
    return lr
