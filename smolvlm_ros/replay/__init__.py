"""Replay rosbags through the same scheduling and engine as the node, offline and deterministic.

`smolvlm-replay BAG --out DIR` (or `python -m smolvlm_ros.replay`) writes results.jsonl and a
new rosbag2 holding the input images and the Caption / VqaAnswer messages at their source stamps.
"""

from smolvlm_ros.replay.run import ReplayConfig, ReplayStats, replay

__all__ = ["ReplayConfig", "ReplayStats", "replay"]
