"""samr1: GRPO for reasoning segmentation with a multimodal LLM and SAM as the reward provider."""

from samr1.sample import CoordTransform, SegSample

__all__ = ["CoordTransform", "SegSample"]
__version__ = "0.1.0"
