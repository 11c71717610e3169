from prvr.train.checkpoint import load_checkpoint, save_checkpoint
from prvr.train.loop import train

__all__ = ["load_checkpoint", "save_checkpoint", "train"]
