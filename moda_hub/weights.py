"""Safe, checked loading of a pipeline folder: safetensors only, every weight present and sound.

diffusers' ``from_pretrained`` is permissive in ways a user cannot act on: a weight missing from
a ``.safetensors`` file is silently *initialised at random*, NaN weights load without a word, and
a broken folder gives deep errors ("no file named config.json found in directory ...") that do
not say which file is wrong. This module checks a pipeline folder before diffusers reads it and
the loaded components after, and turns every problem into one :class:`~moda_hub.errors.WeightsError`
that names the file and says what to do.

What is enforced (``ModaPipeline.from_pretrained`` calls :func:`load_pipeline`):

- weights come only from ``.safetensors`` files (``use_safetensors=True``): a component whose
  only weights are a pickle (``.bin``/``.pt``/``.ckpt``) is refused, never unpickled;
- ``model_index.json`` names the pipeline class by name (no custom pipeline code from the
  folder) and every component comes from the ``moda_hub`` package (no other module is
  imported on the folder's say-so); ``trust_remote_code`` and ``custom_pipeline`` are refused;
- each weighted component (a diffusers ``ModelMixin``) stays under a size cap read from its
  safetensors headers (:data:`MAX_PARAMETERS`, :data:`MAX_WEIGHT_BYTES`), its config is checked
  against those headers while the model is built on the meta device (stopped as soon as it asks
  for more values than the file holds), and it has a readable
  safetensors file whose tensors are exactly those the model expects, with the same shapes
  (no missing, extra or resized tensor), all finite.

Example:
    >>> from moda_hub.weights import check_pipeline_folder
    >>> check_pipeline_folder("pretrained/moda-base", ModaPipeline)          # raises WeightsError when broken
    {'moda': 'ModaModel', 'composer': 'FacialComposer', 'renderer': 'WarpRenderer', 'audio_encoder': 'WhisperTinyEncoder'}
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import re
from typing import Dict, Iterable, List

from moda_hub.errors import InvalidParameterError, WeightsError

#: What every weights message ends with.
FIX = "re-download the pipeline, or rebuild it with `make train`"

#: diffusers' file names for a component's weights (single file, or shards with an index).
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

#: Size cap per weighted component, checked from the safetensors headers before anything is
#: built: values (parameters + buffers) and bytes on disk. moda-base's largest component holds
#: about 1.2 million values; a 2-billion-value component is no moda-hub model.
MAX_PARAMETERS = 2_000_000_000
MAX_WEIGHT_BYTES = 8 * 2 ** 30
#: Submodules a component may create while its config is checked (moda-base: a few hundred).
MAX_MODULES = 100_000

#: Components may only come from these packages.
ALLOWED_LIBRARIES = ("moda_hub",)

#: ``from_pretrained`` options that would run code shipped with a model; always refused.
REFUSED_OPTIONS = ("trust_remote_code", "custom_pipeline", "custom_revision")

_REPO_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)?$")


# ----------------------------------------------------------------------------- folder

def resolve_pipeline_folder(name_or_path, **hub_kwargs) -> str:
    """The local folder of a pipeline: ``name_or_path`` itself when it is a folder, else the
    Hub cache folder of the repo id ``name_or_path`` (downloaded through diffusers, safetensors
    only).

    Raises:
        WeightsError: no such folder and no such (cached or reachable) Hub repo.
    """
    path = os.fspath(name_or_path)
    if os.path.isdir(path):
        return path
    if os.path.exists(path) or not _REPO_ID.match(path):
        raise WeightsError(f"no pipeline folder at {path!r} — {FIX} (or pass the folder or Hub "
                           "repo id of a moda-hub pipeline)")
    from diffusers import DiffusionPipeline

    options = {k: v for k, v in hub_kwargs.items()
               if k in ("cache_dir", "force_download", "local_files_only", "token", "revision",
                        "proxies", "variant")}
    try:
        return os.fspath(DiffusionPipeline.download(path, use_safetensors=True, **options))
    except Exception as err:  # noqa: BLE001 - hub/network errors of many kinds
        raise WeightsError(f"cannot find the pipeline {path!r} locally or on the Hub "
                           f"({_one_line(err)}) — check the folder or repo id, or {FIX}") from None


def check_pipeline_folder(folder, pipeline_class) -> Dict[str, str]:
    """Check a pipeline folder before loading it; return ``{component: class name}``.

    Args:
        folder: the pipeline folder (``model_index.json`` + one sub-folder per component).
        pipeline_class: the pipeline class whose ``__init__`` names the components
            (:class:`~moda_hub.pipeline.ModaPipeline`).

    Raises:
        WeightsError: naming the file that is missing, unreadable or wrong.
    """
    folder = os.fspath(folder)
    index_path = os.path.join(folder, "model_index.json")
    index = _read_json(index_path, "the pipeline index")
    name = index.get("_class_name")
    if name != pipeline_class.__name__:
        raise WeightsError(f"{index_path!r} names the pipeline {name!r}, expected "
                           f"{pipeline_class.__name__!r} (custom pipeline code is never loaded) — {FIX}")
    expected = [p for p in inspect.signature(pipeline_class.__init__).parameters if p != "self"]
    found = {}
    optional = set(getattr(pipeline_class, "_optional_components", None) or ())
    for component in expected:
        entry = index.get(component)
        if component in optional and (entry is None or list(entry) == [None, None]):
            continue                      # an optional component the folder does not have
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2
                and all(isinstance(x, str) for x in entry)):
            raise WeightsError(f"{index_path!r} does not list the component {component!r} as "
                               f"[library, class] — {FIX}")
        cls = _component_class(component, entry[0], entry[1], index_path)
        _check_component_folder(folder, component, cls)
        found[component] = cls.__name__
    return found


def _component_class(component: str, library: str, class_name: str, index_path: str):
    """The class ``library.class_name``, only from :data:`ALLOWED_LIBRARIES`."""
    from diffusers.configuration_utils import ConfigMixin

    if library.split(".")[0] not in ALLOWED_LIBRARIES:
        raise WeightsError(f"{index_path!r} asks for component {component!r} from {library!r}; "
                           f"only {', '.join(ALLOWED_LIBRARIES)} components are loaded — {FIX}")
    try:
        module = importlib.import_module(library)
    except ImportError:
        raise WeightsError(f"{index_path!r}: component {component!r} comes from {library!r}, "
                           f"which this moda_hub does not have — upgrade moda-hub, or {FIX}") from None
    cls = getattr(module, class_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, ConfigMixin)):
        raise WeightsError(f"{index_path!r}: {library}.{class_name} (component {component!r}) is "
                           f"not a moda-hub component class — {FIX}")
    return cls


def _is_weighted(cls) -> bool:
    from diffusers.models.modeling_utils import ModelMixin

    return issubclass(cls, ModelMixin)


def _check_component_folder(folder: str, component: str, cls) -> None:
    sub = os.path.join(folder, component)
    if not os.path.isdir(sub):
        raise WeightsError(f"the component folder {sub!r} is missing — {FIX}")
    config_path = os.path.join(sub, cls.config_name)
    _read_json(config_path, f"the {component} config")
    if not _is_weighted(cls):
        return
    files = weight_files(sub)
    if not files:
        pickles = sorted(f for f in os.listdir(sub) if f.endswith(PICKLE_SUFFIXES))
        extra = (f" (only pickle weights {', '.join(pickles)}, which are never loaded: they can run "
                 "code)") if pickles else ""
        raise WeightsError(f"the {component} weights {os.path.join(sub, WEIGHTS_NAME)!r} are "
                           f"missing{extra} — {FIX}")
    saved: Dict[str, tuple] = {}
    for path in files:
        saved.update(read_header(path))
    shown = files[0] if len(files) == 1 else sub
    _check_size(saved, files, shown, component)
    _compare(saved, _expected_shapes(cls, sub, config_path, budget=_numel(saved.values())), shown, component)


def _numel(shapes) -> int:
    total = 0
    for shape in shapes:
        n = 1
        for d in shape:
            n *= int(d)
        total += n
    return total


def _check_size(saved: Dict[str, tuple], files: List[str], shown: str, component: str) -> None:
    """The size cap: at most :data:`MAX_PARAMETERS` values and :data:`MAX_WEIGHT_BYTES` bytes of
    weights per component, read from the headers (nothing is loaded)."""
    count = _numel(saved.values())
    size = sum(os.path.getsize(p) for p in files)
    if count > MAX_PARAMETERS or size > MAX_WEIGHT_BYTES:
        raise WeightsError(f"the {component} weights {shown!r} hold {count:,} values ({size / 2 ** 30:.1f} GiB), "
                           f"more than moda-hub loads for one component ({MAX_PARAMETERS:,} values, "
                           f"{MAX_WEIGHT_BYTES / 2 ** 30:.0f} GiB) — this is not a moda-hub pipeline; {FIX}")


class _TooBig(Exception):
    """Raised inside a model's constructor once it asks for more than its weights file holds."""


