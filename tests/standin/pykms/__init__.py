"""A stand-in for pykms (libdrm's Python bindings), which picamera2's DRM preview imports at
load time. pinthesky never opens a preview, so only the names read at import exist."""


class PixelFormat:
    RGB888 = "RG24"
    BGR888 = "BG24"
    XRGB8888 = "XR24"
    XBGR8888 = "XB24"
    ABGR8888 = "AB24"
    YUV420 = "YU12"
    YVU420 = "YV12"
    YUYV = "YUYV"
    YVYU = "YVYU"
    NV12 = "NV12"
    NV21 = "NV21"


class PlaneType:
    Primary = 1
    Overlay = 0
