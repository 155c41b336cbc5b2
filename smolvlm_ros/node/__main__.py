"""`python -m smolvlm_ros.node --ros-args ...`"""

import sys

from smolvlm_ros.node import main

sys.exit(main())
