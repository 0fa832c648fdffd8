"""mechprobe: find reasoning trees in language models from their attention.

A reimplementation of the MechanisticProbe of Hou et al., "Towards a Mechanistic
Interpretation of Multi-Step Reasoning Capabilities of Language Models" (EMNLP 2023).

Importing the package changes no environment variable and attaches only a NullHandler to the
"mechprobe" logger; the command lines (and the run_*.sh scripts) set the offline mode and print
the log. Models and tokenizers are always loaded from local folders (local_files_only=True).
"""
import logging

logging.getLogger("mechprobe").addHandler(logging.NullHandler())

__version__ = "0.1.0"
