"""The ROS 2 layer: ``vlm_node`` and its message conversions. The only part importing rclpy."""

from __future__ import annotations

import sys


def _spin(executor, stop) -> None:
    from rclpy.executors import ExternalShutdownException

    try:
        executor.spin()
    except ExternalShutdownException:
        pass
    finally:
        stop.set()


def main(args: list[str] | None = None) -> int:
    """Run ``vlm_node`` until Ctrl-C / SIGTERM; a bad parameter or model fails start-up (exit 1).

    rclpy's own signal handler would shut the ROS context down at once, while the worker may be
    mid-inference and about to publish. Instead SIGINT/SIGTERM only raise a flag: the node stops
    its worker, then the executor stops, and only then is the context shut down.
    """
    import signal
    import threading

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
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
    # One thread is plenty: no callback blocks (image callbacks only store the message, ~/ask
    # awaits its answer), and rclpy's MultiThreadedExecutor took ~20x fewer camera frames per
    # second here.
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=_spin, args=(executor, stop), name="smolvlm-executor")
    spinner.start()
    try:
        stop.wait()  # returns when a signal (or a failed executor) sets it
        logger.info("shutting down")
    finally:
        node.destroy_node()
        executor.shutdown()
        spinner.join()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
