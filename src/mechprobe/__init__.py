"""mechprobe: find reasoning trees in language models from their attention.

A reimplementation of the MechanisticProbe of Hou et al., "Towards a Mechanistic
Interpretation of Multi-Step Reasoning Capabilities of Language Models" (EMNLP 2023).
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never fetch from a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__version__ = "0.1.0"
