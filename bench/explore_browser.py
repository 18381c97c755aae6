"""The explorer as a user meets it: `nbs/15_explore.ipynb` in JupyterLab, driven by headless Chromium.

Starts JupyterLab on 127.0.0.1 (a random port, a token, private config/runtime folders), opens a copy of the notebook
whose `folder` parameter points at a few pairs (one of them corrupt), runs all cells from the page, and checks that
the viewer rendered, that changing the pair, the view and the slider changes the image, and that the corrupt pair
shows its error in the widget. Prints the latencies it measured; `--screenshots DIR` saves what the page showed.
Everything it started is stopped on the way out. `tests/test_explore_browser.py` runs it in CI.

    python bench/explore_browser.py --screenshots figures   # the README's screenshots, and a latency table
"""
from __future__ import annotations
import argparse, base64, hashlib, json, os, secrets, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ('chromium', 'chromium-browser', 'google-chrome')
DRIVERS = ('chromedriver', '/usr/lib/chromium/chromedriver')


def find_browser() -> tuple[str, str]|None:
    "(browser, chromedriver) executables from the system (Debian: `apt-get install chromium chromium-driver`), or None."
    browser = next((p for b in BROWSERS if (p := shutil.which(b))), None)
    driver = next((p for d in DRIVERS if (p := shutil.which(d) or (d if Path(d).is_file() else None))), None)
    return (browser, driver) if browser and driver else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


