"""The psyche-distro plugin: registration, options, light import; the LR schedule golden the
DisTrO timeline relies on (design distro.md 1.11, property 22)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
import torch

from psyche_core.plugins import Plugins
from psyche_core.schedule import CosineLR
from psyche_core.specs import OptimizerSpec


def test_plugin_registers_the_distro_optimizer():
    import psyche_distro.plugin as plugin

    plugins = Plugins.load(entry_points=False, extra=[plugin])
    spec = plugins.optimizers.get("distro")
    assert isinstance(spec, OptimizerSpec)
    from psyche_distro.optimizer import build_distro

    assert spec.load() is build_distro
    options = {o.name: o for o in spec.options}
    assert list(options) == [
        "distro",
        "compression-chunk",
        "compression-topk",
        "compression-decay",
        "distro-quantization",
        "distro-bf16-select",
        "distro-preset",
        "distro-mode",
    ]
    assert options["distro-preset"].default is None  # a preset changes nothing unless chosen
    assert (options["distro"].type, options["distro"].default) == (bool, False)
    assert spec.implied_by == "distro"  # --distro picks this optimizer
    assert (options["compression-chunk"].type, options["compression-chunk"].default) == (int, 64)
    assert (options["compression-topk"].type, options["compression-topk"].default) == (int, 4)
    assert options["compression-decay"].type is float
    assert options["compression-decay"].default == 0.999
    assert (options["distro-quantization"].type, options["distro-quantization"].default) == (
        bool,
        False,
    )
    assert (options["distro-bf16-select"].type, options["distro-bf16-select"].default) == (
        bool,
        False,
    )
    assert options["distro-mode"].type == ("psyche", "sync")
    assert options["distro-mode"].default == "psyche"
    assert all(o.help for o in spec.options)


def test_plugin_module_does_not_import_torch():
    code = "import sys, psyche_distro.plugin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_entry_point_is_installed():
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group="psyche")}
    if "psyche_distro" not in eps:
        pytest.skip("psyche-distro is not pip-installed in this environment")
    assert eps["psyche_distro"].value == "psyche_distro.plugin"


def test_cosine_lr_golden():
    lr = CosineLR(0.01, 10, 0.001, 110, 0.0)
    assert lr(0) == pytest.approx(0.001)
    assert lr(5) == pytest.approx(0.0055)
    assert lr(10) == pytest.approx(0.01)
    assert lr(60) == pytest.approx(0.005)
    assert lr(110) == pytest.approx(0.0, abs=1e-12)


def test_optimizer_from_the_registry_trains_a_module():
    import psyche_distro.plugin as plugin
    from psyche_core.comm import LocalGroup
    from psyche_core.optim import StepContext
    from psyche_core.options import CORE_OPTIONS, Options

    spec = Plugins.load(entry_points=False, extra=[plugin]).optimizers.get("distro")
    values = {o.key: o.default for o in (*CORE_OPTIONS, *spec.options)}
    model = torch.nn.Linear(16, 8)
    opt = spec.load()(model, Options(values))
    comm = LocalGroup(1).communicator(0)
    before = model.weight.detach().clone()
    for step in (1, 2):
        ctx = StepContext(step=step, lr=1e-2, prev_lr=1e-2, communicator=comm)
        opt.prepare_step(ctx)
        model(torch.randn(4, 16)).square().mean().backward()
        opt.step(ctx)
        opt.zero_grad()
    assert not torch.equal(model.weight, before)


def test_presets_are_valid_option_sets():
    """Every preset names declared options only (or the core --weight-decay) and builds."""
    import psyche_distro.plugin as plugin
    from psyche_core.options import Options
    from psyche_distro.optimizer import build_distro
    from psyche_distro.presets import PRESETS
    from tests.distro.distro_helpers import Tiny

    declared = {spec.key for spec in plugin.OPTIONS} | {"weight_decay"}
    defaults = {spec.key: spec.default for spec in plugin.OPTIONS} | {"weight_decay": 0.1}
    for name, values in PRESETS.items():
        assert set(values) <= declared, name
        opt = build_distro(Tiny(), Options({**defaults, **values}))
        assert (opt.topk, opt.mode) == (values["compression_topk"], values["distro_mode"])


@pytest.mark.parametrize(
    ("flags", "toml", "message"),
    [
        (["--compression-topk", "8"], "", "--compression-topk is an option of --optimizer distro"),
        (["--distro-preset", "demo"], "", "--distro-preset is an option of --optimizer distro"),
        ([], "compression-decay = 0.9\n", "--compression-decay is an option of --optimizer"),
    ],
)
def test_distro_options_on_an_adamw_run_are_refused(tmp_path, capsys, flags, toml, message):
    """Not ignored without a word, and a preset does not reach into AdamW's weight decay."""
    import psyche_distro.plugin
    from psyche_core.cli import main
    from tests.core import toy_plugin

    plugins = Plugins.load(entry_points=False, extra=[toy_plugin, psyche_distro.plugin])
    config = tmp_path / "run.toml"
    config.write_text('model = "toy"\ndata-provider = "toy"\nwarmup-steps = 1\n' + toml)
    base = ["train", "--config", str(config), "--total-steps", "2"]
    for optimizer, refused in ((["--optimizer", "adamw"], True), (["--distro"], False)):
        with pytest.raises(SystemExit) as exit_:
            main([*base, *optimizer, *flags], plugins=plugins)
            raise SystemExit(0)
        err = capsys.readouterr().err
        if refused:
            assert exit_.value.code == 1 and message in err, err
            assert "trains with adamw; leave it out, or add --optimizer distro" in err
            assert len(err.strip().splitlines()) == 1
        else:
            assert exit_.value.code == 0, err
