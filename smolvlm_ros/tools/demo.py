"""`make demo`: the node captioning a bag of real photographs, live over DDS.

Starts vlm_node as its own process (as `ros2 run` would), plays a two-camera rosbag2 of real
photographs into it at camera rate, prints every caption it publishes with its latency, asks one
question through ~/ask, then stops the node with Ctrl-C semantics (SIGINT) and checks it exited
cleanly. Uses a real checkpoint when one is given (--model / $SMOLVLM_MODEL) or is in the
Hugging Face cache, else random:256m, and then says loudly that the captions are noise.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from smolvlm_ros.models.loading import DEFAULT_MODEL
from smolvlm_ros.models.random_checkpoint import cache_root
from smolvlm_ros.pipeline.intake import NS_PER_S, stamp_to_ns
from smolvlm_ros.settings import Group, Settings, SettingsError, names_in
from smolvlm_ros.settings.cli import add_setting_flags, settings_from_flags
from smolvlm_ros.tools.sample_bag import DEMO_CAMERAS, write_sample_bag

# What the demo passes on to its node: every engine, tiling and generation setting and the rate.
DEMO_SETTINGS = [*names_in(Group.ENGINE, Group.TILING, Group.GENERATION), "caption_rate_hz"]
DEMO_DEFAULTS = {"caption_rate_hz": 0.5, "max_new_tokens": 20}
DEMO_MODEL_HELP = f"$SMOLVLM_MODEL, else {DEFAULT_MODEL} if cached, else random:256m"

NODE_NAME = "smolvlm"
RANDOM_FALLBACK = "random:256m"


def pick_model(requested: str | None) -> str:
    """The model to demo: the one asked for, else the default checkpoint if cached, else random."""
    if requested:
        return requested
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(DEFAULT_MODEL, "config.json")
    return DEFAULT_MODEL if isinstance(cached, str) else RANDOM_FALLBACK


def demo_bag() -> Path:
    """The demo bag, built once into the cache."""
    path = cache_root() / "demo_bag_v1"
    if not (path / "metadata.yaml").is_file():
        staging = Path(tempfile.mkdtemp(dir=cache_root())) / "bag"
        write_sample_bag(staging, DEMO_CAMERAS, rate_hz=10.0, seconds_per_photo=2.0)
        staging.rename(path)
    return path


def default_params_file() -> Path:
    source = Path(__file__).resolve().parents[2] / "config" / "vlm.yaml"
    if source.is_file():
        return source
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("smolvlm_ros")) / "config" / "vlm.yaml"


def banner(text: str) -> None:
    line = "!" * 78
    print(f"\n{line}\n{text}\n{line}\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ready-timeout", type=float, default=600.0)
    add_setting_flags(parser, DEMO_SETTINGS, defaults={**DEMO_DEFAULTS, "model": DEMO_MODEL_HELP})
    args = parser.parse_args(argv)
    requested = vars(args).get("model") or os.environ.get("SMOLVLM_MODEL")
    try:
        settings = settings_from_flags(
            args,
            DEMO_SETTINGS,
            Settings.from_mapping({**DEMO_DEFAULTS, "model": pick_model(requested)}),
        )
    except SettingsError as err:
        parser.error(str(err))
    model = settings.model
    # Our own DDS domain on loopback only: neither see nor disturb other ROS traffic here.
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(100, 200)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    cache_root().mkdir(parents=True, exist_ok=True)
    bag = demo_bag()
    topics = [cam.topic for cam in DEMO_CAMERAS]
    if model.startswith("random:"):
        banner(
            f"model {model}: RANDOM WEIGHTS (no checkpoint given or cached).\n"
            "The node, the pipeline and the timings are real; the caption TEXT is noise.\n"
            "For real captions: make demo MODEL=/path/to/SmolVLM-256M-Instruct"
        )

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from smolvlm_ros.msg import Caption
    from smolvlm_ros.replay.live import play_images
    from smolvlm_ros.srv import AskQuestion

    overrides = Path(tempfile.mkdtemp()) / "demo.yaml"
    parameters = {name: getattr(settings, name) for name in DEMO_SETTINGS}
    parameters = {k: list(v) if isinstance(v, tuple) else v for k, v in parameters.items()}
    # reliable frames (see play_images): the demo shows the node, not DDS dropping big frames
    parameters.update(image_topics=topics, qos_reliability="reliable")
    overrides.write_text(yaml.safe_dump({"/**": {"ros__parameters": parameters}}))
    command = [
        sys.executable,
        "-m",
        "smolvlm_ros.node",
        "--ros-args",
        "--params-file",
        str(default_params_file()),
        "--params-file",
        str(overrides),
    ]
    print(f"$ {' '.join(command)}", flush=True)
    node_proc = subprocess.Popen(command)

    rclpy.init()
    client = rclpy.create_node("smolvlm_demo")
    executor = SingleThreadedExecutor()
    executor.add_node(client)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    captions: list = []

    def on_caption(msg: Caption) -> None:
        captions.append(msg)
        t = msg.timing
        stamp = stamp_to_ns(msg.header.stamp) / NS_PER_S
        print(
            f"[caption] {msg.camera} frame@{stamp:.1f} ({msg.header.frame_id}): {msg.text!r}\n"
            f"          latency {t.total_ms:.0f} ms = wait {t.queue_wait_ms:.0f} + preprocess "
            f"{t.preprocess_ms:.0f} + encode {t.encode_ms:.0f} + prefill {t.prefill_ms:.0f} + "
            f"decode {t.decode_ms:.0f} "
            f"({t.generated_tokens} tokens, {t.image_tokens} image tokens)",
            flush=True,
        )

    client.create_subscription(Caption, f"/{NODE_NAME}/caption", on_caption, 10)
    ask = client.create_client(AskQuestion, f"/{NODE_NAME}/ask")
    exit_code = 1
    try:
        print(f"waiting for the node to load {model} ...", flush=True)
        deadline = time.monotonic() + args.ready_timeout
        while not ask.wait_for_service(timeout_sec=0.5):
            if node_proc.poll() is not None:
                print(f"the node exited during start-up (code {node_proc.returncode})")
                return 1
            if time.monotonic() > deadline:
                print(f"the node was not ready within {args.ready_timeout} s")
                return 1

        print(f"playing {bag} ({', '.join(topics)}) at camera rate ...", flush=True)
        played = play_images(
            client, bag, should_stop=lambda: node_proc.poll() is not None, reliable=True
        )
        print(f"played {played} frames; asking a question ...", flush=True)
        request = AskQuestion.Request(question="What is in this image?", camera=topics[0])
        future = ask.call_async(request)
        while not future.done() and node_proc.poll() is None:
            time.sleep(0.1)
        response = future.result()
        if response is not None and response.success:
            a = response.answer
            print(f"[ask] {a.question!r} -> {a.answer!r} ({a.timing.total_ms:.0f} ms)", flush=True)
        else:
            print(f"[ask] failed: {response.error if response else 'no response'}", flush=True)

        print("stopping the node (SIGINT) ...", flush=True)
        node_proc.send_signal(signal.SIGINT)
        node_code = node_proc.wait(timeout=120)
        latencies = sorted(c.timing.total_ms for c in captions)
        print(f"\n{len(captions)} captions from {played} frames; node exit code {node_code}")
        if latencies:
            print(
                f"latency ms: min {latencies[0]:.0f}, median {latencies[len(latencies) // 2]:.0f}, "
                f"max {latencies[-1]:.0f}"
            )
        exit_code = 0 if node_code == 0 and captions else 1
    finally:
        if node_proc.poll() is None:
            node_proc.kill()
        executor.shutdown()
        spinner.join()
        client.destroy_node()
        rclpy.try_shutdown()
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
