"""The Python API does what the command line does: resume an interrupted encode (``resume=``),
run on a mesh (``devices=`` a ``GopMesh``), and code several videos in one run
(``CodecOptions.resolve`` + ``CodingSetup.encode``)."""
import numpy as np
import pytest

from gvc_jax import api
from gvc_jax.codec.gop.plan import ArrayReader
from gvc_jax.codec.session import EncodeJob
from gvc_jax.parallel import GopMesh

OPTS = dict(codebook_size=256, atoms=3, steps=4, tail=1, gop_frames=5)


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(7)
    return np.clip(rng.integers(0, 256, (1, 48, 64, 3)) + 5 * np.arange(13)[:, None, None, None], 0, 255
                   ).astype(np.uint8)


def test_api_resume_after_an_interruption_gives_the_same_bytes(video, tmp_path):
    plain = api.encode(video, "preset:tiny", fps=16, **OPTS)
    out = str(tmp_path / "v.gvc")

    class Stop(Exception):
        pass

    seen = []

    def sink(frames):  # interrupt once the first GOP is done (and journalled)
        seen.append(len(frames))
        raise Stop

    with pytest.raises(Stop):
        api.encode_full(video, "preset:tiny", fps=16, resume=out, sink=sink, **OPTS)
    result = api.encode_full(video, "preset:tiny", fps=16, resume=out, **OPTS)
    assert [g.index for g in result.gops if g.resumed] == [0]
    assert result.stream == plain
    result.journal.remove()


def test_api_batch_through_the_resolver_equals_each_video_alone(video):
    model = api.get_model("preset:tiny")
    options = api.CodecOptions(**OPTS)
    clips = [video, video[::-1].copy()]
    readers = [ArrayReader(c, 16.0) for c in clips]
    setup = options.resolve(model, readers)
    results = setup.encode([EncodeJob(r) for r in readers], model, devices=GopMesh(1))
    for clip, result in zip(clips, results, strict=True):
        assert result.stream == api.encode(clip, model, options, fps=16)