class Lab:
    "A JupyterLab server on 127.0.0.1 serving `root`, with its own config and runtime folders; stopped on exit."
    def __init__(self, root: Path):
        self.root, self.port, self.token = Path(root), _free_port(), secrets.token_hex(16)
        self.home = Path(tempfile.mkdtemp(prefix='sfofusion-lab-'))

    def __enter__(self) -> 'Lab':
        env = {k: v for k, v in os.environ.items() if k != 'MPLBACKEND'}   # the kernel's own default (CI sets Agg)
        env = dict(env, JUPYTER_CONFIG_DIR=str(self.home/'config'), JUPYTER_RUNTIME_DIR=str(self.home/'runtime'),
                   JUPYTERLAB_WORKSPACES_DIR=str(self.home/'workspaces'), OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'))
        news = self.home/'settings'/'@jupyterlab'/'apputils-extension'/'notification.jupyterlab-settings'
        news.parent.mkdir(parents=True); news.write_text('{"fetchNews": "false", "checkForUpdates": false}')  # no popup over the page
        cmd = [sys.executable, '-m', 'jupyterlab', '--no-browser', '--ip=127.0.0.1', f'--port={self.port}',
               f'--LabApp.user_settings_dir={self.home/"settings"}',
               f'--IdentityProvider.token={self.token}', f'--ServerApp.root_dir={self.root}',
               '--LabApp.expose_app_in_browser=True', '--LabApp.news_url=', '--ServerApp.port_retries=0']
        if hasattr(os, 'geteuid') and os.geteuid() == 0: cmd.append('--allow-root')   # CI containers run as root
        self.log = open(self.home/'lab.log', 'w')
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            for _ in range(600):                                         # the server answers within ~5 s
                if self.proc.poll() is not None: raise RuntimeError(f"JupyterLab exited: {(self.home/'lab.log').read_text()[-2000:]}")
                try:
                    urllib.request.urlopen(f'{self.url}/api/status?token={self.token}', timeout=1); return self
                except OSError: time.sleep(0.1)
            raise RuntimeError('JupyterLab did not start within 60 s')
        except BaseException:
            self.__exit__(); raise                                       # stop what was started

    @property
    def url(self) -> str: return f'http://127.0.0.1:{self.port}'

    def __exit__(self, *exc):
        try: os.killpg(self.proc.pid, signal.SIGTERM)                  # the server and the kernels it started
        except ProcessLookupError: pass
        try: self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait()
        self.log.close()
        shutil.rmtree(self.home, ignore_errors=True)


def make_pairs(folder: Path) -> list[str]:
    "A few pairs for the viewer in `folder` (real MSRS pairs when the shared data is there) and one corrupt pair."
    from sfofusion.core import shared_dir, save_image
    from sfofusion.data import synthetic_pair
    for side in ('ir', 'vi'): (folder/side).mkdir(parents=True, exist_ok=True)
    sd = shared_dir()
    names = ['00004N', '00008N', '00012N'] if sd is not None else ['p1', 'p2', 'p3']
    for i, n in enumerate(names):
        if sd is not None:
            for side in ('ir', 'vi'): shutil.copy(sd/'data'/'MSRS'/'test'/side/f'{n}.png', folder/side/f'{n}.png')
        else:
            s = synthetic_pair(240, 320, seed=i, rgb=True)
            save_image(folder/'ir'/f'{n}.png', s['ir']); save_image(folder/'vi'/f'{n}.png', s['vis_rgb'])
    shutil.copy(folder/'vi'/f'{names[0]}.png', folder/'vi'/'zz_corrupt.png')
    (folder/'ir'/'zz_corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    return names + ['zz_corrupt']


def notebook_copy(dst: Path, folder: Path) -> Path:
    "nbs/15_explore.ipynb with its `folder` parameter set, as a user (or papermill) would set it."
    nb = json.loads((ROOT/'nbs'/'15_explore.ipynb').read_text())
    cell = next(c for c in nb['cells'] if 'parameters' in c['metadata'].get('tags', []))
    cell['source'] = [f"folder = {str(folder)!r}\n"]
    dst.write_text(json.dumps(nb))
    return dst


def session(screenshots: Path|None=None, timeout: float=180.) -> dict:
    "Run the whole check; returns the measured latencies (s) and the checks' results. Raises AssertionError on a failure."
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select
    found = find_browser()
    if found is None: raise RuntimeError('no Chromium + chromedriver found (Debian: apt-get install chromium chromium-driver)')
    work = Path(tempfile.mkdtemp(prefix='sfofusion-explore-'))
    names = make_pairs(work/'pairs')
    notebook_copy(work/'explore.ipynb', work/'pairs')
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for a in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--window-size=1400,1800',
              f'--user-data-dir={work/"chrome"}'):
        opts.add_argument(a)
    os.environ.setdefault('SE_OFFLINE', 'true')                           # never let Selenium fetch a driver
    res = dict(pairs=names)
    try:
        with Lab(work) as lab:
            drv = webdriver.Chrome(service=Service(found[1]), options=opts)
            try: _drive(drv, lab, res, names, screenshots, timeout, By, Keys, Select)
            finally: drv.quit()
    finally: shutil.rmtree(work, ignore_errors=True)
    return res


def _wait(what: str, fn, timeout: float, every: float=0.02):
    "Poll `fn` until it returns a truthy value; that value, or AssertionError after `timeout` s."
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            v = fn()
            if v: return v
        except Exception: pass                                             # the page is still changing
        time.sleep(every)
    raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')


def _drive(drv, lab, res, names, screenshots, timeout, By, Keys, Select):
    drv.get(f'{lab.url}/lab/tree/explore.ipynb?token={lab.token}')
    ready = ("const a = window.jupyterapp; const w = a && a.shell.currentWidget;"
             "return !!(w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel"
             " && w.sessionContext.session.kernel.status === 'idle' && w.content && w.content.widgets.length > 0);")
    _wait('the notebook and its kernel', lambda: drv.execute_script(ready), timeout)
    t0 = time.perf_counter()
    drv.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
    widget = lambda: drv.find_element(By.CSS_SELECTOR, '.jp-OutputArea-output .widget-vbox')
    image = lambda: widget().find_element(By.CSS_SELECTOR, 'img.widget-image').get_attribute('src')   # a new blob URL per image
    first = _wait('the viewer to render', image, timeout)
    res['run_all_to_viewer_s'] = time.perf_counter() - t0
    assert first.startswith(('blob:', 'data:image/png')), first[:40]
    idle = "return window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle';"
    _wait('the rest of the notebook to run', lambda: drv.execute_script(idle), timeout)   # the cells after the viewer
    def shot(name):
        if screenshots is None: return
        f = screenshots/f'explore_{name}.png'
        widget().screenshot(str(f))
        from PIL import Image                                              # small enough for the repository
        with Image.open(f) as im: im.convert('RGB').quantize(256, dither=Image.Dither.NONE).save(f, optimize=True)
    shot('slider')

    def change(what, act) -> float:
        before = image(); t = time.perf_counter(); act()
        _wait(f'the image to change after {what}', lambda: image() != before, 60)
        return time.perf_counter() - t

    select = lambda: Select(widget().find_element(By.CSS_SELECTOR, '.widget-dropdown select'))
    res['pair_change_uncached_s'] = change('picking another pair', lambda: select().select_by_index(1))
    res['pair_change_uncached_2_s'] = change('picking a third pair', lambda: select().select_by_index(2))
    res['pair_change_cached_s'] = change('picking the first pair again', lambda: select().select_by_index(0))
    handle = lambda: widget().find_element(By.CSS_SELECTOR, '.noUi-handle')
    res['slider_step_s'] = change('moving the slider', lambda: handle().send_keys(Keys.ARROW_LEFT))
    button = lambda label: next(b for b in widget().find_elements(By.CSS_SELECTOR, '.widget-toggle-buttons button') if b.text.strip() == label)
    for label in ('compensation gate', 'spectra', 'IR share'):
        res[f'view_{label.replace(" ", "_")}_s'] = change(f'the {label} view', lambda: button(label).click())
        shot(label.replace(' ', '_'))
    res['slider_disabled_in_other_views'] = bool(widget().find_elements(By.CSS_SELECTOR, '.widget-slider [disabled].noUi-target'))
    change('the slider view', lambda: button('slider').click())
    time.sleep(0.5)                                                        # let any late redraw land
    before, index = image(), select().first_selected_option.text
    select().select_by_visible_text(names[-1])                              # the corrupt pair
    status = _wait('the error in the widget', lambda: widget().find_element(By.CSS_SELECTOR, '.widget-html').text, 60)
    res['error_line'] = status
    assert 'cannot decode the image' in status and names[-1] in status, status
    _wait('the drop-down to return to the pair on screen', lambda: select().first_selected_option.text == index, 10)
    res['image_kept_on_error'] = image() == before or _wait('the last good image', lambda: image() == before, 10)
    shot('error')
    assert res['slider_disabled_in_other_views'] and res['image_kept_on_error']


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--screenshots', type=Path, help='save screenshots of the viewer here (e.g. figures)')
    p.add_argument('--json', type=Path, help='also write the measurements to this JSON file')
    a = p.parse_args()
    if a.screenshots: a.screenshots.mkdir(parents=True, exist_ok=True)
    res = session(a.screenshots)
    print('| step | seconds |\n|---|---|')
    for k, v in res.items():
        if k.endswith('_s'): print(f'| {k[:-2].replace("_", " ")} | {v:.2f} |')
    print(f"error shown in the widget: {res['error_line']}")
    if a.json: a.json.write_text(json.dumps(res, indent=1))


if __name__ == '__main__': main()
