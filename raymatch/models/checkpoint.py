"""Checkpoint IO: state dicts as safetensors bytes, content ids, and checked loading into the zoo's models.

A model's id is derived from the bytes of its checkpoint (:func:`checkpoint_id`), so every object the
store derives from the model can be keyed by it. Checkpoints are read from safetensors or from a
``torch.save`` zip archive loaded with ``weights_only=True``; nothing else is ever unpickled.
"""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from collections.abc import Mapping
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .factory import build_architecture
from .zoo import build_model

_TORCH_ZIP_MAGIC = b"PK\x03\x04"
_SAFETENSORS_LENGTH_BYTES = 8
_ID_HEX_CHARS = 16
#: What to do about a checkpoint that pickles objects (a whole model, ``torch.save(model, path)``).
_WHOLE_MODEL = ("it pickles an object, not just tensors (a whole model?): save `model.state_dict()` instead "
                "(torch.save(model.state_dict(), path))")


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit the architecture it is loaded into."""


def checkpoint_bytes(model: nn.Module) -> bytes:
    """Serialise a model's ``state_dict()`` (parameters and buffers) as safetensors bytes.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    bytes
        Deterministic for given weights: the same state gives the same bytes, hence the same
        :func:`checkpoint_id`.
    """
    # Copying every tensor makes it contiguous and CPU-resident, and keeps safetensors from refusing
    # state dicts whose entries share storage (tied weights).
    tensors = {
        key: tensor.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        for key, tensor in model.state_dict().items()
    }
    return safetensors.torch.save(tensors)


def checkpoint_id(data: bytes) -> str:
    """Return a checkpoint's id: the first 16 hex characters of the SHA-256 of its bytes.

    Parameters
    ----------
    data : bytes
        The checkpoint exactly as stored.

    Returns
    -------
    str
    """
    return hashlib.sha256(data).hexdigest()[:_ID_HEX_CHARS]


def _unreadable(name: str, reason: str) -> CheckpointError:
    return CheckpointError(f"{name} is not a readable safetensors or torch state_dict checkpoint: {reason}")


def _safetensors_header_problem(data: bytes, size: int | None = None) -> str | None:
    """Return why ``data`` (the first bytes of ``size`` in all) does not start like a safetensors file, or None."""
    size = len(data) if size is None else size
    if size < _SAFETENSORS_LENGTH_BYTES + 1:
        return f"it is only {size} bytes long"
    header_length = int.from_bytes(data[:_SAFETENSORS_LENGTH_BYTES], "little")
    if data[_SAFETENSORS_LENGTH_BYTES : _SAFETENSORS_LENGTH_BYTES + 1] != b"{":
        return "it starts with neither a safetensors header nor a torch zip archive signature"
    available = size - _SAFETENSORS_LENGTH_BYTES
    if header_length > available:
        return f"its safetensors header claims {header_length} bytes but only {available} follow (truncated?)"
    return None


def _torch_load_reason(error: Exception) -> str:
    message = str(error)
    # torch's weights-only refusal is a multi-paragraph advice text; the one line naming the refused
    # global is the reason worth reporting.
    for line in message.splitlines():
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].split(" Please use", 1)[0].strip().rstrip(".")
            hint = f"; {_WHOLE_MODEL}" if "Unsupported global" in detail else ""
            return f"torch.load(weights_only=True) refused it: {detail}{hint}"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Weights only load failed"):
        # a global from a blocked module (os, posix, builtins …) is named on the line after the advice
        return f"torch.load(weights_only=True) refused it: {lines[1]}"
    first_line = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    return f"torch.load failed: {first_line}"


def _state_dict_paths(loaded: Any, prefix: str = "", depth: int = 0) -> list[str]:
    """Dotted paths of the dicts of tensors nested in ``loaded`` (at most 3 levels down), largest first."""
    found = []
    if isinstance(loaded, Mapping) and depth < 3:
        for key, value in loaded.items():
            if isinstance(value, Mapping) and isinstance(key, str):
                path = f"{prefix}{key}"
                if value and all(isinstance(item, torch.Tensor) for item in value.values()):
                    found.append((len(value), path))
                found += [(0, inner) for inner in _state_dict_paths(value, f"{path}.", depth + 1)]
    return [path for _, path in sorted(found, key=lambda item: -item[0])]


def _as_state_dict(loaded: Any, name: str) -> dict[str, torch.Tensor]:
    if not isinstance(loaded, Mapping):
        raise _unreadable(name, f"it holds an object of type {type(loaded).__name__}, not a dict of tensors")
    state: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        if not isinstance(key, str):
            raise _unreadable(name, f"it holds a dict with a non-string key {key!r}")
        if not isinstance(value, torch.Tensor):
            paths = _state_dict_paths(loaded)
            hint = f"; set population.checkpoint.key: {paths[0]}" if paths else ""
            raise _unreadable(name, f"entry {key!r} is of type {type(value).__name__}, not a tensor{hint}")
        state[key] = value
    return state


def unwrap_state_dict(loaded: Any, *, name: str = "checkpoint", key: str | None = None,
                      strip_prefix: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: under a dotted ``key``, with ``strip_prefix`` removed.

    Parameters
    ----------
    loaded : mapping
        What ``torch.load(weights_only=True)`` or safetensors returned.
    name : str
        What to call the checkpoint in messages.
    key : str, optional
        A dotted path of nested dict keys (``state_dict``, ``model.ema``).
    strip_prefix : str, optional
        Removed from the start of every parameter name that has it (DDP's ``module.``); it must start at least one.

    Returns
    -------
    dict of str to torch.Tensor

    Raises
    ------
    CheckpointError
        A ``key`` that is not there, a prefix that starts no name, or anything but a dict of tensors.
    """
    if key:
        walked = []
        for part in key.split("."):
            if not isinstance(loaded, Mapping) or part not in loaded:
                keys = ", ".join(repr(k) for k in loaded) if isinstance(loaded, Mapping) else "none"
                where = f"under {'.'.join(walked)!r} " if walked else ""
                raise CheckpointError(f"population.checkpoint.key: {key!r} is not in checkpoint {name}: {part!r} is "
                                      f"missing {where}(keys there: {keys})")
            loaded = loaded[part]
            walked.append(part)
    state = _as_state_dict(loaded, name)
    if strip_prefix:
        if not any(parameter.startswith(strip_prefix) for parameter in state):
            first = next(iter(state), None)
            raise CheckpointError(f"population.checkpoint.strip_prefix: {strip_prefix!r} starts no parameter name "
                                  f"of checkpoint {name} (the first is {first!r})")
        state = {parameter.removeprefix(strip_prefix): tensor for parameter, tensor in state.items()}
    return state


