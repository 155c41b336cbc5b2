"""The node's supervision pieces and request checks, tested directly (no DDS traffic).

Property-based (hypothesis) tests fuzz what any client can send: question text, numeric fields
and camera names, which must be accepted as valid values or refused with a clear error, never
anything else.
"""

from __future__ import annotations

import logging
import math
import threading
import time

import pytest
import rclpy
import rclpy.logging
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smolvlm_ros.node.diagnostics import CaptionRates
from smolvlm_ros.node.supervision import FailureCounts, Heartbeat, RestartingThread, SafeLogger
from smolvlm_ros.pipeline.requests import (
    MAX_QUESTION_CHARS,
    MAX_SECONDS,
    RequestError,
    check_max_new_tokens,
    check_question,
    check_seconds,
)
from smolvlm_ros.pipeline.scheduler import UNCHANGED, CameraStats, ManualClock

pytestmark = pytest.mark.ros  # ROS 2: rclpy, messages, nodes over DDS

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None)


# -- logging -----------------------------------------------------------------------------------


def test_rclpy_refuses_a_throttled_call_after_an_unthrottled_one_from_one_site():
    """The defect's cause, pinned: why the node must not use rclpy's throttling."""
    logger = rclpy.logging.get_logger("smolvlm_test_site")

    def log(**kwargs) -> None:  # one call site, as the deprecated `warn` wrapper made it
        logger.warning("frame dropped", **kwargs)

    log()
    with pytest.raises(ValueError, match="Requested logging filters cannot be changed"):
        log(throttle_duration_sec=5.0)


def test_safe_logger_rate_limits_per_key_and_never_raises(caplog, capfd):
    clock = ManualClock(100.0)
    log = SafeLogger(logging.getLogger("smolvlm_test_safe"), clock)
    with caplog.at_level(logging.INFO, logger="smolvlm_test_safe"):
        for _ in range(5):
            log.warning("frame dropped", every_s=5.0, key="decode")
        log.warning("another camera", every_s=5.0, key="other")
        clock.now += 6
        log.warning("frame dropped again", every_s=5.0, key="decode")
        log.info("plain")
    assert [r.getMessage() for r in caplog.records] == [
        "frame dropped",
        "another camera",
        "frame dropped again (4 more like this in the last 5 s)",
        "plain",
    ]
    # Over rclpy's logger, at one call site, mixing rate-limited and plain calls is fine.
    ros_log = SafeLogger(rclpy.logging.get_logger("smolvlm_test_safe_ros"))
    ros_log.warning("random weights")
    ros_log.warning("frame dropped", every_s=5.0)
    ros_log.error("failed", every_s=1.0, key="x")
    ros_log.fatal("fatal")
    ros_log.info("and info again")
    assert "logging failed" not in capfd.readouterr().err  # rclpy took every call


def test_failure_counts_name_every_reason_and_refuse_unknown_ones():
    counts = FailureCounts()
    counts.add("decode_error", "bad frame")
    counts.add("decode_error", "bad frame again")
    assert counts.snapshot()["decode_error"] == 2
    assert counts.snapshot()["worker_restart"] == 0
    assert counts.last == "decode_error: bad frame again"
    with pytest.raises(ValueError, match="unknown failure reason"):
        counts.add("oops", "")


# -- worker supervision ------------------------------------------------------------------------


def test_heartbeat_measures_silence_only_while_busy():
    clock = ManualClock(100.0)
    beat = Heartbeat(clock)
    clock.now += 50
    assert beat.stalled() is None  # idle is not stuck
    beat.start("CaptionJob")
    clock.now += 3
    beat.beat()
    clock.now += 2
    assert beat.stalled() == ("CaptionJob", 2.0)
    beat.idle()
    assert beat.stalled() is None