def _expected_shapes(cls, component_folder: str, config_path: str, budget: int = None) -> Dict[str, tuple]:
    """``{tensor name: shape}`` the component's config asks for, from a model built on the
    meta device (no memory, no weights). Config warnings are left to the real load.

    ``budget`` (values in the safetensors file): the construction is stopped as soon as the
    config asks for more parameters and buffers than that (plus a margin), or for more than
    :data:`MAX_MODULES` submodules — a config with ``n_layers`` 10**6 fails at once instead of
    building a million layers (even on the meta device that takes hours and gigabytes)."""
    import torch
    import torch.nn.modules.module as module_hooks
    from diffusers.utils import logging as diffusers_logging

    try:
        config = cls.load_config(component_folder)
    except Exception as err:  # noqa: BLE001
        raise WeightsError(f"the config {config_path!r} cannot be read ({_one_line(err)}) — {FIX}") from None
    limit = None if budget is None else 2 * budget + 1_000_000      # buffers and non-saved tensors: margin
    asked = {"values": 0, "modules": 0}

    def on_tensor(module, name, tensor):
        if tensor is not None and limit is not None:
            asked["values"] += tensor.numel()
            if asked["values"] > limit:
                raise _TooBig(f"more than {limit:,} values")

    def on_module(module, name, submodule):
        asked["modules"] += 1
        if asked["modules"] > MAX_MODULES:
            raise _TooBig(f"more than {MAX_MODULES:,} submodules")

    hooks = [module_hooks.register_module_parameter_registration_hook(on_tensor),
             module_hooks.register_module_buffer_registration_hook(on_tensor),
             module_hooks.register_module_module_registration_hook(on_module)]
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        with torch.device("meta"):
            model = cls.from_config(config)
    except _TooBig as err:
        raise WeightsError(f"the config {config_path!r} asks for a far larger {cls.__name__} than its weights "
                           f"hold ({err}; the weights have {budget:,}) — config and weights do not match; "
                           f"{FIX}") from None
    except Exception as err:  # noqa: BLE001 - a config the class rejects
        raise WeightsError(f"the config {config_path!r} does not describe a valid "
                           f"{cls.__name__} ({_one_line(err)}) — {FIX}") from None
    finally:
        for hook in hooks:
            hook.remove()
        diffusers_logging.set_verbosity(verbosity)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _compare(saved: Dict[str, tuple], expected: Dict[str, tuple], shown: str, component: str) -> None:
    """Raise WeightsError unless ``saved`` has exactly the tensors and shapes of ``expected``."""
    missing = sorted(set(expected) - set(saved))
    if missing:
        raise WeightsError(f"the weights file {shown!r} lacks {len(missing)} tensor(s) the "
                           f"{component} needs ({_names(missing)}); they would be random — {FIX}")
    extra = sorted(set(saved) - set(expected))
    if extra:
        raise WeightsError(f"the weights file {shown!r} holds {len(extra)} tensor(s) the "
                           f"{component} does not have ({_names(extra)}): weights and config "
                           f"do not match — {FIX}")
    wrong = [f"{k} {tuple(saved[k])} vs {tuple(expected[k])} in the config" for k in sorted(expected)
             if tuple(saved[k]) != tuple(expected[k])]
    if wrong:
        raise WeightsError(f"the weights file {shown!r} has tensors of the wrong shape for the "
                           f"{component} config ({_names(wrong)}) — {FIX}")