def load_state_dict(data: bytes, *, name: str = "checkpoint", key: str | None = None,
                    strip_prefix: str | None = None) -> dict[str, torch.Tensor]:
    r"""Read a state dict from safetensors bytes or from a ``torch.save`` zip archive.

    The format is detected from the first bytes: a ``torch.save`` zip archive starts with
    ``PK\\x03\\x04`` and is loaded with ``torch.load(..., weights_only=True)``; safetensors starts
    with an 8-byte little-endian header length followed by a JSON object. Anything else (including
    legacy non-zip ``torch.save`` files and plain pickles) is refused without being unpickled.

    Parameters
    ----------
    data : bytes
        The checkpoint's bytes.
    name : str, default "checkpoint"
        What to call the checkpoint in error messages, e.g. its path.
    key, strip_prefix : str, optional
        Where the state dict is nested and what to strip from its names (:func:`unwrap_state_dict`).

    Returns
    -------
    dict of str to torch.Tensor
        On the CPU, in the checkpoint's own order.

    Raises
    ------
    CheckpointError
        When the bytes are empty, truncated, corrupt, in another format, or hold anything other than
        a flat dict of tensors.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name}: checkpoint data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise _unreadable(name, "it is empty")
    if data.startswith(_TORCH_ZIP_MAGIC):
        try:
            loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as error:
            raise _unreadable(name, _torch_load_reason(error)) from error
        return unwrap_state_dict(loaded, name=name, key=key, strip_prefix=strip_prefix)
    problem = _safetensors_header_problem(data)
    if problem is not None:
        raise _unreadable(name, problem)
    try:
        loaded = safetensors.torch.load(data)
    except Exception as error:
        raise _unreadable(name, f"safetensors failed: {error}") from error
    return unwrap_state_dict(loaded, name=name, key=key, strip_prefix=strip_prefix)


def file_problem(path: str) -> str | None:
    """Why the local file at ``path`` cannot be a checkpoint, from its first bytes; None when it may be one.

    Parameters
    ----------
    path : str

    Returns
    -------
    str or None
        ``it is a folder``, ``it is only 3 bytes long``, ``it starts with neither …`` (see :func:`load_state_dict`).
    """
    if os.path.isdir(path):
        return "it is a folder"
    with open(path, "rb") as handle:
        head = handle.read(_SAFETENSORS_LENGTH_BYTES + 1)
    if head.startswith(_TORCH_ZIP_MAGIC):
        return None
    return _safetensors_header_problem(head, os.path.getsize(path))


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _prefix_hint(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """A hint to strip a prefix when stripping it from the checkpoint's names would make them the model's."""
    first = next(iter(found), "")
    parts = first.split(".")
    for end in range(1, len(parts)):
        prefix = ".".join(parts[:end]) + "."
        if {key.removeprefix(prefix) for key in found} == set(expected):
            return (f"; the checkpoint's names start with {prefix!r}: set population.checkpoint.strip_prefix: "
                    f"{prefix!r}")
    return ""


def _first_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str | None:
    """Describe the first entry, in the model's order, where ``found`` does not fit ``expected``."""
    for key, tensor in expected.items():
        if key not in found:
            return (f"parameter {key!r} (shape {_shape(tensor)}) is missing from the checkpoint"
                    + _prefix_hint(expected, found))
        if found[key].shape != tensor.shape:
            return (
                f"parameter {key!r} has shape {_shape(found[key])} in the checkpoint but {_shape(tensor)} in the model"
            )
    for key, tensor in found.items():
        if key not in expected:
            return f"the checkpoint has an unexpected parameter {key!r} (shape {_shape(tensor)})"
    return None


