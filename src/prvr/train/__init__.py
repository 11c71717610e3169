from prvr.train.loop import train

__all__ = ["train"]
