"""``vlm_node``: cameras in, captions and answers out.

A thin layer over the core: parameters become :class:`Settings` (the schema's), image callbacks only
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
import gc
import inspect
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy._rclpy_pybind11 import RCLError
from rclpy.action import ActionServer, CancelResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
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
    Result,
)
from smolvlm_ros.engine.answers import AnswerSpec, AnswerType
from smolvlm_ros.models.loading import ModelLoadError
from smolvlm_ros.msg import Caption, VqaAnswer
from smolvlm_ros.node.diagnostics import CaptionRates, LatencyWindow, WorkerHealth, diagnostics
from smolvlm_ros.node.messages import to_caption, to_vqa_answer
from smolvlm_ros.node.parameters import changed_settings, declare_parameters, declare_setting
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
from smolvlm_ros.pipeline.intake import (
    NS_PER_S,
    ImageDecodeError,
    is_compressed_topic,
    stamp_to_ns,
)
from smolvlm_ros.pipeline.requests import (
    check_max_new_tokens,
    check_question,
    check_seconds,
)
from smolvlm_ros.pipeline.runner import JobRunner, ReceivedImage, check_standing_questions
from smolvlm_ros.pipeline.scheduler import (
    DropReason,
    FrameScheduler,
    QuestionJob,
    SchedulerClosed,
    SchedulerFull,
)
from smolvlm_ros.settings import MAX_NEW_TOKENS_LIMIT, Settings, SettingsError, schema
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
# Frames received while the node is configured but not active are dropped, counted as this.
INACTIVE = DropReason.INACTIVE
INACTIVE_ERROR = "the node is inactive (lifecycle); activate it to get answers"


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


class VlmNode(LifecycleNode):
    """The SmolVLM node, a managed (lifecycle) node; nothing is loaded until it is configured.

    - configure: parameters read and validated, the model loaded, scheduler and runner built,
      subscriptions, publishers, ``~/ask`` and ``~/describe`` created (paused). A bad parameter or
      model fails the transition (the message logged, :attr:`config_error`) and leaves the node
      unconfigured, with nothing half-started.
    - activate: frames scheduled and captioned, requests answered, diagnostics published, the
      worker and the watchdog running.
    - deactivate: paused; frames are dropped and counted (``dropped_inactive``), requests are
      answered "the node is inactive".
    - cleanup: the worker stopped, the interfaces destroyed, the model released (GPU memory
      included), so that read-only parameters such as ``model`` can be set before the next
      configure. shutdown: the same, from any state.

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
        self.config_error: str | None = None
        self._on_fatal = on_fatal or (lambda: None)
        self.autostart = Settings.from_mapping(
            {"autostart": declare_setting(self, "autostart")}
        ).autostart
        self.settings: Settings | None = None
        self.engine: Engine | None = None
        self.scheduler: FrameScheduler | None = None
        self.runner: JobRunner | None = None
        self.worker: RestartingThread | None = None
        self.loading = False  # configure is loading the model (main() may have to cut it short)
        self._active = threading.Event()
        self._stop = threading.Event()
        self._destroyers: list[Callable[[], Any]] = []  # what configure created, for cleanup
        self.add_on_set_parameters_callback(self._on_parameters)

    # -- lifecycle -------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        started = time.monotonic()
        self.config_error = None
        try:
            self._configure()
        except (SettingsError, ModelLoadError) as err:
            return self._configure_failed(str(err))
        except Exception as err:  # e.g. a parameter of the wrong type in the YAML file
            return self._configure_failed(f"{type(err).__name__}: {err}")
        finally:
            self.loading = False
        self._set_fixed_parameters_read_only(True)
        self.log.info(f"configured in {time.monotonic() - started:.2f} s")
        return TransitionCallbackReturn.SUCCESS

    def _configure_failed(self, message: str) -> TransitionCallbackReturn:
        self.config_error = message
        self.log.error(f"configure failed: {message}")
        self._release()
        return TransitionCallbackReturn.FAILURE

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.worker is None:
            self._start_threads()
        self._active.set()
        self._diagnostics_timer.reset()
        s = self.settings
        mode = "one mosaic of all cameras" if s.mosaic else "per camera"
        self.log.info(
            f"active: listening on {', '.join(self.scheduler.cameras)}; captions on "
            f"{self.caption_pub.topic_name} at up to {s.caption_rate_hz} Hz {mode}; questions "
            f"on {self.ask_srv.service_name}"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active.clear()
        self._diagnostics_timer.cancel()
        self.log.info(f"inactive: frames are dropped ({INACTIVE}), requests refused")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self._set_fixed_parameters_read_only(False)
        self.log.info("cleaned up: model released; read-only parameters can be set")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    @property
    def active(self) -> bool:
        return self._active.is_set()

    def _configure(self) -> None:
        """Everything configure builds, in order; raises on a bad parameter or model."""
        self.settings = s = declare_parameters(self)
        cameras = self._resolve_cameras(s.image_topics)
        self._load_model(s)
        self.default_camera = cameras[0]
        self._stop = threading.Event()
        self.scheduler = FrameScheduler(
            s.camera_configs(cameras),
            max_frame_age_s=s.max_frame_age_s,
            mosaic=s.mosaic,
            mosaic_rate_hz=s.caption_rate_hz,
            max_pending_questions=s.max_pending_questions,
            max_questions_per_caption=s.max_questions_per_caption,
            max_batch=s.max_batch,
            clock=self._ros_seconds,
        )
        self.heartbeat = Heartbeat()
        try:
            check_standing_questions(self.engine, s.questions)
        except ValueError as err:
            raise SettingsError(str(err)) from None
        self.runner = JobRunner(
            self.engine,
            self.scheduler,
            to_frame=ReceivedImage.to_frame,
            captions=s.captions(),
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

    def _load_model(self, s: Settings) -> None:
        self.log.info(f"loading model {s.model!r} (device={s.device}, dtype={s.dtype})")
        self.loading = True
        started = time.monotonic()
        self.engine = Engine.from_config(s.engine_config())
        loaded_s = time.monotonic() - started
        # Compile / capture every batch size now: the first live frame must not pay for it.
        warm_s = self.engine.warm_up(s.max_batch, s.caption_prompt, s.max_new_tokens)
        self.loading = False
        if self.engine.is_random:
            self.log.warning(
                f"model {s.model!r} has RANDOM weights: its captions are meaningless text "
                "(for tests and benchmarks; set `model` to a real checkpoint for real captions)"
            )
        backend = self.engine.backend
        choice = self.engine.backend_choice
        self.log.info(
            f"model ready on {backend.name}/{backend.device} ({backend.dtype}), loaded in "
            f"{loaded_s:.1f} s"
            + (f", warmed up in {warm_s:.1f} s" if warm_s else "")
            + (f"; backend {choice.reason}" if choice else "")
        )

    def _start_threads(self) -> None:
        self.worker = RestartingThread(self._work, name="smolvlm-worker")
        self.worker.start()
        self._watchdog = threading.Thread(target=self._watch, name="smolvlm-watchdog", daemon=True)
        self._watchdog.start()

    def _release(self) -> None:
        """Undo configure: stop the worker (cutting its generation short) and the watchdog,
        destroy the interfaces, drop the model and free its memory. Safe to call in any state."""
        self._active.clear()
        self._stop.set()
        if self.scheduler is not None:
            self.scheduler.close()
        if self.worker is not None:
            if not self.worker.join(WORKER_JOIN_S):
                self.log.error(f"the worker did not stop within {WORKER_JOIN_S:g} s; leaving it")
            self._watchdog.join(1.0)
        while self._destroyers:
            with contextlib.suppress(Exception):
                self._destroyers.pop()()
        had_model = self.engine is not None
        self.worker = self.runner = self.scheduler = self.engine = None
        if had_model:
            _free_model_memory()

    def _set_fixed_parameters_read_only(self, read_only: bool) -> None:
        """Settings that cannot change at run time (model, device, topics, ...) are read-only
        while the node is configured and writable while it is not, for the next configure.
        rclpy has no public way to change a declared descriptor's read_only."""
        for name, setting in schema().items():
            if not setting.spec.live and self.has_parameter(name):
                self._descriptors[name].read_only = read_only

    def _on_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Unconfigured, any value is taken (the next configure validates it); configured,
        live changes are validated and applied."""
        if self.runner is None:
            return SetParametersResult(successful=True)
        return self._on_set_parameters(params)

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
        """Created by configure, live only while active; each registered for cleanup."""
        s = self.settings
        self.caption_pub = self._created(
            self.create_publisher(Caption, "~/caption", 10), self.destroy_publisher
        )
        self.answer_pub = self._created(
            self.create_publisher(VqaAnswer, "~/answer", 10), self.destroy_publisher
        )
        self.diagnostics_pub = self._created(
            self.create_publisher(DiagnosticArray, "/diagnostics", 10), self.destroy_publisher
        )
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
            self._created(
                self.create_subscription(
                    msg_type,
                    camera,
                    lambda msg, camera=camera: self._on_image(camera, msg),
                    image_qos,
                ),
                self.destroy_subscription,
            )
        # Reentrant: an awaiting ~/ask holds its callback group until answered; in the node's
        # default (mutually exclusive) group it would hold up every other request and camera.
        self.ask_srv = self._created(
            self.create_service(
                AskQuestion, "~/ask", self._on_ask, callback_group=ReentrantCallbackGroup()
            ),
            self.destroy_service,
        )
        # On the steady clock: diagnostics keep coming when a replay's /clock pauses.
        self._diagnostics_timer = self._created(
            self.create_timer(
                1.0, self._publish_diagnostics, clock=Clock(clock_type=ClockType.STEADY_TIME)
            ),
            self.destroy_timer,
        )
        self._diagnostics_timer.cancel()  # until activated
        self.describe_server = ActionServer(
            self,
            Describe,
            "~/describe",
            execute_callback=self._execute_describe,
            cancel_callback=lambda _: CancelResponse.ACCEPT,
            callback_group=ReentrantCallbackGroup(),
        )
        self._destroyers.append(self.describe_server.destroy)

    def _created(self, entity: Any, destroy: Callable[[Any], Any]) -> Any:
        """Register a publisher, subscription, service or timer for cleanup; returns it."""
        self._destroyers.append(lambda: destroy(entity))
        return entity

    def _ros_seconds(self) -> float:
        return self.get_clock().now().nanoseconds / 1e9

    # -- parameters ------------------------------------------------------------------------

    def _refuse_parameters(self, params: list[Parameter], err: Exception) -> SetParametersResult:
        return SetParametersResult(successful=False, reason=f"internal error: {err}")

    @contained(reply=_refuse_parameters)
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validate and apply live changes (ROS has already refused read-only ones)."""
        try:
            settings = changed_settings(self.settings, params)
        except SettingsError as err:
            return SetParametersResult(successful=False, reason=str(err))
        if settings is None:
            return SetParametersResult(successful=True)
        try:
            check_standing_questions(self.engine, settings.questions)
        except ValueError as err:
            return SetParametersResult(successful=False, reason=str(err))
        self.settings = settings
        names = self.scheduler.cameras
        self.scheduler.reconfigure(
            rates_hz={c.name: c.caption_rate_hz for c in settings.camera_configs(names)},
            max_frame_age_s=settings.max_frame_age_s,
            mosaic_rate_hz=settings.caption_rate_hz,
            max_questions_per_caption=settings.max_questions_per_caption,
            max_batch=settings.max_batch,
        )
        self.runner.captions = settings.captions()
        self.runner.change_gate.threshold = settings.change_threshold
        self.log.info(f"reconfigured: {', '.join(sorted(p.name for p in params))}")
        return SetParametersResult(successful=True)

    # -- intake ----------------------------------------------------------------------------

    @contained()
    def _on_image(self, camera: str, msg: Any) -> None:
        if not self._active.is_set():
            self.scheduler.record_drop(camera, INACTIVE)
            return
        stamp = stamp_to_ns(msg.header.stamp) / NS_PER_S
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
            result = self._answer_of(job.future)
            response.answer = to_vqa_answer(result)
            self._check_typed(job, result)
            response.success = True
        except AskError as err:
            response.success = False
            response.error = str(err)
            self.log.warning(f"~/ask refused: {err}", every_s=5.0, key="ask refused")
        return response

    @staticmethod
    def _check_typed(job: QuestionJob, result: Result) -> None:
        """A typed question whose answer was cut short has no value to act on: refuse it."""
        if job.answer.type != AnswerType.TEXT and result.typed is None:
            raise AskError(
                f"no complete {job.answer.type} answer: generation ended "
                f"({result.finish_reason}) after {len(result.token_ids)} tokens; raise "
                "max_new_tokens, or timeout_s"
            )

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
            result = self._answer_of(job.future)
            answer = to_vqa_answer(result)
            self._check_typed(job, result)
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
        if not self._active.is_set():
            raise AskError(INACTIVE_ERROR)
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
            answer = AnswerSpec.parse(
                getattr(request, "answer_type", ""),
                list(getattr(request, "options", [])),
                getattr(request, "json_schema", ""),
            )
        except ValueError as err:  # RequestError, or an answer type / options a client got wrong
            raise AskError(str(err)) from None
        unsupported = self.engine.unsupported_answer(answer)
        if unsupported is not None:
            raise AskError(unsupported)
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
            answer=answer,
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
            if not self._active.is_set():  # paused (deactivated)
                self._stop.wait(0.1)
                continue
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
                if not isinstance(job, QuestionJob) and self._active.is_set():
                    # ~/ask answers go to their caller only; nothing is published once paused
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
        self._release()
        super().destroy_node()


def _free_model_memory() -> None:
    """Collect the dropped model, and hand CUDA's cached blocks back to the device."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


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
