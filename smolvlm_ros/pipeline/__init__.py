"""Frames in, jobs out: image decoding and latest-wins scheduling, free of ROS."""
