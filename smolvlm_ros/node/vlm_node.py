"""``vlm_node``: cameras in, captions and answers out.

A thin layer over the core: parameters become a :class:`NodeSettings`, image callbacks only
store the message in the camera's latest-wins slot (no decoding, no inference), one worker
thread takes jobs from the :class:`FrameScheduler` and runs the :class:`Engine`, and the
``~/ask`` service queues its question ahead of captions and waits for the worker's answer.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, fields
from typing import Any

from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from smolvlm_ros.engine import Engine, EngineConfig, Frame, Result
from smolvlm_ros.msg import Caption
from smolvlm_ros.node.messages import stamp_to_ns, to_caption, to_vqa_answer
from smolvlm_ros.node.settings import (
    DESCRIPTIONS,
    MAX_NEW_TOKENS_LIMIT,
    NodeSettings,
    SettingsError,
)
from smolvlm_ros.pipeline.intake import ImageDecodeError, is_compressed_topic, message_to_rgb
from smolvlm_ros.pipeline.scheduler import (
    CaptionJob,
    FrameScheduler,
    QuestionJob,
    SchedulerFull,
)
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
        self.get_logger().info(f"loading model {s.model!r} (device={s.device}, dtype={s.dtype})")
        self.engine = Engine.from_config(
            EngineConfig(
                model=s.model,
                device=s.device,
                dtype=s.dtype,
                tiling=s.tiling(),
            )
        )
        if self.engine.is_random:
            self.get_logger().warn(
                f"model {s.model!r} has RANDOM weights: its captions are meaningless text "
                "(for tests and benchmarks; set `model` to a real checkpoint for real captions)"
            )
        backend = self.engine.backend
        self.get_logger().info(f"model ready on {backend.name}/{backend.device} ({backend.dtype})")

        # Cameras are named by their resolved topic (after namespace and remapping), as
        # `ros2 topic list` shows them; ~/ask also accepts the names as configured.
        self._camera_aliases: dict[str, str] = {}
        cameras = []
        for topic in s.image_topics:
            resolved = self.resolve_topic_name(topic)
            self._camera_aliases[topic] = resolved
            self._camera_aliases[resolved] = resolved
            cameras.append(resolved)
        self.default_camera = cameras[0]
        self.scheduler = FrameScheduler(
            cameras, s.caption_rate_hz, max_pending_questions=s.max_pending_questions
        )

        self.caption_pub = self.create_publisher(Caption, "~/caption", 10)
        images_group = MutuallyExclusiveCallbackGroup()
        for camera in cameras:
            msg_type = CompressedImage if is_compressed_topic(camera) else Image
            self.create_subscription(
                msg_type,
                camera,
                lambda msg, camera=camera: self._on_image(camera, msg),
                qos_profile_sensor_data,
                callback_group=images_group,
            )
        # Reentrant: several ~/ask calls may wait for their answers at once.
        self.ask_srv = self.create_service(
            AskQuestion, "~/ask", self._on_ask, callback_group=ReentrantCallbackGroup()
        )

        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, name="smolvlm-worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"listening on {', '.join(cameras)}; captions on {self.caption_pub.topic_name} "
            f"at up to {s.caption_rate_hz} Hz per camera; questions on {self.ask_srv.service_name}"
        )

    # -- parameters ------------------------------------------------------------------------

    def _read_settings(self) -> NodeSettings:
        defaults = NodeSettings()
        values = {}
        for field in fields(NodeSettings):
            default = getattr(defaults, field.name)
            if isinstance(default, tuple):
                default = list(default)
            descriptor = ParameterDescriptor(
                description=DESCRIPTIONS[field.name],
                # Not reconfigurable while running (yet): refuse changes rather than ignore them.
                read_only=True,
                # `caption_rate_hz: 2` in YAML is an integer; accept it for a float parameter.
                dynamic_typing=isinstance(default, float),
            )
            value = self.declare_parameter(field.name, default, descriptor).value
            if isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise SettingsError(f"{field.name} must be a number, got {value!r}")
                value = float(value)
            values[field.name] = tuple(value) if isinstance(value, list) else value
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

    # -- intake ----------------------------------------------------------------------------

    def _on_image(self, camera: str, msg: Any) -> None:
        self.scheduler.offer(camera, ReceivedImage(camera, msg, time.monotonic()))

    # -- ~/ask -----------------------------------------------------------------------------

    def _on_ask(self, request: AskQuestion.Request, response: AskQuestion.Response):
        try:
            response.answer = to_vqa_answer(self._answer(request))
            response.success = True
        except AskError as err:
            response.success = False
            response.error = str(err)
            self.get_logger().warn(f"~/ask refused: {err}")
        return response

    def _answer(self, request: AskQuestion.Request) -> Result:
        s = self.settings
        question = request.question.strip()
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
                item = Frame(
                    image=message_to_rgb(request.image),
                    stamp_ns=stamp_to_ns(request.image.header.stamp),
                    frame_id=request.image.header.frame_id,
                    received_at=time.monotonic(),
                )
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

        job = QuestionJob(
            camera=camera, item=item, question=question, max_new_tokens=max_new_tokens
        )
        try:
            future = self.scheduler.ask(job)
        except SchedulerFull as err:
            raise AskError(f"node is busy: {err}; try again later") from err
        except RuntimeError as err:
            raise AskError(str(err)) from err
        try:
            return future.result(timeout=s.ask_timeout_s)
        except FutureTimeout:
            raise AskError(f"no answer within ask_timeout_s = {s.ask_timeout_s} s") from None
        except Exception as err:  # the worker's failure, passed on to the caller
            raise AskError(f"inference failed: {err}") from err

    # -- worker ----------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stop.is_set():
            job = self.scheduler.next_job(timeout=0.5)
            if job is None:
                continue
            try:
                frame = job.item if isinstance(job.item, Frame) else job.item.to_frame()
                if isinstance(job, QuestionJob):
                    result = self.engine.ask(
                        frame,
                        job.question,
                        max_new_tokens=job.max_new_tokens,
                        should_stop=self._stop.is_set,
                    )
                else:
                    result = self.engine.caption(
                        frame,
                        self.settings.caption_prompt,
                        max_new_tokens=self.settings.max_new_tokens,
                        should_stop=self._stop.is_set,
                    )
            except Exception as err:  # keep serving: one bad frame must not stop the node
                self.get_logger().error(
                    f"inference on {job.camera or 'supplied image'} failed: {err}"
                )
                if isinstance(job, QuestionJob):
                    job.future.set_exception(err)
                continue
            if self._stop.is_set():  # cut short by shutdown: not a real result
                if isinstance(job, QuestionJob):
                    job.future.set_exception(RuntimeError("the node is shutting down"))
                break
            if isinstance(job, CaptionJob):
                self.caption_pub.publish(to_caption(result))
            else:
                job.future.set_result(result)

    def destroy_node(self) -> None:
        """Stop the worker (cutting its generation short) before tearing down ROS handles."""
        if hasattr(self, "_worker"):
            self._stop.set()
            self.scheduler.close()
            self._worker.join()
        super().destroy_node()
