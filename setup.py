"""`pip install .`: the ROS-free core (models, engine, image pipeline, tools) on a workstation.

The ROS package itself is built by CMakeLists.txt (colcon); it installs these same sources next
to the generated message types. The node (`smolvlm_ros.node`) needs a ROS 2 install.
"""

from pathlib import Path

from setuptools import find_packages, setup

# Ranges, not the pins of requirements/core.txt: a user's own torch (e.g. a CUDA build) is kept.
# transformers stays on the 5.x line the engine's parity is tested against.
INSTALL_REQUIRES = [
    "torch>=2.4",
    "transformers>=5.23,<6",
    "tokenizers>=0.22",
    "numpy>=1.26",
    "opencv-python-headless>=4.8",
    "pillow>=10",
    "rosbags>=0.10",
    "rosbags-image>=0.10",
]

setup(
    name="smolvlm_ros",
    version="0.1.0",
    description="SmolVLM captions and visual question answering for ROS 2 cameras (core)",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["smolvlm_ros", "smolvlm_ros.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "demo": ["scikit-image>=0.22"],  # the sample photographs
        "scoring": ["pycocoevalcap>=1.2"],  # replay's caption metrics (requirements/scoring.txt)
    },
    entry_points={
        "console_scripts": [
            "smolvlm-bench = smolvlm_ros.bench:main",
            "smolvlm-replay = smolvlm_ros.replay.__main__:main",
            "smolvlm-compare = smolvlm_ros.replay.compare:main",
            "smolvlm-dataset-bag = smolvlm_ros.replay.dataset:main",
        ]
    },
    # The message definitions, for writing Caption / VqaAnswer into bags without ROS.
    data_files=[("share/smolvlm_ros/msg", sorted(str(p) for p in Path("msg").glob("*.msg")))],
)
