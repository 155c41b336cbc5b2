"""`python -m smolvlm_ros.tools.executor_throughput`: camera frames an rclpy executor delivers.

Why the node spins a SingleThreadedExecutor: a publisher process floods 320x240 rgb8 frames
(best effort, every 2 ms for 4 s) at a subscriber process that only counts callbacks, once per
executor kind. Prints frames sent and received. Runs in its own ROS domain on loopback.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time

TOPIC = "/executor_throughput/image"
KINDS = ("multi", "single")


def _subscriber(kind: str, seconds: float) -> None:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("throughput_sub")
    count = [0]
    node.create_subscription(
        Image, TOPIC, lambda _: count.__setitem__(0, count[0] + 1), qos_profile_sensor_data
    )
    executor = MultiThreadedExecutor(num_threads=4) if kind == "multi" else SingleThreadedExecutor()
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    time.sleep(seconds)
    print(count[0], flush=True)
    os._exit(0)  # no orderly shutdown needed for a measurement process


def _publisher(seconds: float) -> None:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("throughput_pub")
    pub = node.create_publisher(Image, TOPIC, qos_profile_sensor_data)
    msg = Image(height=240, width=320, encoding="rgb8", step=960, data=bytes(240 * 960))
    time.sleep(2.0)  # discovery
    sent, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        pub.publish(msg)
        sent += 1
        time.sleep(0.002)
    print(sent, flush=True)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--sub":
        _subscriber(sys.argv[2], float(sys.argv[3]))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--pub":
        _publisher(float(sys.argv[2]))
        return 0
    env = dict(
        os.environ,
        ROS_DOMAIN_ID=str(random.randint(100, 200)),
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
    )
    me = [sys.executable, "-m", "smolvlm_ros.tools.executor_throughput"]
    for kind in KINDS:
        sub = subprocess.Popen(
            [*me, "--sub", kind, "8"], stdout=subprocess.PIPE, env=env, text=True
        )
        time.sleep(1.0)
        sent = subprocess.run([*me, "--pub", "4"], capture_output=True, env=env, text=True).stdout
        received = sub.communicate(timeout=30)[0]
        print(f"{kind:>6}-threaded executor: {received.strip()} of {sent.strip()} frames received")
    return 0


if __name__ == "__main__":
    sys.exit(main())
