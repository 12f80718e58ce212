"""seqformer: a readable, fast Transformer encoder-decoder toolkit for translation."""

from seqformer.config import DecodeConfig, ModelConfig, TrainConfig
from seqformer.training.trainer import train
from seqformer.translator import Translation, Translator

__version__ = "0.1.0"

__all__ = ["DecodeConfig", "ModelConfig", "TrainConfig", "Translation", "Translator", "train", "__version__"]
