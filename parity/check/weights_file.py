"""Load a user's weights file into a model (``parity port --weights``), refusing bad files in one line.

torch: ``.safetensors``, or ``.pt``/``.pth`` read with ``weights_only=True`` (a pickle that holds
code or foreign objects is refused, never run). Keras: ``.weights.h5``. A file that does not fit
the model is refused with a summary of the mismatching names and shapes, before anything is loaded.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from parity.errors import UsageError

_SHOWN = 3  # mismatches named in the one-line summary


def load_weights_file(model: Any, framework: str, path: Path) -> None:
    """Load ``path`` into ``model`` (a torch module or a Keras model), or raise ``UsageError``."""
    if not path.is_file():
        raise UsageError(f"--weights {path}: no such file; give the source model's weights file")
    if framework == "torch":
        _load_torch(model, path)
    else:
        _load_keras(model, path)


def read_torch_state(path: Path) -> Mapping[str, Any]:
    """A flat name -> tensor mapping from a safetensors or weights-only torch file."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise UsageError(f"--weights {path}: not a readable safetensors file ({type(exc).__name__}: "
                             f"{_short(exc)}); it may be truncated: save the weights again") from exc
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)  # never unpickle code
        except pickle.UnpicklingError as exc:  # torch's weights-only unpickler: a foreign pickle, or no pickle
            raise UsageError(f"--weights {path}: refused by torch.load(weights_only=True): it is not a tensor-only "
                             "torch file (corrupt, or a pickle of other objects: untrusted pickles are never run); "
                             "save model.state_dict() with torch.save, or use .safetensors") from exc
        except (RuntimeError, OSError, EOFError, ValueError) as exc:
            raise UsageError(f"--weights {path}: not a readable torch file ({type(exc).__name__}: "
                             f"{_short(exc)}); save the state_dict again") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"--weights {path}: holds a {type(state).__name__}, not a state_dict (a mapping of "
                         "names to tensors); save model.state_dict()")
    return state


def _load_torch(model: Any, path: Path) -> None:
    state = read_torch_state(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = [f"{len(x)} {what} (e.g. {', '.join(x[:_SHOWN])})"
                 for what, x in (("missing", missing), ("unexpected", unexpected),
                                 ("with other shapes, file vs model", shapes)) if x]
        raise UsageError(f"--weights {path}: does not fit the torch model: {'; '.join(parts)}; give the weights "
                         "of this model at this size")
    model.load_state_dict(state, strict=True)


def _load_keras(model: Any, path: Path) -> None:
    if not path.name.endswith(".weights.h5"):
        raise UsageError(f"--weights {path}: Keras weights must be a .weights.h5 file (model.save_weights)")
    try:
        model.load_weights(str(path))
    except Exception as exc:  # h5py and Keras report a foreign or corrupt file in many types
        raise UsageError(f"--weights {path}: Keras cannot load it into this model ({type(exc).__name__}: "
                         f"{_short(exc)}); give a .weights.h5 saved from this model at this size") from exc


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."
