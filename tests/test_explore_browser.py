"""The explorer in JupyterLab, driven by a real (headless) Chromium: see `bench/explore_browser.py`.

CI installs Chromium and chromedriver from Debian's packages and sets SFOFUSION_REQUIRE_BROWSER=1, so there this test
runs and must pass; elsewhere it skips with the reason when no browser can run.
"""
import os, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'bench'))
import explore_browser  # noqa: E402


def _missing() -> list[str]:
    out = []
    for mod, why in (('selenium', 'selenium (pip install -e ".[dev]")'), ('jupyterlab', 'jupyterlab (pip install -e ".[dev]")'),
                     ('ipywidgets', 'ipywidgets (pip install -e ".[dev]")')):
        try: __import__(mod)
        except ImportError: out.append(why)
    if explore_browser.find_browser() is None: out.append('Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)')
    return out


@pytest.mark.slow
def test_explorer_in_a_real_browser(tmp_path):
    missing = _missing()
    if missing:
        if os.environ.get('SFOFUSION_REQUIRE_BROWSER') == '1': pytest.fail('the browser test must run here but lacks ' + ', '.join(missing))
        pytest.skip('no browser can run here: needs ' + ', '.join(missing))
    res = explore_browser.session(screenshots=tmp_path)     # raises AssertionError when a check fails
    assert res['run_all_to_viewer_s'] > 0                   # Run All displayed the viewer (an image in the widget)
    assert 'cannot decode the image' in res['error_line'] and 'zz_corrupt' in res['error_line']
    assert res['slider_disabled_in_other_views'] and res['image_kept_on_error']
    assert {p.name for p in tmp_path.iterdir()} >= {'explore_slider.png', 'explore_spectra.png', 'explore_error.png'}
