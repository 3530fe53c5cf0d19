"""Fast hub downloads: hf_transfer, when it is installed and the installed huggingface_hub still downloads with it.

Call `enable_fast_downloads()` before a download from the hub (a warm start from a hub id, a hub dataset). It
imports nothing but huggingface_hub's constants, so any layer may call it (model/ files may not import it: an
export ships model/ flat; their callers in train/ and data_prep/ do).

huggingface_hub < 1.0 downloads through hf_transfer (parallel, Rust) when HF_HUB_ENABLE_HF_TRANSFER is true and
the package imports; it reads the variable once, into `huggingface_hub.constants`, when it is first imported,
hence the constant is set too. huggingface_hub >= 1.0 downloads with hf_xet and no longer reads the variable
(setting it only prints a deprecation warning), so there nothing is changed.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

HF_TRANSFER_ENV = "HF_HUB_ENABLE_HF_TRANSFER"
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's own reading of boolean variables


def enable_fast_downloads() -> bool:
    """Switch hf_transfer on for this process and the processes it starts, when hf_transfer is installed and
    huggingface_hub uses it; a value the user set for HF_HUB_ENABLE_HF_TRANSFER wins. True when it is on."""
    if importlib.util.find_spec("hf_transfer") is None:
        return False
    constants = importlib.import_module("huggingface_hub.constants")
    if not hasattr(constants, HF_TRANSFER_ENV):  # huggingface_hub >= 1.0: hf_xet, the variable is not read
        return False
    os.environ.setdefault(HF_TRANSFER_ENV, "1")
    enabled = os.environ[HF_TRANSFER_ENV].upper() in _TRUE
    setattr(constants, HF_TRANSFER_ENV, enabled)
    return enabled
