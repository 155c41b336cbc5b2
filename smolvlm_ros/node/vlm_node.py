"""``vlm_node``: cameras in, captions and answers out.

A thin layer over the core: parameters become a :class:`NodeSettings`, image callbacks only
store the message in the camera's latest-wins slot (no decoding, no inference), one worker
thread takes jobs from the :class:`FrameScheduler` and runs them through the shared
:class:`JobRunner`, and ``~/ask`` queues its question ahead of captions and waits for the
answer. All scheduling decisions use the node's ROS clock, so ``use_sim_time`` replays behave
like live runs.

Supervision: no exception in a callback or the worker ends the node's work. Callbacks contain
their failures (a request gets an ``error``), the worker fails only the job at hand, a dead
worker thread is restarted, and a watchdog thread expires requests the worker cannot reach in
time and ends the process (exit code 2) when the model stops making progress, so that a
supervisor restarts it instead of leaving a zombie.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import time
from collections.abc import Callable
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
from smolvlm_ros.node.diagnostics import CaptionRates, LatencyWindow, WorkerHealth, diagnostics
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
from smolvlm_ros.node.supervision import (
    CALLBACK_ERROR,
    DECODE_ERROR,
    EXPIRED,
    WORKER_RESTART,
    FailureCounts,
    Heartbeat,
    RestartingThread,
    SafeLogger,
)
from smolvlm_ros.pipeline.change import ChangeGate
from smolvlm_ros.pipeline.intake import ImageDecodeError, is_compressed_topic, message_to_rgb
from smolvlm_ros.pipeline.requests import (
    RequestError,
    check_max_new_tokens,
    check_question,
    check_seconds,
)
from smolvlm_ros.pipeline.runner import CaptionSettings, JobRunner
from smolvlm_ros.pipeline.scheduler import (
    FrameScheduler,
    QuestionJob,
    SchedulerClosed,
    SchedulerFull,
)
from smolvlm_ros.srv import AskQuestion

# Exit codes of the process (see node/__init__.py): start-up failed / stopped by a failure.
EXIT_START_FAILED = 1
EXIT_INTERNAL_FAILURE = 2
# The watchdog's period, and the grace after a request's deadline before it answers for a
# worker that could not (a generation that reaches its deadline ends at the next token anyway).
WATCHDOG_PERIOD_S = 0.1
EXPIRY_GRACE_S = 0.1
# How long a worker crash keeps /diagnostics at ERROR.
CRASH_REPORTED_FOR_S = 60.0
# Shutdown waits this long for the worker (a backend stuck in native code cannot be joined).
WORKER_JOIN_S = 10.0


class AskError(Exception):
    """A ~/ask request cannot be answered; the message goes to the caller as ``error``."""


def contained(reply: Callable[..., Any] | None = None):
    """Decorate a ROS callback so that no exception escapes into the executor.

    An exception that escapes a callback ends ``executor.spin()`` and with it the node; here it
    is counted, logged, and, for requests, turned into a reply by ``reply(self, *args, err)``.
    """

    def decorate(callback):
        def on_error(self, args, err: Exception):
            detail = f"{callback.__name__}: {type(err).__name__}: {err}"
            self.failures.add(CALLBACK_ERROR, detail)
            self.log.error(f"contained an unexpected error in {detail}", every_s=5.0)
            return reply(self, *args, err) if reply is not None else None

        if inspect.iscoroutinefunction(callback):

            @functools.wraps(callback)
            async def guarded_async(self, *args):
                try:
                    return await callback(self, *args)
                except Exception as err:
                    return on_error(self, args, err)

            return guarded_async

        @functools.wraps(callback)
        def guarded(self, *args):
            try:
                return callback(self, *args)
            except Exception as err:
                return on_error(self, args, err)

        return guarded

    return decorate


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
    """The SmolVLM node. Raises :class:`SettingsError` / ``ModelLoadError`` from the constructor.

    ``on_fatal`` is called (from the watchdog thread) when the node cannot go on; ``fatal_error``
    then says why, and the process should exit with :data:`EXIT_INTERNAL_FAILURE`.
    """

    def __init__(
        self,
        node_name: str = "smolvlm",
        on_fatal: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(node_name, **kwargs)
        self.log = SafeLogger(self.get_logger())
        self.failures = FailureCounts()
        self.fatal_error: str | None = None
        self._on_fatal = on_fatal or (lambda: None)
        self.settings = self._read_settings()
        s = self.settings
        cameras = self._resolve_cameras(s.image_topics)
        self.log.info(f"loading model {s.model!r} (device={s.device}, dtype={s.dtype})")
        self.engine = Engine.from_config(
            EngineConfig(
                model=s.model, backend=s.backend, device=s.device, dtype=s.dtype, tiling=s.tiling()
            )
        )
        if self.engine.is_random:
            self.log.warning(
                f"model {s.model!r} has RANDOM weights: its captions are meaningless text "
                "(for tests and benchmarks; set `model` to a real checkpoint for real captions)"
            )
        backend = self.engine.backend
        self.log.info(f"model ready on {backend.name}/{backend.device} ({backend.dtype})")

        self.default_camera = cameras[0]
        self.scheduler = FrameScheduler(
            s.camera_configs(cameras),
            max_frame_age_s=s.max_frame_age_s,
            mosaic=s.mosaic,
            mosaic_rate_hz=s.caption_rate_hz,
            max_pending_questions=s.max_pending_questions,
            max_questions_per_caption=s.max_questions_per_caption,
            clock=self._ros_seconds,
        )
        self._stop = threading.Event()
        self.heartbeat = Heartbeat()
        self.runner = JobRunner(
            self.engine,
            self.scheduler,
            to_frame=ReceivedImage.to_frame,
            captions=CaptionSettings(s.caption_prompt, s.max_new_tokens, s.questions),
            change_gate=ChangeGate(s.change_threshold),
            should_stop=self._stop.is_set,
            report=self._on_failure,
            progress=self.heartbeat.beat,
        )
        self.latency = LatencyWindow()
        self.caption_rates = CaptionRates()
        self._last_diagnostics: tuple[float, dict[str, int]] = (time.monotonic(), {})
        # Questions handed to the worker and not answered yet, for the watchdog to expire.
        self._open_questions: set[QuestionJob] = set()
        self._open_lock = threading.Lock()
        self._create_interfaces(cameras)

        self.worker = RestartingThread(self._work, name="smolvlm-worker")
        self.worker.start()
        self._watchdog = threading.Thread(target=self._watch, name="smolvlm-watchdog", daemon=True)
        self._watchdog.start()
        mode = "one mosaic of all cameras" if s.mosaic else "per camera"
        self.log.info(
            f"listening on {', '.join(cameras)}; captions on {self.caption_pub.topic_name} "
            f"at up to {s.caption_rate_hz} Hz {mode}; questions on {self.ask_srv.service_name}"
        )

    def _resolve_cameras(self, topics: tuple[str, ...]) -> list[str]:
        """Cameras are named by their resolved topic (after namespace and remapping), as `ros2
        topic list` shows them; ~/ask also accepts the names as configured."""
        self._camera_aliases: dict[str, str] = {}
        cameras = []
        for topic in topics:
            try:
                resolved = self.resolve_topic_name(topic)
            except RCLError as err:
                raise SettingsError(
                    f"image_topics: {topic!r} is not a valid topic name ({err})"
                ) from None
            self._camera_aliases[topic] = resolved
            self._camera_aliases[resolved] = resolved
            cameras.append(resolved)
        return cameras

    def _create_interfaces(self, cameras: list[str]) -> None:
        s = self.settings
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

    def _refuse_parameters(self, params: list[Parameter], err: Exception) -> SetParametersResult:
        return SetParametersResult(successful=False, reason=f"internal error: {err}")

    @contained(reply=_refuse_parameters)
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
            max_questions_per_caption=settings.max_questions_per_caption,
        )
        self.runner.captions = CaptionSettings(
            settings.caption_prompt, settings.max_new_tokens, settings.questions
        )
        self.runner.change_gate.threshold = settings.change_threshold
        self.log.info(f"reconfigured: {', '.join(sorted(ours))}")
        return SetParametersResult(successful=True)

    # -- intake ----------------------------------------------------------------------------

    @contained()
    def _on_image(self, camera: str, msg: Any) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec / 1e9
        self.scheduler.offer(camera, ReceivedImage(camera, msg, time.monotonic()), stamp)

    # -- ~/ask -----------------------------------------------------------------------------

    def _ask_failed(self, request, response, err: Exception) -> AskQuestion.Response:
        response.success = False
        response.error = f"internal error: {type(err).__name__}: {err}"
        return response

    @contained(reply=_ask_failed)
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
            self.log.warning(f"~/ask refused: {err}", every_s=5.0, key="ask refused")
        return response

    def _submit(self, job: QuestionJob):
        try:
            future = self.scheduler.ask(job)
        except SchedulerFull as err:
            raise AskError(f"node is busy: {err}; try again later") from err
        except SchedulerClosed as err:
            raise AskError(str(err)) from err
        with self._open_lock:
            self._open_questions.add(job)
        future.add_done_callback(lambda _: self._forget(job))
        return future

    def _forget(self, job: QuestionJob) -> None:
        with self._open_lock:
            self._open_questions.discard(job)

    # -- ~/describe (action) ---------------------------------------------------------------

    def _describe_failed(self, goal_handle, err: Exception) -> Describe.Result:
        with contextlib.suppress(Exception):  # already terminal: the result still goes out
            goal_handle.abort()
        return Describe.Result(success=False, error=f"internal error: {type(err).__name__}: {err}")

    @contained(reply=_describe_failed)
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
                future = job.future
                finished = future.done() and not future.cancelled() and not future.exception()
                answer = to_vqa_answer(future.result()) if finished else VqaAnswer()
                return Describe.Result(success=False, error="cancelled", answer=answer)
            answer = to_vqa_answer(self._answer_of(job.future))
        except AskError as err:
            goal_handle.abort()
            self.log.warning(f"~/describe aborted: {err}", every_s=5.0, key="describe aborted")
            return Describe.Result(success=False, error=str(err))
        goal_handle.succeed()
        return Describe.Result(success=True, answer=answer)

    async def _wait_for(self, future) -> None:
        """Await a concurrent Future completed by the worker thread (or expired by the
        watchdog), inside the executor."""
        done = self.executor.create_future()
        # A done callback makes completion (from the worker thread) wake the executor.
        done.add_done_callback(lambda _: None)
        future.add_done_callback(lambda _: done.set_result(None))
        await done

    def _question_job(self, request: Any, question: str) -> QuestionJob:
        """A job from an ~/ask request or a ~/describe goal (fields they share), every field
        checked before use."""
        s = self.settings
        try:
            question = check_question(question)
            max_new_tokens = check_max_new_tokens(
                request.max_new_tokens, s.max_new_tokens, MAX_NEW_TOKENS_LIMIT
            )
            max_age_s = check_seconds("max_age_s", getattr(request, "max_age_s", 0.0), "any age")
            timeout_s = check_seconds(
                "timeout_s", getattr(request, "timeout_s", 0.0), "the node's ask_timeout_s"
            )
        except RequestError as err:
            raise AskError(str(err)) from None
        if len(request.image.data) > 0:
            camera = ""
            try:
                item = ReceivedImage("", request.image, time.monotonic()).to_frame()
            except ImageDecodeError as err:
                self.failures.add(DECODE_ERROR, f"a request's image: {err}")
                raise AskError(f"the request's image: {err}") from err
        else:
            camera = self._camera_of(request.camera)
            item = self.scheduler.latest(camera)
            if item is None:
                raise AskError(f"no image received yet on {camera}")
            age = self._ros_seconds() - self.scheduler.latest_stamp(camera)
            if max_age_s and age > max_age_s:
                raise AskError(
                    f"the latest frame on {camera} is {age:.2f} s old (max_age_s "
                    f"{max_age_s}): is the camera still publishing?"
                )
        return QuestionJob(
            camera=camera,
            item=item,
            question=question,
            max_new_tokens=max_new_tokens,
            deadline=time.monotonic() + (timeout_s or s.ask_timeout_s),
        )

    def _camera_of(self, name: str) -> str:
        return camera_of(name, self._camera_aliases, self.resolve_topic_name, self.default_camera)

    def _answer_of(self, future) -> Result:
        timeout = "no answer in time (timeout_s, or the ask_timeout_s parameter)"
        if future.cancelled():  # expired by the watchdog: the worker could not get to it
            raise AskError(f"{timeout}; the model is busy or stuck")
        try:
            result = future.result()
        except DeadlineExceeded:
            raise AskError(timeout) from None
        except ImageDecodeError as err:
            raise AskError(f"the camera's latest image: {err}") from err
        except SchedulerClosed as err:
            raise AskError(str(err)) from err
        except Exception as err:  # the worker's failure, passed on to the caller
            raise AskError(f"inference failed: {type(err).__name__}: {err}") from err
        if result.finish_reason == FINISH_DEADLINE:
            raise AskError(timeout)
        if result.finish_reason == FINISH_CANCELLED:
            raise AskError("the node is shutting down")
        return result

    # -- worker ----------------------------------------------------------------------------

    def _on_failure(self, reason: str, text: str) -> None:
        """The runner's report of a failed job: counted per reason, logged at a rate limit."""
        self.failures.add(reason, text)
        self.log.warning(text, every_s=5.0, key=reason)

    def _work(self) -> None:
        """The worker loop; a job's failure never ends it (the runner contains model and
        decode errors, this loop anything else), and if it ends anyway the watchdog restarts it.
        """
        while not self._stop.is_set():
            backoff = self.runner.backoff_s()
            if backoff > 0:  # repeated inference failures: let a transient fault pass
                self._stop.wait(backoff)
                continue
            job = self.scheduler.next_job(timeout=0.5)
            if job is None:
                continue
            self.heartbeat.start(type(job).__name__)
            try:
                results = self.runner.run(job)
                if self._stop.is_set():  # cut short by shutdown: not a real result
                    break
                if not isinstance(job, QuestionJob):  # ~/ask answers go to their caller only
                    self._publish(results)
            except Exception as err:
                self.failures.add(CALLBACK_ERROR, f"worker: {type(err).__name__}: {err}")
                self.log.error(f"worker: {type(err).__name__}: {err}", every_s=5.0)
            finally:
                self.heartbeat.idle()

    def _publish(self, results: list[Result]) -> None:
        for result in results:
            self.latency.add(result.timing.total_ms)
            if result.kind == CAPTION:
                self.caption_pub.publish(to_caption(result))
            else:
                self.answer_pub.publish(to_vqa_answer(result))

    # -- watchdog --------------------------------------------------------------------------

    def _watch(self) -> None:
        """Its own thread, so that it works whatever the executor and the worker are doing."""
        while not self._stop.wait(WATCHDOG_PERIOD_S):
            try:
                self._expire_questions()
                self._check_worker()
            except Exception as err:
                self.log.error(f"watchdog: {type(err).__name__}: {err}", every_s=5.0)

    def _expire_questions(self) -> None:
        """Answer callers whose deadline passed while the worker was busy elsewhere (or stuck):
        the request fails with a timeout, and the worker skips it."""
        now = time.monotonic()
        with self._open_lock:
            overdue = [
                job
                for job in self._open_questions
                if job.deadline is not None and now > job.deadline + EXPIRY_GRACE_S
            ]
        for job in overdue:
            if job.future.cancel():
                self.failures.add(EXPIRED, f"question {job.question[:40]!r} timed out")

    def _check_worker(self) -> None:
        if self._stop.is_set():
            return
        if not self.worker.is_alive():
            if not self.worker.check():
                self._fail(f"the worker thread keeps dying: {self.worker.crashes[-1].reason}")
                return
            crash = self.worker.crashes[-1]
            self.failures.add(WORKER_RESTART, crash.reason)
            self.log.error(f"the worker thread died ({crash.reason}); restarted it")
        limit = self.settings.watchdog_timeout_s
        stalled = self.heartbeat.stalled()
        if limit and stalled is not None and stalled[1] > limit:
            self._fail(
                f"the model made no progress for {stalled[1]:.1f} s on a {stalled[0]} "
                f"(watchdog_timeout_s {limit:g}): the backend is stuck"
            )

    def _fail(self, reason: str) -> None:
        """The node cannot go on: say why, publish it, and have the process exit non-zero."""
        if self.fatal_error is not None:
            return
        self.fatal_error = reason
        self.log.fatal(f"{reason}; exiting with code {EXIT_INTERNAL_FAILURE}")
        try:
            self._publish_diagnostics()
        finally:
            self._on_fatal()

    def health(self) -> WorkerHealth:
        """What /diagnostics says about the worker."""
        crash = self.worker.last_crash(within_s=CRASH_REPORTED_FOR_S)
        return WorkerHealth(
            failures=self.failures.snapshot(),
            last_failure=self.failures.last,
            crash=crash.reason if crash else None,
            stalled=self.heartbeat.stalled(),
            watchdog_timeout_s=self.settings.watchdog_timeout_s,
            backoff_s=self.runner.backoff_s(),
            failure_streak=self.runner.failure_streak,
            fatal=self.fatal_error,
        )

    @contained()
    def _publish_diagnostics(self) -> None:
        stats = self.scheduler.stats()
        now = time.monotonic()
        elapsed = now - self._last_diagnostics[0]
        rates = {
            camera: (s.received - self._last_diagnostics[1].get(camera, 0)) / elapsed
            for camera, s in stats.items()
        }
        self._last_diagnostics = (now, {camera: s.received for camera, s in stats.items()})
        targets = {c.name: c.caption_rate_hz for c in self.settings.camera_configs(list(stats))}
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
                self.caption_rates.update(now, stats, targets, rates),
                self.health(),
            )
        )

    def destroy_node(self) -> None:
        """Stop the worker (cutting its generation short) before tearing down ROS handles."""
        if hasattr(self, "worker"):
            self._stop.set()
            self.scheduler.close()
            if not self.worker.join(WORKER_JOIN_S):
                self.log.error(f"the worker did not stop within {WORKER_JOIN_S:g} s; leaving it")
            self.describe_server.destroy()
        super().destroy_node()


def camera_of(
    name: str, aliases: dict[str, str], resolve: Callable[[str], str], default: str
) -> str:
    """The camera a request names (as configured, or as it resolves in the node's namespace),
    or an :class:`AskError` that says what is wrong with the name: any client may send any
    text, and rcl refuses invalid names with an exception."""
    name = name.strip() or default
    camera = aliases.get(name)
    if camera is not None:
        return camera
    try:
        camera = aliases.get(resolve(name))
    except Exception as err:  # RCLError: what rcl says is wrong with the name
        reason = str(err).removeprefix("failed to resolve name: ").split(", at /")[0]
        raise AskError(f"camera {name!r} is not a valid topic name: {reason}") from None
    if camera is None:
        known = ", ".join(dict.fromkeys(aliases.values()))
        raise AskError(f"unknown camera {name!r}: this node listens on {known}")
    return camera


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
