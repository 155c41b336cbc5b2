"""The ROS 2 layer: ``vlm_node`` and its message conversions. The only part importing rclpy."""

from __future__ import annotations

import sys


def main(args: list[str] | None = None) -> int:
    """Run ``vlm_node`` until Ctrl-C / SIGTERM; a bad parameter or model fails start-up (exit 1).

    rclpy's own signal handler would shut the ROS context down at once, while the worker may be
    mid-inference and about to publish. Instead SIGINT/SIGTERM only raise a flag: the spin loop
    ends, the node stops its worker, and only then is the context shut down.
    """
    import signal
    import threading

    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from smolvlm_ros.models.loading import ModelLoadError
    from smolvlm_ros.node.settings import SettingsError
    from smolvlm_ros.node.vlm_node import VlmNode

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    logger = rclpy.logging.get_logger("smolvlm")
    try:
        node = VlmNode()
    except (SettingsError, ModelLoadError) as err:
        logger.fatal(f"start-up failed: {err}")
        rclpy.try_shutdown()
        return 1
    except Exception as err:  # e.g. a parameter of the wrong type in the YAML file
        logger.fatal(f"start-up failed: {type(err).__name__}: {err}")
        rclpy.try_shutdown()
        return 1
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
        logger.info("shutting down")
    except ExternalShutdownException:
        pass
    finally:
        node.destroy_node()
        executor.shutdown()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
