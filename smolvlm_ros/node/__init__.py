"""The ROS 2 layer: ``vlm_node`` and its message conversions. The only part importing rclpy."""

from __future__ import annotations

import sys


def _spin(executor, stop, failures: list[str]) -> None:
    from rclpy.executors import ExternalShutdownException

    try:
        executor.spin()
    except ExternalShutdownException:
        pass
    except BaseException as err:  # every callback contains its errors: this is a bug
        failures.append(f"the executor failed: {type(err).__name__}: {err}")
        raise
    finally:
        stop.set()


def main(args: list[str] | None = None) -> int:
    """Run ``vlm_node`` until Ctrl-C / SIGTERM.

    Exit codes: 0 after a signal, 1 when start-up fails (a bad parameter or model), 2 when the
    node stopped because of an internal failure (the executor died, the worker thread kept
    dying, or the watchdog found the model stuck), so a supervisor that restarts on failure
    (launch's respawn, systemd's Restart=on-failure) restarts it.

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
    from smolvlm_ros.node.vlm_node import EXIT_INTERNAL_FAILURE, EXIT_START_FAILED, VlmNode

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    logger = rclpy.logging.get_logger("smolvlm")
    try:
        node = VlmNode(on_fatal=stop.set)
    except (SettingsError, ModelLoadError) as err:
        logger.fatal(f"start-up failed: {err}")
        rclpy.try_shutdown()
        return EXIT_START_FAILED
    except Exception as err:  # e.g. a parameter of the wrong type in the YAML file
        logger.fatal(f"start-up failed: {type(err).__name__}: {err}")
        rclpy.try_shutdown()
        return EXIT_START_FAILED
    # One thread is plenty: no callback blocks (image callbacks only store the message, ~/ask
    # awaits its answer), and rclpy's MultiThreadedExecutor took ~20x fewer camera frames per
    # second here.
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    failures: list[str] = []
    spinner = threading.Thread(
        target=_spin, args=(executor, stop, failures), name="smolvlm-executor"
    )
    spinner.start()
    try:
        stop.wait()  # returns when a signal, a failed executor or the node's watchdog sets it
        failures += [node.fatal_error] if node.fatal_error else []
        if failures:
            logger.fatal(f"stopping after an internal failure: {'; '.join(failures)}")
        else:
            logger.info("shutting down")
    finally:
        node.destroy_node()
        executor.shutdown()
        spinner.join()
        rclpy.try_shutdown()
    return EXIT_INTERNAL_FAILURE if failures else 0


if __name__ == "__main__":
    sys.exit(main())