def test_a_dead_thread_is_restarted_with_its_reason_and_a_crash_loop_is_given_up():
    runs: list[int] = []
    release = threading.Event()

    def target() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise SystemExit("first run dies")
        release.wait()

    thread = RestartingThread(target, "t", max_restarts=2)
    thread.start()
    assert _wait(lambda: not thread.is_alive())
    assert thread.check()  # restarted
    assert thread.crashes[-1].reason == "SystemExit: first run dies"
    assert thread.last_crash(within_s=60) is not None
    assert _wait(lambda: len(runs) == 2) and thread.is_alive()
    release.set()
    assert thread.join(5)

    def always_dies() -> None:
        raise RuntimeError("broken")

    looping = RestartingThread(always_dies, "loop", max_restarts=2)
    looping.start()
    verdicts = []
    for _ in range(4):
        assert _wait(lambda: not looping.is_alive())
        verdicts.append(looping.check())
    assert verdicts == [True, True, False, False]


def _wait(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def test_caption_rates_compare_turns_with_the_target_over_a_window():
    rates = CaptionRates(window_s=10.0)
    stats = CameraStats(received=0, captioned=0)
    t = 0.0
    measured = None
    while t <= 12.0:
        stats.captioned += 1 if int(t * 10) % 10 == 0 else 0  # 1 caption a second ...
        stats.dropped[UNCHANGED] += 1 if int(t * 10) % 10 == 5 else 0  # ... and 1 unchanged
        measured = rates.update(t, {"a": stats}, {"a": 5.0}, {"a": 30.0})["a"]
        if t < 10.0:
            assert measured is None  # not measured over a whole window yet
        t += 0.1
    turns, target = measured
    assert target == 5.0
    assert turns == pytest.approx(2.0, abs=0.15)
    # A camera publishing slower than its caption rate is held to its input rate.
    assert rates.update(13.0, {"a": stats}, {"a": 5.0}, {"a": 1.5})["a"][1] == 1.5


# -- request checks (fuzzed) -------------------------------------------------------------------


@FUZZ
@given(st.text(max_size=MAX_QUESTION_CHARS + 50))
def test_question_checks_accept_clean_text_or_refuse_clearly(text):
    try:
        question = check_question(text)
    except RequestError as err:
        assert str(err).startswith("question ")
        return
    assert question == text.strip() and question
    assert len(question) <= MAX_QUESTION_CHARS
    assert all(c in "\n\t\r" or c.isprintable() or not c.isascii() for c in question)


@FUZZ
@given(st.one_of(st.floats(), st.integers(min_value=-(2**64), max_value=2**64), st.booleans()))
def test_seconds_checks_accept_sane_values_or_refuse_clearly(value):
    try:
        seconds = check_seconds("timeout_s", value, "the default")
    except RequestError as err:
        assert str(err).startswith("timeout_s ")
        return
    assert math.isfinite(seconds) and 0.0 <= seconds <= MAX_SECONDS


@FUZZ
@given(st.integers(min_value=-(2**40), max_value=2**40))
def test_max_new_tokens_checks(value):
    try:
        tokens = check_max_new_tokens(value, default=32, limit=4096)
    except RequestError as err:
        assert str(err).startswith("max_new_tokens ")
        return
    assert 1 <= tokens <= 4096
    assert tokens == (value or 32)


@pytest.fixture(scope="module")
def ros_node():
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("smolvlm_name_check", namespace="/robot1", context=context)
    yield node
    node.destroy_node()
    rclpy.shutdown(context=context)


@settings(FUZZ, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.text(max_size=300),
        st.from_regex(r"[~/]?[a-z0-9_{}/]{0,20}", fullmatch=True),
        st.sampled_from(["/front/image_raw", "front/image_raw", "~/x", "", "  "]),
    )
)
def test_camera_names_resolve_to_a_camera_or_are_refused_clearly(ros_node, name):
    from smolvlm_ros.node.vlm_node import AskError, camera_of

    aliases = {
        "/front/image_raw": "/front/image_raw",
        "front/image_raw": "/robot1/front/image_raw",
        "/robot1/front/image_raw": "/robot1/front/image_raw",
    }
    try:
        camera = camera_of(name, aliases, ros_node.resolve_topic_name, "/front/image_raw")
    except AskError as err:
        assert str(err).startswith("camera ") or str(err).startswith("unknown camera ")
        return
    assert camera in aliases.values()