def weight_files(component_folder: str) -> List[str]:
    """The safetensors files of one component folder: the single file, or the shards its
    index lists; empty when there is none."""
    single = os.path.join(component_folder, WEIGHTS_NAME)
    if os.path.isfile(single):
        return [single]
    index = os.path.join(component_folder, WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        data = _read_json(index, "the weights index")
        shards = sorted(set((data.get("weight_map") or {}).values()))
        paths = [os.path.join(component_folder, s) for s in shards]
        for p in paths:
            if os.path.dirname(os.path.abspath(p)) != os.path.abspath(component_folder) \
                    or not os.path.isfile(p):
                raise WeightsError(f"{index!r} lists the shard {os.path.basename(p)!r}, which is "
                                   f"missing — {FIX}")
        return paths
    return []


def read_header(path: str) -> Dict[str, tuple]:
    """``{tensor name: shape}`` from a safetensors file's header (no tensor data is read).

    Raises:
        WeightsError: the file is empty, truncated or not safetensors.
    """
    from safetensors import safe_open

    if os.path.getsize(path) == 0:
        raise WeightsError(f"the weights file {path!r} is empty (0 bytes) — {FIX}")
    try:
        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise WeightsError(f"the weights file {path!r} is corrupted or truncated "
                           f"({_one_line(err)}) — {FIX}") from None


# ----------------------------------------------------------------------------- loaded components

def verify_component(model, component_folder: str, component: str = "component") -> None:
    """Check that a loaded ``ModelMixin`` holds exactly the tensors of its safetensors
    file(s) — none missing (diffusers would have initialised it at random), none extra, same
    shapes — and that every floating-point weight is finite.

    Raises:
        WeightsError: naming the file and the tensors at fault.
    """
    import torch

    files = weight_files(component_folder)
    if not files:
        raise WeightsError(f"the {component} weights "
                           f"{os.path.join(component_folder, WEIGHTS_NAME)!r} are missing — {FIX}")
    saved: Dict[str, tuple] = {}
    for path in files:
        saved.update(read_header(path))
    shown = files[0] if len(files) == 1 else component_folder
    state = model.state_dict()
    _compare(saved, {k: tuple(v.shape) for k, v in state.items()}, shown, component)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightsError(f"the weights file {shown!r} holds NaN or infinite values "
                           f"({_names(bad)}) — {FIX}")


def refuse_remote_code(kwargs: dict) -> None:
    """Raise InvalidParameterError when ``kwargs`` ask to run code shipped with a model."""
    for key in REFUSED_OPTIONS:
        if kwargs.get(key):
            raise InvalidParameterError(f"{key}={kwargs[key]!r} is not supported — moda-hub only "
                                        "loads its own components from safetensors weights")
    if kwargs.get("use_safetensors") is False:
        raise InvalidParameterError("use_safetensors=False is not supported — moda-hub loads "
                                    "weights only from .safetensors files (pickles can run code)")


def load_pipeline(pipeline_class, loader, name_or_path, **kwargs):
    """Load a pipeline with every check of this module.

    Args:
        pipeline_class: the pipeline class (for its component names).
        loader: ``callable(folder, **kwargs)`` that does the actual loading (diffusers'
            ``DiffusionPipeline.from_pretrained`` bound to ``pipeline_class``).
        name_or_path: a pipeline folder or a Hub repo id.
        **kwargs: passed to ``loader`` (``use_safetensors`` is forced to True).

    Returns:
        the loaded pipeline.

    Raises:
        WeightsError: anything wrong with the folder or the weights (never random weights).
        InvalidParameterError: ``trust_remote_code``/``custom_pipeline``/``use_safetensors=False``.
    """
    refuse_remote_code(kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k not in REFUSED_OPTIONS}
    kwargs["use_safetensors"] = True
    folder = resolve_pipeline_folder(name_or_path, **kwargs)
    check_pipeline_folder(folder, pipeline_class)
    try:
        pipe = loader(folder, **kwargs)
    except WeightsError:
        raise
    except Exception as err:  # noqa: BLE001 - diffusers/torch raise many kinds
        raise WeightsError(f"cannot load the pipeline in {os.fspath(folder)!r} "
                           f"({_one_line(err)}) — {FIX}") from None
    verify_pipeline(pipe, folder)
    return pipe


def load_component(cls, loader, name_or_path, subfolder=None, **kwargs):
    """Load one weighted component (a ``ModelMixin``) from its folder with every check of this
    module: config present, safetensors only, exactly the expected tensors and shapes, all finite.

    Args:
        cls: the component class; loader: ``callable(folder, **kwargs)`` doing the load
            (diffusers' ``ModelMixin.from_pretrained`` bound to ``cls``).
        name_or_path: the component folder, or a pipeline folder with ``subfolder``.
        subfolder (str, optional): the component's folder inside ``name_or_path``.

    Raises:
        WeightsError: naming the file at fault (never a component with random weights).
    """
    refuse_remote_code(kwargs)
    kwargs = {k: v for k, v in kwargs.items() if k not in REFUSED_OPTIONS}
    kwargs["use_safetensors"] = True
    folder = os.fspath(name_or_path)
    sub = os.path.join(folder, subfolder) if subfolder else folder
    if not os.path.isdir(sub):
        raise WeightsError(f"no {cls.__name__} folder at {sub!r} — train one (`moda train --stage "
                           f"renderer`) or pass the folder that holds its config.json and safetensors")
    _check_component_folder(os.path.dirname(os.path.abspath(sub)), os.path.basename(os.path.abspath(sub)), cls)
    try:
        model = loader(sub, **kwargs)
    except WeightsError:
        raise
    except Exception as err:  # noqa: BLE001 - diffusers/torch raise many kinds
        raise WeightsError(f"cannot load the {cls.__name__} in {sub!r} ({_one_line(err)}) — {FIX}") from None
    verify_component(model, sub, cls.__name__)
    return model


def verify_pipeline(pipe, folder) -> None:
    """:func:`verify_component` for every weighted component of a loaded pipeline."""
    from diffusers.models.modeling_utils import ModelMixin

    for name, module in pipe.components.items():
        if isinstance(module, ModelMixin):
            verify_component(module, os.path.join(os.fspath(folder), name), name)


# ----------------------------------------------------------------------------- helpers

def _read_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise WeightsError(f"{what} {path!r} is missing — {FIX}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{what} {path!r} is not valid JSON ({_one_line(err)}) — {FIX}") from None
    if not isinstance(data, dict):
        raise WeightsError(f"{what} {path!r} is not a JSON object — {FIX}")
    return data


def _names(items: Iterable[str], n: int = 4) -> str:
    items = list(items)
    more = f", … {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit - 1] + "…"