def model_id_of(data: bytes, options: Mapping[str, Any] | None = None, *, name: str = "checkpoint",
                architecture: str | None = None) -> str:
    """A model's id: :func:`checkpoint_id` of its bytes, or of its unwrapped state dict under checkpoint options.

    With ``key`` or ``strip_prefix`` given, the id is that of the unwrapped state dict as safetensors bytes (see
    :func:`unwrap_state_dict`): what else the file holds (epoch, optimiser state) changes no id.

    Parameters
    ----------
    data : bytes
    options : mapping, optional
        ``key`` and ``strip_prefix``.
    name : str
    architecture : str, optional
        :func:`~raymatch.models.factory.architecture_digest` of a non-zoo architecture: the id is then that of
        the weights and the architecture together (the same weights in edited code are another model). Zoo
        models have none, and their ids are the weights' alone.

    Returns
    -------
    str
    """
    if not options or not (options.get("key") or options.get("strip_prefix")):
        weights = checkpoint_id(data)
    else:
        state = load_state_dict(data, name=name, key=options.get("key"), strip_prefix=options.get("strip_prefix"))
        tensors = {key: tensor.detach().clone(memory_format=torch.contiguous_format) for key, tensor in state.items()}
        weights = checkpoint_id(safetensors.torch.save(tensors))
    return weights if architecture is None else checkpoint_id(f"{weights}:{architecture}".encode())


