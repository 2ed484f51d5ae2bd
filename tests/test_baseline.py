"""The numpy baseline of `make bench` decodes what the native assembler does."""

import numpy as np
import pytest

from pulseline.link.assembler import FrameAssembler
from pulseline.link.assembler_numpy import decode_numpy
from pulseline.link.frames import Frame
from pulseline.link.protocol import wire
from pulseline.link.streamgen import clean_stream, random_frames


@pytest.mark.parametrize("fmt", [wire.FMT_MONO16, wire.FMT_MONO12P])
@pytest.mark.parametrize("corrected", [False, True])
def test_numpy_baseline_matches_native(fmt, corrected):
    rng = np.random.default_rng(11)
    h, w = 6, 9
    frames = random_frames(rng, 4, h, w, fmt)
    opts = {}
    if corrected:
        opts = {"dark": rng.uniform(0, 50, (h, w)), "flat": rng.uniform(3000, 4000, (h, w)),
                "defect_map": rng.random((h, w)) < 0.1}
    asm = FrameAssembler(w, h, fmt, **opts)
    stream = clean_stream(frames, fmt)
    native = [f for f in asm.feed(stream) + asm.flush() if isinstance(f, Frame)]
    cfg = asm.config
    baseline = decode_numpy(stream, w, h, fmt, dark=cfg.dark, gain=cfg.gain, defect_map=cfg.defect_map)
    assert [b.frame_id for b in baseline] == [f.frame_id for f in native]
    for b, f in zip(baseline, native, strict=True):
        assert b.pixels.dtype == f.pixels.dtype
        np.testing.assert_allclose(b.pixels, f.pixels, rtol=1e-5)
        assert (b.line_received == f.line_received).all()
        for stat in ("mean", "min", "max", "centre_mean"):
            assert getattr(b, stat) == pytest.approx(getattr(f, stat), rel=1e-5), stat
