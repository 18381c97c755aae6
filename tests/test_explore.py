"The explorer's viewer without a browser: panels, errors shown in the widget, the loss-generator view, open_folder."
import numpy as np
import pytest
from safetensors.torch import save_file

from sfofusion.core import FusionInputError, save_image
from sfofusion.data import synthetic_pair
from sfofusion.explore import PANELS, GENERATOR_PANEL, open_folder, panels, viewer
from sfofusion.meta import LossGenerator
from sfofusion.model import SFOFusionConfig, build_model

pytest.importorskip('ipywidgets', reason='ipywidgets is a dev dependency: pip install -e ".[dev]"')


@pytest.fixture
def folder(tmp_path):
    for i, n in enumerate(('a', 'b', 'c')):
        s = synthetic_pair(48, 64, seed=i, rgb=True)
        save_image(tmp_path/'ir'/f'{n}.png', s['ir']); save_image(tmp_path/'vi'/f'{n}.png', s['vis_rgb'])
    return tmp_path


@pytest.fixture(scope='module')
def net(): return build_model(SFOFusionConfig(width=4, ctx_width=8))


def test_panels_are_unstretched_maps_in_range(net):
    s = synthetic_pair(48, 64, seed=0)
    p = panels(s['ir'][None], s['vis'][None], net, LossGenerator())
    assert list(p) == list(PANELS) + [GENERATOR_PANEL]
    assert all(v.shape == (48, 64) and 0 <= v.min() and v.max() <= 1 for v in p.values())
    assert p['compensation gate'].max() - p['compensation gate'].min() < 1     # the gate's own values, not min-max stretched


def test_a_corrupt_pair_is_reported_in_the_widget(folder, net):
    (folder/'vi'/'b.png').write_bytes(b'')
    v = open_folder(folder, model=net)
    v.pick.value = 1
    assert v.pick.value == 0 and 'b.png: cannot decode the image (an empty file)' in v.status.value
    v.view.value = 'compensation gate'
    assert v.status.value == '' and v.pos.disabled


def test_open_folder_with_two_folders_and_a_generator_run(folder, net, tmp_path_factory):
    run = tmp_path_factory.mktemp('run')
    save_file(LossGenerator().state_dict(), str(run/'loss_generator.safetensors'))
    v = open_folder(folder/'ir', folder/'vi', model=net, generator=run)
    assert [o[0] for o in v.pick.options] == ['a', 'b', 'c'] and 'loss weights' in v.view.options
    v.view.value = 'loss weights'
    assert v.status.value == ''


def test_bad_arguments(folder, net, tmp_path):
    with pytest.raises(FusionInputError, match='`pairs`'): viewer([], net)
    with pytest.raises(FusionInputError, match='no known pair layout'): open_folder(tmp_path/'ir', model=net)
    with pytest.raises(FusionInputError, match='no loss_generator.safetensors'): viewer(folder, net, generator=tmp_path)
