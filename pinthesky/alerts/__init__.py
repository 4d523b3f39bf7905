"""Telling people at once that something moved.

``motion``: on the camera, the ``motion_start`` event with its picture, seconds after motion
began. ``cloud``: on the workstation, what ``pitsctl alerts`` sets up in AWS (an SNS topic, IoT
rules that turn ``motion_start`` and a camera going offline into readable messages, and the
bucket's lifecycle).
"""
