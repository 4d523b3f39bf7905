"""Telling people at once that something moved, on the camera: ``motion`` writes the
``motion_start`` event with its picture, seconds after motion began. (What ``pitsctl alerts``
sets up in AWS, the SNS topic, IoT rules and alarms that turn those events into messages,
belongs to the installer: ``installer.alerts``.)

May import the recording pipeline, the uploader, the event files and the shared modules.
"""
