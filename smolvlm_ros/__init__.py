"""smolvlm_ros: SmolVLM captions and visual question answering for ROS 2 cameras.

The package is layered so that everything but ``smolvlm_ros.node`` imports without ROS:

- ``models``: what a SmolVLM is (shapes, token ids) and where one comes from (hub, disk, random).
- ``engine``: the model work (preprocess, vision stage, language stage), behind backends.
- ``pipeline``: frames in (decoding to RGB), jobs out (latest-wins scheduling).
- ``node``: the ROS 2 layer: parameters, topics, service; maps messages onto the core.
- ``tools``: the demo and sample-data helpers.
"""

# The ROS build installs the generated ``smolvlm_ros.msg`` / ``smolvlm_ros.srv`` into the install
# prefix, while a source checkout has this directory first on sys.path: merge both locations so
# ``from smolvlm_ros.msg import Caption`` works from the source root too.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)

__version__ = "0.1.0"