def check_checkpoint(model: nn.Module, data: bytes, *, arch: str, name: str = "checkpoint",
                     options: Mapping[str, Any] | None = None) -> None:
    """Refuse a checkpoint before any work is spent on it: unreadable, not fitting ``model``, or not finite.

    Parameters
    ----------
    model : torch.nn.Module
        The architecture; it may live on the ``meta`` device (only its state's names and shapes are used).
    data : bytes
    arch, name : str
        The architecture's and the checkpoint's names, for messages.
    options : mapping, optional
        ``key`` and ``strip_prefix`` (``population.checkpoint``).

    Raises
    ------
    CheckpointError
        As :func:`load_model` does, and for a tensor holding NaN or Inf (a diverged training run): its
        activations would be NaN.
    """
    state = load_state_dict(data, name=name, **dict(options or {}))
    mismatch = _first_mismatch(model.state_dict(), state)
    if mismatch is not None:
        raise CheckpointError(f"checkpoint {name} does not fit {arch}: {mismatch}")
    for key, tensor in state.items():
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            raise CheckpointError(f"checkpoint {name}: {key!r} holds {int((~finite).sum())} non-finite values "
                                  "(NaN or Inf)")


def load_model(arch: str, data: bytes, *, name: str = "checkpoint", architecture: Mapping[str, Any] | None = None,
               checkpoint_options: Mapping[str, Any] | None = None, architecture_digest: str | None = None,
               **arch_kwargs: Any) -> tuple[nn.Module, str]:
    """Build a zoo model and load a checkpoint into it, checking that every parameter fits.

    Parameters
    ----------
    arch : str
        A :func:`~raymatch.models.build_model` name.
    data : bytes
        The checkpoint's bytes (safetensors or a ``torch.save`` zip archive of a state dict).
    name : str, default "checkpoint"
        What to call the checkpoint in error messages, e.g. its path.
    architecture : mapping, optional
        An architecture built with :func:`~raymatch.models.factory.build_architecture` instead of the zoo's
        ``arch`` (a factory, torchvision or timm).
    checkpoint_options : mapping, optional
        ``key`` and ``strip_prefix`` (:func:`unwrap_state_dict`).
    architecture_digest : str, optional
        Folded into the model id (:func:`model_id_of`), for a non-zoo ``architecture``.
    **arch_kwargs
        Passed to :func:`~raymatch.models.build_model` (``in_channels``, ``num_classes``, ``width``,
        ``input_size``).

    Returns
    -------
    model : torch.nn.Module
        In eval mode, on the CPU.
    model_id : str
        :func:`model_id_of` ``data`` (:func:`checkpoint_id` of ``data`` without checkpoint options or
        ``architecture_digest``).

    Raises
    ------
    CheckpointError
        When the checkpoint cannot be read, or does not fit: the first parameter or buffer, in the
        model's order, that is missing or has another shape is named; failing that, the first unexpected one.
    ValueError
        When ``arch`` or ``arch_kwargs`` are not valid for :func:`~raymatch.models.build_model`.
    """
    model = build_architecture(architecture) if architecture else build_model(arch, **arch_kwargs)
    options = dict(checkpoint_options or {})
    state = load_state_dict(data, name=name, **options)
    mismatch = _first_mismatch(model.state_dict(), state)
    if mismatch is not None:
        raise CheckpointError(f"checkpoint {name} does not fit {arch}: {mismatch}")
    model.load_state_dict(state, strict=True)
    model.eval()
    return model, model_id_of(data, options, name=name, architecture=architecture_digest)


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> str:
    """Write a model's :func:`checkpoint_bytes` to a local file atomically and return its id.

    The bytes go to a temporary file in the same folder, which is then renamed over ``path``, so
    readers never see a half-written checkpoint; on failure the temporary file is removed.

    Parameters
    ----------
    model : torch.nn.Module
    path : str or os.PathLike
        The destination file; its folder must exist. An existing file is replaced.

    Returns
    -------
    str
        :func:`checkpoint_id` of the bytes written.
    """
    data = checkpoint_bytes(model)
    path = os.fspath(path)
    folder, file_name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{file_name}.{uuid.uuid4().hex}.tmp")
    # os.open with mode 0o666 lets the umask decide the permissions, as for any ordinary file.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.remove(temporary)
        except FileNotFoundError:
            pass
        raise
    return checkpoint_id(data)
