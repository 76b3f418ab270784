"""Small shared tools below every other layer of ``ldm``: config-driven construction, the one
checkpoint loader/saver, device choice and the one model loader, plus the little helpers the
original ``ldm.util`` exposes. Every name is importable from ``ldm.util`` as before; each idea
lives in its own module:

* :mod:`ldm.util.helpers`: ``exists``, ``default``, ``ismap``, ``isimage``, ``mean_flat``, ``count_params``
* :mod:`ldm.util.images`: ``make_grid``, ``log_txt_as_img`` (images made for viewing)
* :mod:`ldm.util.config`: ``get_obj_from_str``, ``instantiate_from_config``; what a config the user did
  not name may build (``is_model_target``, ``non_model_targets``, ``only_model_targets``,
  ``check_untrusted_yaml``)
* :mod:`ldm.util.paths`: ``REPOSITORY_ROOT``, ``in_cwd_or_repository``
* :mod:`ldm.util.atomic_write`: ``write_atomically``
* :mod:`ldm.util.errors`: ``CheckpointError``, ``CheckpointMismatchError``, ``UntrustedConfigError``,
  ``first_line``
* :mod:`ldm.util.pickle_scan`, :mod:`ldm.util.safe_unpickling`, :mod:`ldm.util.checkpoint_files`: a
  checkpoint's format by content, its structure and pickle checked before torch reads it
  (docs/SECURITY.md)
* :mod:`ldm.util.checkpoints`: ``load_checkpoint``, ``save_checkpoint``, ``checkpoint_tensor_shapes``,
  ``checkpoint_metadata``, ``load_tensors`` (tensors in plain containers, e.g. unCLIP's CLIP statistics)
* :mod:`ldm.util.state_dicts`: ``compare_state_dict``, ``fit_state_dict``, ``load_state_dict_checked``,
  ``select_ema_weights``
* :mod:`ldm.util.devices`: ``pick_device``
* :mod:`ldm.util.model_loading`: ``load_model_from_config``
"""
from ldm.util.atomic_write import write_atomically
from ldm.util.checkpoints import (
    checkpoint_metadata,
    checkpoint_tensor_shapes,
    load_checkpoint,
    load_tensors,
    save_checkpoint,
)
from ldm.util.config import (
    check_untrusted_yaml,
    get_obj_from_str,
    instantiate_from_config,
    is_model_target,
    non_model_targets,
    only_model_targets,
)
from ldm.util.devices import pick_device
from ldm.util.errors import CheckpointError, CheckpointMismatchError, UntrustedConfigError, first_line
from ldm.util.helpers import count_params, default, exists, isimage, ismap, mean_flat
from ldm.util.images import log_txt_as_img, make_grid
from ldm.util.model_loading import load_model_from_config
from ldm.util.paths import REPOSITORY_ROOT, in_cwd_or_repository
from ldm.util.state_dicts import (
                                  StateDictReport,
                                  compare_state_dict,
                                  fit_state_dict,
                                  load_state_dict_checked,
                                  select_ema_weights,
                                  upgrade_legacy_keys,
)

__all__ = [
    "exists", "default", "ismap", "isimage", "mean_flat", "count_params", "log_txt_as_img", "make_grid",
    "get_obj_from_str", "instantiate_from_config", "REPOSITORY_ROOT", "in_cwd_or_repository", "write_atomically",
    "CheckpointError", "CheckpointMismatchError", "first_line", "load_checkpoint", "save_checkpoint",
    "checkpoint_tensor_shapes", "StateDictReport", "compare_state_dict", "upgrade_legacy_keys",
    "select_ema_weights", "load_state_dict_checked", "pick_device", "load_model_from_config",
    "UntrustedConfigError", "fit_state_dict", "is_model_target", "non_model_targets", "only_model_targets",
    "check_untrusted_yaml", "load_tensors", "checkpoint_metadata",
]
