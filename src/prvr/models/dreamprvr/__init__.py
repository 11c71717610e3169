from prvr.models.dreamprvr.model import DreamPRVR, TrainOutputs, VideoTokens

__all__ = ["DreamPRVR", "TrainOutputs", "VideoTokens"]
