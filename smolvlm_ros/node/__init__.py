"""The ROS 2 layer: ``vlm_node`` and its message conversions. The only part importing rclpy."""

from __future__ import annotations

import sys


def main(args: list[str] | None = None) -> int:
    """Run ``vlm_node`` until Ctrl-C / SIGTERM; a bad parameter or model fails start-up (exit 1)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    from smolvlm_ros.models.loading import ModelLoadError
    from smolvlm_ros.node.settings import SettingsError
    from smolvlm_ros.node.vlm_node import VlmNode

    rclpy.init(args=args)
    try:
        node = VlmNode()
    except (SettingsError, ModelLoadError) as err:
        rclpy.logging.get_logger("smolvlm").fatal(f"start-up failed: {err}")
        rclpy.try_shutdown()
        return 1
    except Exception as err:  # e.g. a parameter of the wrong type
        rclpy.logging.get_logger("smolvlm").fatal(f"start-up failed: {type(err).__name__}: {err}")
        rclpy.try_shutdown()
        return 1
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
