"""PIL line charts: the PNG has one panel per chart, each series' colour, and log-axis ticks."""

import numpy as np
from PIL import Image

from score_jax import plots


def _rgb(hex_color):
    return tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))


def test_save_charts_draws_every_series_and_baseline(tmp_path):
    charts = [plots.Chart("a", {"s1": ([4, 10, 100], [0.5, 0.1, 0.01]),
                                "s2": ([4, 10, 100], [0.4, 0.2, 0.05])}, {"base": 0.03}),
              plots.Chart("b", {"lin": ([1, 2, 3], [1.0, 2.0, 1.5])}, log_x=False, log_y=False)]
    path = tmp_path / "c.png"
    plots.save_charts(str(path), charts)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (plots._PANEL[1], 2 * plots._PANEL[0], 3)
    left, right = image[:, : plots._PANEL[0]], image[:, plots._PANEL[0]:]
    for color in plots.COLORS[:2] + plots.HLINE_COLORS[:1]:   # two series and a baseline
        assert (left == _rgb(color)).all(axis=-1).sum() > 50
    assert (right == _rgb(plots.COLORS[0])).all(axis=-1).sum() > 50


def test_log_ticks_are_decade_multiples_inside_the_range():
    ticks = plots._ticks(3.0, 150.0, log=True)
    assert ticks == [5.0, 10.0, 20.0, 50.0, 100.0]
    assert plots._ticks(1e-4, 10.0, log=True) == [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]
    assert plots._ticks(0.0, 10.0, log=False) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
