"""mechprobe: find reasoning trees in language models from their attention.

A reimplementation of the MechanisticProbe of Hou et al., "Towards a Mechanistic
Interpretation of Multi-Step Reasoning Capabilities of Language Models" (EMNLP 2023).

Importing the package changes no environment variable and attaches only a NullHandler to the
"mechprobe" logger; the command lines (and the run_*.sh scripts) set the offline mode and print
the log. Models and tokenizers are always loaded from local folders (local_files_only=True).
"""

import importlib
import logging
import sys
import types

logging.getLogger("mechprobe").addHandler(logging.NullHandler())

__version__ = "0.1.0"

# The public API, imported on first use (so `import mechprobe` stays light):
#   probing your own model:   load_model, load_tokenizer, Item, read_items, probe -> ProbeResult
#   the parts:                capture -> Capture(rows, logits), statement_features, token_spans,
#                             ProbeData, run_probe, knn_predict, random_control, mask_heads,
#                             head_map, selectivity, oof_tree
#   is the tree used?         knockout_study; mechprobe.knockout.knockout (the context manager)
#   an offline HTML view:     view_example, write_view
#   data:                     ksmallest (task A), read_meta / load_items (ProofWriter),
#                             read_entailment_bank / read_street (ARC), generate_proofwriter
_API = {
    "Item": "api",
    "read_items": "api",
    "probe": "api",
    "ProbeResult": "api",
    "ProbeSettings": "llmprobe",
    "load_model": "models",
    "load_tokenizer": "models",
    "random_control": "models",
    "capture": "capture",
    "Capture": "capture",
    "statement_features": "features",
    "token_spans": "features",
    "ProbeData": "probing",
    "run_probe": "probing",
    "knn_predict": "knn",
    "mask_heads": "masking",
    "head_map": "probing",
    "selectivity": "probing",
    "oof_tree": "probing",
    "knockout_study": "knockout",
    "read_meta": "proofwriter",
    "load_items": "proofwriter",
    "read_entailment_bank": "arc",
    "read_street": "arc",
    "answer": "logic",
}
__all__ = sorted(_API) + ["generate_proofwriter", "ksmallest", "view_example", "write_view"]


class _Package(types.ModuleType):
    """The package's module type. A public name that is also a submodule's (`capture`) stays the
    documented object: importing the submodule binds it on the package, which is ignored here (the
    submodule stays in sys.modules, where `from mechprobe.capture import ...` finds it)."""

    @property
    def capture(self):
        return importlib.import_module(".capture", __name__).capture

    @capture.setter
    def capture(self, value):
        pass


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    if name == "view_example":
        return importlib.import_module(".htmlview", __name__).example
    if name == "write_view":
        return importlib.import_module(".htmlview", __name__).write_view
    if name == "generate_proofwriter":
        return importlib.import_module(".proofwriter_gen", __name__).generate
    if name == "ksmallest":
        return importlib.import_module(".ksmallest", __name__)
    raise AttributeError(f"module 'mechprobe' has no attribute {name!r}")
