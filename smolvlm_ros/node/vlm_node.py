"""``vlm_node``: cameras in, captions and answers out.

A thin layer over the core: parameters become a :class:`NodeSettings`, image callbacks only
store the message in the camera's latest-wins slot (no decoding, no inference), one worker
thread takes jobs from the :class:`FrameScheduler` and runs them through the shared
:class:`JobRunner`, and ``~/ask`` queues its question ahead of captions and waits for the
answer. All scheduling decisions use the node's ROS clock, so ``use_sim_time`` replays behave
like live runs.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, fields, replace
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy._rclpy_pybind11 import RCLError
from rclpy.action import ActionServer, CancelResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from smolvlm_ros.action import Describe
from smolvlm_ros.engine import (
    CAPTION,
    FINISH_CANCELLED,
    FINISH_DEADLINE,
    DeadlineExceeded,
    Engine,
    EngineConfig,
    Frame,
    Result,
)
from smolvlm_ros.msg import Caption, VqaAnswer
from smolvlm_ros.node.diagnostics import LatencyWindow, diagnostics
from smolvlm_ros.node.messages import stamp_to_ns, to_caption, to_vqa_answer
from smolvlm_ros.node.settings import (
    DESCRIPTIONS,
    LIVE,
    MAX_NEW_TOKENS_LIMIT,
    NUMBER_LISTS,
    RANGES,
    STRING_LISTS,
    NodeSettings,
    SettingsError,
)
from smolvlm_ros.pipeline.change import ChangeGate
from smolvlm_ros.pipeline.intake import ImageDecodeError, is_compressed_topic, message_to_rgb
from smolvlm_ros.pipeline.runner import CaptionSettings, JobRunner
from smolvlm_ros.pipeline.scheduler import FrameScheduler, QuestionJob, SchedulerFull
from smolvlm_ros.srv import AskQuestion


class AskError(Exception):
    """A ~/ask request cannot be answered; the message goes to the caller as ``error``."""


@dataclass(frozen=True)
class ReceivedImage:
    """A camera message as received; decoded only if the worker actually uses it."""

    camera: str
    msg: Any  # sensor_msgs Image or CompressedImage
    received_at: float  # time.monotonic()

    def to_frame(self) -> Frame:
        return Frame(
            image=message_to_rgb(self.msg),
            camera=self.camera,
            stamp_ns=stamp_to_ns(self.msg.header.stamp),
            frame_id=self.msg.header.frame_id,
            received_at=self.received_at,
        )


class VlmNode(Node):
    """The SmolVLM node. Raises :class:`SettingsError` / ``ModelLoadError`` from the constructor."""

    def __init__(self, node_name: str = "smolvlm", **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.settings = self._read_settings()
        s = self.settings
        # Cameras are named by their resolved topic (after namespace and remapping), as
        # `ros2 topic list` shows them; ~/ask also accepts the names as configured.
        self._camera_aliases: dict[str, str] = {}
        cameras = []
        for topic in s.image_topics:
            try:
                resolved = self.resolve_topic_name(topic)
            except RCLError as err:
                raise SettingsError(
                    f"image_topics: {topic!r} is not a valid topic name ({err})"
                ) from None
            self._camera_aliases[topic] = resolved
            self._camera_aliases[resolved] = resolved
            cameras.append(resolved)
        self.get_logger().info(f"loading model {s.model!r} (device={s.device}, dtype={s.dtype})")
        self.engine = Engine.from_config(
            EngineConfig(
                model=s.model, backend=s.backend, device=s.device, dtype=s.dtype, tiling=s.tiling()
            )
        )
        if self.engine.is_random:
            self.get_logger().warn(
                f"model {s.model!r} has RANDOM weights: its captions are meaningless text "
                "(for tests and benchmarks; set `model` to a real checkpoint for real captions)"
            )
        backend = self.engine.backend
        self.get_logger().info(f"model ready on {backend.name}/{backend.device} ({backend.dtype})")

        self.default_camera = cameras[0]
        self.scheduler = FrameScheduler(
            s.camera_configs(cameras),
            max_frame_age_s=s.max_frame_age_s,
            mosaic=s.mosaic,
            mosaic_rate_hz=s.caption_rate_hz,
            max_pending_questions=s.max_pending_questions,
            clock=self._ros_seconds,
        )
        self._stop = threading.Event()
        self.runner = JobRunner(
            self.engine,
            self.scheduler,
            to_frame=ReceivedImage.to_frame,
            captions=CaptionSettings(s.caption_prompt, s.max_new_tokens, s.questions),
            change_gate=ChangeGate(s.change_threshold),
            should_stop=self._stop.is_set,
            warn=lambda text: self.get_logger().warn(text, throttle_duration_sec=5.0),
        )

        self.latency = LatencyWindow()
        self._last_diagnostics: tuple[float, dict[str, int]] = (time.monotonic(), {})
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.caption_pub = self.create_publisher(Caption, "~/caption", 10)
        self.answer_pub = self.create_publisher(VqaAnswer, "~/answer", 10)
        self.diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        image_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=s.qos_depth,
            reliability=(
                ReliabilityPolicy.RELIABLE
                if s.qos_reliability == "reliable"
                else ReliabilityPolicy.BEST_EFFORT
            ),
        )
        for camera in cameras:
            msg_type = CompressedImage if is_compressed_topic(camera) else Image
            self.create_subscription(
                msg_type,
                camera,
                lambda msg, camera=camera: self._on_image(camera, msg),
                image_qos,
            )
        # Reentrant: an awaiting ~/ask holds its callback group until answered; in the node's
        # default (mutually exclusive) group it would hold up every other request and camera.
        self.ask_srv = self.create_service(
            AskQuestion, "~/ask", self._on_ask, callback_group=ReentrantCallbackGroup()
        )
        # On the steady clock: diagnostics keep coming when a replay's /clock pauses.
        self.create_timer(
            1.0, self._publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME)
        )
        self.describe_server = ActionServer(
            self,
            Describe,
            "~/describe",
            execute_callback=self._execute_describe,
            cancel_callback=lambda _: CancelResponse.ACCEPT,
            callback_group=ReentrantCallbackGroup(),
        )

        self._worker = threading.Thread(target=self._work, name="smolvlm-worker", daemon=True)
        self._worker.start()
        mode = "one mosaic of all cameras" if s.mosaic else "per camera"
        self.get_logger().info(
            f"listening on {', '.join(cameras)}; captions on {self.caption_pub.topic_name} "
            f"at up to {s.caption_rate_hz} Hz {mode}; questions on {self.ask_srv.service_name}"
        )

    def _ros_seconds(self) -> float:
        return self.get_clock().now().nanoseconds / 1e9

    # -- parameters ------------------------------------------------------------------------

    def _read_settings(self) -> NodeSettings:
        defaults = NodeSettings()
        values = {}
        for field in fields(NodeSettings):
            name, default = field.name, getattr(defaults, field.name)
            numeric = isinstance(default, float) or name in NUMBER_LISTS
            descriptor = ParameterDescriptor(
                description=DESCRIPTIONS[name],
                read_only=name not in LIVE,  # model, device, topics, tiling: restart the node
                # YAML writes `2` or `[1, 2]` for these: accept integers for float parameters.
                dynamic_typing=numeric,
            )
            if name in RANGES and not numeric:
                lo, hi = RANGES[name]
                descriptor.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=1)]
            if name in NUMBER_LISTS:
                initial = None
            elif name in STRING_LISTS:
                initial = Parameter.Type.STRING_ARRAY
            else:
                initial = list(default) if isinstance(default, tuple) else default
            value = self.declare_parameter(name, initial, descriptor).value
            values[name] = _coerce(name, value, default)
        # ROS ignores parameters nobody declares; a typo in a params file must not go unnoticed.
        unknown = sorted(
            name
            for name in self._parameter_overrides
            if not self.has_parameter(name) and not name.startswith("qos_overrides.")
        )
        if unknown:
            known = ", ".join(f.name for f in fields(NodeSettings))
            raise SettingsError(f"unknown parameter(s) {', '.join(unknown)}; known: {known}")
        return NodeSettings(**values).validate()

    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validate and apply live changes (ROS has already refused read-only ones)."""
        ours = {p.name: p.value for p in params if p.name in LIVE}
        if not ours:
            return SetParametersResult(successful=True)
        try:
            changes = {
                name: _coerce(name, value, getattr(self.settings, name))
                for name, value in ours.items()
            }
            settings = replace(self.settings, **changes).validate()
        except SettingsError as err:
            return SetParametersResult(successful=False, reason=str(err))
        self.settings = settings
        names = self.scheduler.cameras
        self.scheduler.reconfigure(
            rates_hz={c.name: c.caption_rate_hz for c in settings.camera_configs(names)},
            max_frame_age_s=settings.max_frame_age_s,
            mosaic_rate_hz=settings.caption_rate_hz,
        )
        self.runner.captions = CaptionSettings(
            settings.caption_prompt, settings.max_new_tokens, settings.questions
        )
        self.runner.change_gate.threshold = settings.change_threshold
        self.get_logger().info(f"reconfigured: {', '.join(sorted(ours))}")
        return SetParametersResult(successful=True)

    # -- intake ----------------------------------------------------------------------------

    def _on_image(self, camera: str, msg: Any) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec / 1e9
        self.scheduler.offer(camera, ReceivedImage(camera, msg, time.monotonic()), stamp)

    # -- ~/ask -----------------------------------------------------------------------------

    async def _on_ask(self, request: AskQuestion.Request, response: AskQuestion.Response):
        """Never blocks the executor: the question is queued and the callback awaits it."""
        try:
            job = self._question_job(request, request.question)
            await self._wait_for(self._submit(job))
            response.answer = to_vqa_answer(self._answer_of(job.future))
            response.success = True
        except AskError as err:
            response.success = False
            response.error = str(err)
            self.get_logger().warn(f"~/ask refused: {err}")
        return response

    def _submit(self, job: QuestionJob):
        try:
            return self.scheduler.ask(job)
        except SchedulerFull as err:
            raise AskError(f"node is busy: {err}; try again later") from err
        except RuntimeError as err:  # closed: shutting down
            raise AskError(str(err)) from err

    # -- ~/describe (action) ---------------------------------------------------------------

    async def _execute_describe(self, goal_handle) -> Describe.Result:
        """Like ~/ask, with the text streamed as feedback and cancellation."""
        goal = goal_handle.request
        tokens: list[int] = []

        def on_token(token: int) -> None:  # on the worker thread
            tokens.append(token)
            text = self.engine.tokenizer.decode(tokens, skip_special_tokens=True)
            goal_handle.publish_feedback(
                Describe.Feedback(partial_text=text, generated_tokens=len(tokens))
            )

        try:
            job = self._question_job(goal, goal.prompt or self.settings.caption_prompt)
            job.on_token = on_token
            job.cancel = lambda: goal_handle.is_cancel_requested
            await self._wait_for(self._submit(job))
            if goal_handle.is_cancel_requested:
                goal_handle.canceled()
                partial = job.future.result() if job.future.exception() is None else None
                answer = to_vqa_answer(partial) if partial is not None else VqaAnswer()
                return Describe.Result(success=False, error="cancelled", answer=answer)
            answer = to_vqa_answer(self._answer_of(job.future))
        except AskError as err:
            goal_handle.abort()
            return Describe.Result(success=False, error=str(err))
        goal_handle.succeed()
        return Describe.Result(success=True, answer=answer)

    async def _wait_for(self, future) -> None:
        """Await a concurrent Future completed by the worker thread, inside the executor."""
        done = self.executor.create_future()
        # A done callback makes completion (from the worker thread) wake the executor.
        done.add_done_callback(lambda _: None)
        future.add_done_callback(lambda _: done.set_result(None))
        await done

    def _question_job(self, request: Any, question: str) -> QuestionJob:
        """A job from an ~/ask request or a ~/describe goal (fields they share)."""
        s = self.settings
        question = question.strip()
        if not question:
            raise AskError("question is empty")
        max_new_tokens = request.max_new_tokens or s.max_new_tokens
        if max_new_tokens > MAX_NEW_TOKENS_LIMIT:
            raise AskError(
                f"max_new_tokens {max_new_tokens} is above the limit {MAX_NEW_TOKENS_LIMIT}"
            )
        if len(request.image.data) > 0:
            camera = ""
            try:
                item = ReceivedImage("", request.image, time.monotonic()).to_frame()
            except ImageDecodeError as err:
                raise AskError(f"the request's image: {err}") from err
        else:
            name = request.camera.strip() or self.default_camera
            camera = self._camera_aliases.get(name) or self._camera_aliases.get(
                self.resolve_topic_name(name)
            )
            if camera is None:
                known = ", ".join(self.scheduler.cameras)
                raise AskError(f"unknown camera {name!r}: this node listens on {known}")
            item = self.scheduler.latest(camera)
            if item is None:
                raise AskError(f"no image received yet on {camera}")
            max_age_s = getattr(request, "max_age_s", 0.0)
            if max_age_s < 0:
                raise AskError(f"max_age_s {max_age_s} is negative")
            age = self._ros_seconds() - self.scheduler.latest_stamp(camera)
            if max_age_s and age > max_age_s:
                raise AskError(
                    f"the latest frame on {camera} is {age:.2f} s old (max_age_s "
                    f"{max_age_s}): is the camera still publishing?"
                )
        timeout_s = getattr(request, "timeout_s", 0.0)
        if timeout_s < 0:
            raise AskError(f"timeout_s {timeout_s} is negative")
        return QuestionJob(
            camera=camera,
            item=item,
            question=question,
            max_new_tokens=max_new_tokens,
            deadline=time.monotonic() + (timeout_s or s.ask_timeout_s),
        )

    def _answer_of(self, future) -> Result:
        timeout = "no answer in time (timeout_s, or the ask_timeout_s parameter)"
        try:
            result = future.result()
        except DeadlineExceeded:
            raise AskError(timeout) from None
        except ImageDecodeError as err:
            raise AskError(f"the camera's latest image: {err}") from err
        except RuntimeError as err:  # e.g. the node is shutting down
            raise AskError(str(err)) from err
        except Exception as err:  # the worker's failure, passed on to the caller
            raise AskError(f"inference failed: {err}") from err
        if result.finish_reason == FINISH_DEADLINE:
            raise AskError(timeout)
        if result.finish_reason == FINISH_CANCELLED:
            raise AskError("the node is shutting down")
        return result

    # -- worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            job = self.scheduler.next_job(timeout=0.5)
            if job is None:
                continue
            results = self.runner.run(job)
            if self._stop.is_set():  # cut short by shutdown: not a real result
                break
            if isinstance(job, QuestionJob):  # ~/ask answers go to their caller only
                continue
            for result in results:
                self.latency.add(result.timing.total_ms)
                if result.kind == CAPTION:
                    self.caption_pub.publish(to_caption(result))
                else:
                    self.answer_pub.publish(to_vqa_answer(result))

    def _publish_diagnostics(self) -> None:
        stats = self.scheduler.stats()
        now = time.monotonic()
        elapsed = now - self._last_diagnostics[0]
        rates = {
            camera: (s.received - self._last_diagnostics[1].get(camera, 0)) / elapsed
            for camera, s in stats.items()
        }
        self._last_diagnostics = (now, {camera: s.received for camera, s in stats.items()})
        self.diagnostics_pub.publish(
            diagnostics(
                self.get_fully_qualified_name(),
                self.get_clock().now().to_msg(),
                stats,
                self._ros_seconds(),
                self.engine,
                self.scheduler.pending_questions(),
                self.latency,
                rates,
            )
        )

    def destroy_node(self) -> None:
        """Stop the worker (cutting its generation short) before tearing down ROS handles."""
        if hasattr(self, "_worker"):
            self._stop.set()
            self.scheduler.close()
            self._worker.join()
            self.describe_server.destroy()
        super().destroy_node()


def _coerce(name: str, value: Any, default: Any) -> Any:
    """The parameter's value in the settings' type: floats from ints, tuples from lists,
    an unset list as its default."""
    if isinstance(default, float) or name in NUMBER_LISTS:
        return _numbers(name, value, default)
    if isinstance(default, tuple):
        return default if value is None else tuple(value)
    return value


def _numbers(name: str, value: Any, default: Any) -> Any:
    """A float, or a tuple of floats, from what the parameter file gave (ints included)."""

    def number(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise SettingsError(f"{name} must be a number, got {value!r}")
        return float(v)

    if isinstance(default, float):
        return number(value)
    if value is None:
        return default
    if not isinstance(value, list | tuple):
        raise SettingsError(f"{name} must be a list of numbers, got {value!r}")
    return tuple(number(v) for v in value)
