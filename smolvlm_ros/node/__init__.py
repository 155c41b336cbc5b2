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


class _Interrupted(BaseException):
    """SIGINT/SIGTERM while the node starts: ends the model load at once (not an Exception, so
    that nothing on the way catches it)."""


def main(args: list[str] | None = None) -> int:
    """Run ``vlm_node`` until Ctrl-C / SIGTERM.

    Exit codes: 0 after a signal, 1 when start-up fails (a bad parameter or model, with
    ``autostart``), 2 when the node stopped because of an internal failure (the executor died,
    the worker thread kept dying, or the watchdog found the model stuck), so a supervisor that
    restarts on failure (launch's respawn, systemd's Restart=on-failure) restarts it.

    With ``autostart`` (the default) the node is configured and activated here, before spinning;
    without, it waits unconfigured for lifecycle transitions (``ros2 lifecycle set``).

    rclpy's own signal handler would shut the ROS context down at once, while the worker may be
    mid-inference and about to publish. Instead SIGINT/SIGTERM only raise a flag: the node stops
    its worker, then the executor stops, and only then is the context shut down. Until the node
    is up, a signal ends the start-up at once instead (a model load can take minutes, and
    launch escalates to SIGKILL after a few seconds); a load started by a lifecycle transition,
    on the executor's thread, is ended by exiting the process.
    """
    import signal
    import threading

    import rclpy
    import rclpy.logging
    from rclpy.signals import SignalHandlerOptions

    stop = threading.Event()
    starting = threading.Event()
    starting.set()

    def on_signal(*_) -> None:
        stop.set()
        if starting.is_set():  # once: Ctrl-C reaches the node from launch and the terminal
            starting.clear()
            raise _Interrupted

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    logger = None
    try:
        try:
            rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
            logger = rclpy.logging.get_logger("smolvlm")
            node = _start(logger, stop)
            starting.clear()
        except _Interrupted:
            if logger is not None:
                logger.info("interrupted while starting: exiting")
            rclpy.try_shutdown()
            return 0
        if node is None:
            from smolvlm_ros.node.vlm_node import EXIT_START_FAILED

            rclpy.try_shutdown()
            return EXIT_START_FAILED
        return _serve(node, stop, logger)
    finally:
        # A second Ctrl-C (from launch and the terminal alike) must not kill the interpreter
        # while it finalizes, where Python's handlers are gone: the exit code would be -2.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


def _start(logger, stop):
    """The node, configured and activated if ``autostart``; None (logged) if that failed."""
    from rclpy.lifecycle import TransitionCallbackReturn

    from smolvlm_ros.models.loading import ModelLoadError
    from smolvlm_ros.node.vlm_node import VlmNode
    from smolvlm_ros.settings import SettingsError

    try:
        node = VlmNode(on_fatal=stop.set)
    except (SettingsError, ModelLoadError) as err:
        logger.fatal(f"start-up failed: {err}")
        return None
    except Exception as err:  # e.g. a parameter of the wrong type in the YAML file
        logger.fatal(f"start-up failed: {type(err).__name__}: {err}")
        return None
    if not node.autostart:
        logger.info("autostart is false: unconfigured, waiting for lifecycle transitions")
        return node
    try:
        configured = node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        if configured and node.trigger_activate() == TransitionCallbackReturn.SUCCESS:
            return node
    except BaseException:
        node.destroy_node()
        raise
    logger.fatal(f"start-up failed: {node.config_error or 'activation failed'}")
    node.destroy_node()
    return None


def _serve(node, stop, logger) -> int:
    """Spin until a signal or a fatal failure, then stop in order; the exit code."""
    import os
    import threading

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from smolvlm_ros.node.vlm_node import EXIT_INTERNAL_FAILURE

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
        if node.loading:  # a configure transition is loading on the executor's thread
            logger.info("interrupted while the model loads: exiting")
            os._exit(0)
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
