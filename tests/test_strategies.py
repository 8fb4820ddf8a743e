"""Anti-forgetting strategies on a tiny model: each one's mechanism, its state across updates,
their composition, and a third-party strategy package."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from retain import Strategy, hookimpl
from retain.core import cycle
from retain.core.config import load_config
from retain.core.engine import Engine
from retain.core.storage.models import load_version
from retain.core.learning.lm import IGNORE_INDEX, lm_loss
from retain.core.pluginmanager import Registry, make_plugin_manager
from retain.core.storage.store import ModelStore

from conftest import TINY, private_copy, write_jsonl

STATEFUL = ["replay", "ewc", "si", "mas", "agem", "gem"]
# These tests check each strategy's mechanism, not the quality gate (tests/test_gate.py):
# an anchored or regularized tiny model may rightly learn too little to pass it.
SMALL = ["options.replay.buffer_size=40", "options.agem.patterns_per_update=16",
         "options.agem.sample_size=8", "options.gem.patterns_per_update=8", "validators=[finite]"]
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "retain-l2-anchor"


class Probe(Strategy):
    """Test-only strategy: records each training step's batch, outputs, weights and the
    loss terms the strategies before it added (loss minus the token cross-entropy)."""

    name = "probe"

    def __init__(self):
        self.steps: list[dict] = []

    def avalanche_plugins(self, run) -> list:
        from avalanche.core import SupervisedPlugin

        steps = self.steps

        class Record(SupervisedPlugin):
            def before_backward(self, strategy, **kw):
                steps.append({
                    "x": strategy.mb_x.detach().cpu().clone(), "y": strategy.mb_y.detach().cpu().clone(),
                    "logits": strategy.mb_output.detach().cpu().clone(),
                    "extra": float(strategy.loss - lm_loss(strategy.mb_output, strategy.mb_y)),
                    "params": {n: p.detach().cpu().clone() for n, p in strategy.model.named_parameters()},
                })
        return [Record()]


def _flat_grad(model: torch.nn.Module) -> torch.Tensor:
    """Every parameter's gradient in one vector, in ``parameters()`` order (as A-GEM and GEM)."""
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().cpu()
                      for p in model.parameters()])


class GradProbe(Strategy):
    """Test-only strategy, listed *before* agem or gem: records each step's gradient as backward
    left it, the gradient the optimizer is then given, and, from the projecting plugin's own
    avalanche attributes, the reference gradients it projected against at that step."""

    name = "gradprobe"

    def __init__(self):
        self.steps: list[dict] = []

    def avalanche_plugins(self, run) -> list:
        from avalanche.core import SupervisedPlugin

        from retain.strategies.adapters import PersistentAGEM, PersistentGEM

        steps = self.steps

        class Record(SupervisedPlugin):
            def after_backward(self, strategy, **kw):  # runs before agem's / gem's after_backward
                projector = next(p for p in strategy.plugins if isinstance(p, (PersistentAGEM, PersistentGEM)))
                reference = (projector.reference_gradients if isinstance(projector, PersistentAGEM)
                             else projector.G)
                steps.append({"raw": _flat_grad(strategy.model), "reference": reference.detach().cpu().clone()})

            def before_update(self, strategy, **kw):  # after every after_backward, before the step
                steps[-1]["applied"] = _flat_grad(strategy.model)
        return [Record()]


class ProbePlugin:
    def __init__(self, cls: type = Probe):
        self.cls = cls
        self.probes: list = []

    @hookimpl
    def register_strategies(self, register):
        register(self.cls.name, self._make, description="records training steps (tests only)")

    def _make(self, options):
        self.probes.append(self.cls())
        return self.probes[-1]


def _engine(*overrides, pm=None) -> Engine:
    return Engine(load_config(None, [*TINY, *SMALL, *overrides]), pm=pm)


def _update(model_dir, texts, tmp_path, *overrides, pm=None, name="new.jsonl") -> dict:
    data = write_jsonl(tmp_path / name, texts)
    return _engine(*overrides, pm=pm).update([str(data)], model_dir)


def _state(model_dir, version: str, name: str) -> dict:
    from retain.core.storage.store import VersionFiles
    from retain.core.learning.strategy import read_state

    return read_state(VersionFiles(ModelStore(model_dir), version), name)


def _clean(texts: list[str]) -> list[str]:
    """The texts as the model learns them (after the built-in ``clean`` preprocessor)."""
    from retain.core.data.items import Item
    from retain.plugins.preprocessors import Clean, CleanOptions

    return [Clean(CleanOptions())(Item(t)).text for t in texts]


def _sequences(x: torch.Tensor, y: torch.Tensor) -> set[tuple]:
    """Each row's input tokens, padding dropped."""
    return {tuple(row[:int(n)].tolist()) for row, n in zip(x, (y != IGNORE_INDEX).sum(1))}


def _first_rows(lm, texts: list[str], width: int = 64) -> set[tuple]:
    """The first training sequence of each text."""
    rows = lm.encode(texts, width)
    x, y, owner = rows.x, rows.y, rows.owner
    first = torch.ones(len(owner), dtype=torch.bool)
    first[1:] = owner[1:] != owner[:-1]
    return _sequences(x[first], y[first])


def _all_rows(lm, texts: list[str], width: int = 64) -> set[tuple]:
    rows = lm.encode(texts, width)
    return _sequences(rows.x, rows.y)


def _row_tokens(step: dict) -> list[tuple[int, tuple]]:
    """(tokens, sequence) of each row of a recorded step."""
    lengths = (step["y"] != IGNORE_INDEX).sum(1).tolist()
    return [(n, tuple(row[:n].tolist())) for row, n in zip(step["x"], lengths)]


def _batch_rows(probe: Probe) -> set[tuple]:
    return set().union(*(_sequences(step["x"], step["y"]) for step in probe.steps))


@pytest.fixture(scope="module")
def _stateful_base(tmp_path_factory, old_texts) -> Path:
    """A tiny base model whose training recorded the state of every stateful strategy."""
    root = tmp_path_factory.mktemp("stateful")
    data = write_jsonl(root / "old.jsonl", old_texts[:120])
    _engine(f"fine_tuning.strategy={','.join(STATEFUL)}").train([str(data)], root / "model")
    return root / "model"


@pytest.fixture
def stateful_base(_stateful_base, tmp_path) -> Path:
    return private_copy(_stateful_base, tmp_path)


def test_replay_buffer_persists_across_updates_and_is_replayed(stateful_base, old_texts, new_texts, tmp_path):
    old_texts = _clean(old_texts[:120])
    base_buffer = _state(stateful_base, "0001", "replay")["texts"]
    assert len(base_buffer) == 40 and set(base_buffer) <= set(old_texts)  # seeded by `retain train`

    plugin = ProbePlugin()
    pm = make_plugin_manager(extra_plugins=[plugin])
    first, second = _clean(new_texts[:40]), _clean(new_texts[40:60])
    _update(stateful_base, first, tmp_path, "fine_tuning.strategy=replay,probe", pm=pm)
    tokenizer = load_version(ModelStore(stateful_base)).lm
    # Replayed rows are of items the base learned (drawn from its token shard, the whole history,
    # not only the buffer), never of its held-out ones, and hold half of each epoch's tokens.
    held = {r["text"] for r in ModelStore(stateful_base).read_jsonl("0001", "holdout.jsonl")}
    learned = [t for t in old_texts if t not in held]
    rows = _batch_rows(plugin.probes[0])
    assert rows & (_first_rows(tokenizer, learned) - _first_rows(tokenizer, base_buffer))
    assert not rows & (_first_rows(tokenizer, old_texts) - _first_rows(tokenizer, learned))
    buffered = _all_rows(tokenizer, learned)
    replayed = sum(n for s in plugin.probes[0].steps for n, seq in _row_tokens(s) if seq in buffered)
    total = sum(n for s in plugin.probes[0].steps for n, _ in _row_tokens(s))
    report = json.loads((stateful_base / "versions" / "0002" / "report.json").read_text())
    assert report["counts"]["replay_tokens"] == replayed
    longest = max(n for s in plugin.probes[0].steps for n, _ in _row_tokens(s))
    epochs = len(report["epoch_losses"])
    assert abs(replayed - (total - replayed)) <= epochs * longest  # 1:1, to within a row per epoch

    after_first = _state(stateful_base, "0002", "replay")
    assert len(after_first["texts"]) == 40
    kept_new = set(after_first["texts"]) & set(first)
    assert kept_new and set(after_first["texts"]) <= set(base_buffer) | set(first)
    # Reservoir keys travel with the texts: an old item keeps the key it was drawn with.
    old_keys = dict(zip(base_buffer, _state(stateful_base, "0001", "replay")["keys"].tolist()))
    for text, key in zip(after_first["texts"], after_first["keys"].tolist()):
        assert text in kept_new or old_keys[text] == key

    # A second update, in a fresh engine, replays items the first update learned.
    _update(stateful_base, second, tmp_path, "fine_tuning.strategy=replay,probe", pm=pm, name="second.jsonl")
    held_first = {r["text"] for r in ModelStore(stateful_base).read_jsonl("0002", "holdout.jsonl")}
    assert _batch_rows(plugin.probes[1]) & _first_rows(tokenizer, [t for t in first if t not in held_first])


def test_reservoir_gives_every_item_the_same_chance_and_resumes_exactly():
    from retain.strategies.adapters import TextReservoir

    def stream(batches, texts=None, keys=None):
        pending: list[str] = []
        res = TextReservoir(20, lambda: pending, encode=None, texts=texts, keys=keys)
        for batch in batches:
            pending[:] = batch
            res.post_adapt(None, None)
        return res

    batches = [[f"b{b}-{i}" for i in range(20)] for b in range(5)]
    counts = [0] * 5
    for seed in range(300):
        torch.manual_seed(seed)
        for text in stream(batches).texts:
            counts[int(text[1:].split("-")[0])] += 1
    shares = [c / sum(counts) for c in counts]
    assert all(0.18 < s < 0.22 for s in shares), shares  # 20% each, ~4 sd margin

    torch.manual_seed(7)
    whole = stream(batches)
    torch.manual_seed(7)
    half = stream(batches[:2])
    resumed = stream(batches[2:], texts=half.texts, keys=half.keys.clone())
    assert resumed.texts == whole.texts and torch.equal(resumed.keys, whole.keys)


def test_ewc_importances_are_nonzero_accumulate_and_reload_bit_identical(tmp_path, old_texts, new_texts):
    from retain.strategies.adapters import OnlineEWC

    engine = _engine("fine_tuning.strategy=ewc", "full_training.epochs=1")
    store = ModelStore(tmp_path / "model")
    with store.lock():
        data = write_jsonl(tmp_path / "old.jsonl", old_texts[:80])
        cand = cycle.candidate(engine.setup, "full_training", [str(data)], store, None)
        computed = cand.strategies[0].plugin.latest_importances()
        cycle.commit(engine.setup, cand, store)
    saved = {k.removeprefix("importance/"): v
             for k, v in store.read_tensors("0001", "strategy/ewc.safetensors").items()}
    model = load_version(store).model
    assert set(saved) == {n for n, _ in model.named_parameters()}
    assert all(torch.equal(saved[k], computed[k]) for k in computed)
    assert all(v.sum() > 0 for v in saved.values())

    # Restored into the plugin as they were saved, anchored at the version's weights.
    ewc = OnlineEWC(1.0, 1.0, saved)
    fake = type("T", (), {"clock": type("C", (), {"train_exp_counter": 1})(), "model": model, "device": "cpu"})
    ewc.before_training_exp(fake)
    assert all(torch.equal(ewc.importances[0][k].data, saved[k]) for k in saved)
    assert all(torch.equal(ewc.saved_params[0][k].data, p) for k, p in model.named_parameters())

    _update(tmp_path / "model", new_texts[:12], tmp_path, "fine_tuning.strategy=ewc", "fine_tuning.epochs=1")
    online = {k.removeprefix("importance/"): v for k, v in _state(tmp_path / "model", "0002", "ewc").items()}
    # Online EWC with decay 1: the new Fisher adds to the stored one.
    assert all((online[k] >= saved[k]).all() for k in saved)
    assert any((online[k] > saved[k]).any() for k in saved)


def test_large_ewc_lambda_moves_weights_less(stateful_base, new_texts, tmp_path):
    before = dict(load_version(ModelStore(stateful_base)).model.named_parameters())
    fisher = {k.removeprefix("importance/"): v for k, v in _state(stateful_base, "0001", "ewc").items()}
    moved = {}
    for lam in (0, 100000):
        copy = tmp_path / f"lam{lam}"
        shutil.copytree(stateful_base, copy)
        _update(copy, new_texts[:30], tmp_path, "fine_tuning.strategy=ewc", f"options.ewc.ewc_lambda={lam}",
                "fine_tuning.learning_rate=0.003", "fine_tuning.epochs=3")
        after = dict(load_version(ModelStore(copy)).model.named_parameters())
        moved[lam] = (sum(((after[k] - before[k]) ** 2).sum() for k in before).sqrt().item(),
                      sum((fisher[k] * (after[k] - before[k]) ** 2).sum() for k in before).item())
    assert moved[100000][0] < 0.5 * moved[0][0]          # plain distance
    assert moved[100000][1] < 0.05 * moved[0][1]         # where the Fisher says it matters


def _importances(model_dir, version: str, name: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix("importance/"): v for k, v in _state(model_dir, version, name).items()
            if k.startswith("importance/")}


def _si_penalty(importance, params, anchor, lam) -> float:
    """SynapticIntelligencePlugin's term: lambda/2 * sum(importance * (w - anchor)^2)."""
    return lam / 2 * sum(float(importance[k].flatten() @ ((params[k] - anchor[k]).flatten() ** 2))
                         for k in importance)


def _mas_penalty(importance, params, anchor, lam) -> float:
    """MASPlugin's term: lambda * sum(importance * (w - anchor)^2)."""
    return lam * sum(float((importance[k] * (params[k] - anchor[k]) ** 2).sum()) for k in importance)


@pytest.mark.parametrize("name, lam, penalty", [("si", 1000.0, _si_penalty), ("mas", 1.0, _mas_penalty)])
def test_si_and_mas_importances_are_saved_and_penalize_the_next_update(name, lam, penalty, stateful_base,
                                                                         new_texts, tmp_path):
    fast = ["fine_tuning.learning_rate=0.003", "fine_tuning.epochs=1", f"options.{name}.{name}_lambda={lam}"]
    plugin = ProbePlugin()
    pm = make_plugin_manager(extra_plugins=[plugin])
    _update(stateful_base, new_texts[:20], tmp_path, f"fine_tuning.strategy={name},probe", *fast, pm=pm)
    restored, saved = _importances(stateful_base, "0001", name), _importances(stateful_base, "0002", name)
    model = load_version(ModelStore(stateful_base), "0002").model
    assert set(saved) == {n for n, _ in model.named_parameters()}
    assert all(v.abs().sum() > 0 for v in saved.values())                 # non-zero importances
    assert any(not torch.equal(saved[k], restored[k]) for k in saved)     # this update's were merged in

    # The next update starts from 0002: each step's loss carries the penalty that 0002's
    # importances give the distance from 0002's weights (read on the probe, after the plugin).
    _update(stateful_base, new_texts[20:40], tmp_path, f"fine_tuning.strategy={name},probe", *fast, pm=pm,
            name="second.jsonl")
    anchor = dict(model.named_parameters())
    steps = plugin.probes[1].steps
    expected = [penalty(saved, s["params"], anchor, lam) for s in steps]
    assert expected[0] == pytest.approx(0, abs=1e-9)   # first step: the weights are the anchor
    assert min(abs(e) for e in expected[1:]) > 1e-4
    assert [s["extra"] for s in steps] == pytest.approx(expected, rel=1e-3, abs=1e-5)


def _unlike_the_base(n: int) -> list[str]:
    """Texts of letters the base corpus (Python's documentation) hardly uses. Learning them
    pushes the model away from what the base taught it, so their gradient conflicts with the
    gradient of the remembered base sequences (measured on these texts alone: cosine -0.04 to
    -0.4 at every step, where Python's docstrings give +0.05 to +0.7)."""
    rnd = random.Random(0)
    return [" ".join("".join(rnd.choice("QXZJKVW") for _ in range(4)) for _ in range(30)) for _ in range(n)]


def _check_projections(steps: list[dict], check_projected) -> int:
    """Where a step's raw gradient conflicts with a memory's (negative dot product), the applied
    gradient differs from it and passes ``check_projected(raw, applied, references)``; where it
    conflicts with none, it is applied as it is. Returns how many steps conflicted."""
    assert steps and all("applied" in s for s in steps)
    conflicts = 0
    for i, s in enumerate(steps):
        raw, applied = s["raw"], s["applied"]
        refs = s["reference"].reshape(-1, raw.numel())
        assert (refs.abs().sum(1) > 0).all(), i  # the memories gave their reference gradients
        dots, tol = refs @ raw, 1e-5 * raw.norm() * refs.norm(dim=1)
        if (dots < -tol).any():
            conflicts += 1
            assert not torch.allclose(applied, raw), i
            check_projected(raw, applied, refs)
        elif (dots > tol).all():  # (a dot product within rounding of 0 could go either way)
            assert torch.equal(applied, raw), i
    return conflicts


def test_agem_projects_conflicting_gradients_onto_the_memories(stateful_base, new_texts, tmp_path):
    plugin = ProbePlugin(GradProbe)
    _update(stateful_base, new_texts[:20] + _unlike_the_base(20), tmp_path,
            "fine_tuning.strategy=gradprobe,agem", "fine_tuning.epochs=1",
            pm=make_plugin_manager(extra_plugins=[plugin]))

    def agem(raw, applied, refs):  # g - (g.r / r.r) r: the memories' average loss no longer rises
        ref = refs[0]
        assert torch.allclose(applied, raw - (raw @ ref) / (ref @ ref) * ref, rtol=1e-4, atol=1e-7)
        assert abs(float(applied @ ref)) < 1e-4 * float(raw.norm() * ref.norm())

    assert _check_projections(plugin.probes[0].steps, agem) >= 1


def test_gem_projects_conflicting_gradients_so_no_memory_loss_rises(stateful_base, new_texts, tmp_path):
    margin = 0.5
    plugin = ProbePlugin(GradProbe)
    _update(stateful_base, new_texts[:20] + _unlike_the_base(20), tmp_path,
            "fine_tuning.strategy=gradprobe,gem", "fine_tuning.epochs=1", f"options.gem.memory_strength={margin}",
            pm=make_plugin_manager(extra_plugins=[plugin]))

    def gem(raw, applied, refs):
        # GEM's dual solution: applied = raw + sum_t v_t G_t with every v_t >= the margin, so that
        # no remembered update's loss rises (G_t . applied >= 0, up to the QP's 1e-3 damping).
        delta = (applied - raw).double()
        v = torch.linalg.lstsq(refs.double().T, delta.unsqueeze(1)).solution.squeeze(1)
        assert torch.allclose(refs.double().T @ v, delta, rtol=1e-3, atol=1e-7)
        assert (v >= margin - 1e-4).all(), v
        assert ((refs @ applied) >= -1e-3 * float(v.max()) - 1e-4 * float(applied.norm())).all()

    assert _check_projections(plugin.probes[0].steps, gem) >= 1


def _distillation(teacher, step, alpha=1.0, temperature=2.0) -> float:
    with torch.no_grad():
        prev = teacher(step["x"])
    mask = step["y"] != IGNORE_INDEX
    log_p = torch.log_softmax(step["logits"][mask] / temperature, dim=-1)
    q = torch.softmax(prev[mask] / temperature, dim=-1)
    return alpha * float(F.kl_div(log_p, q, reduction="batchmean"))


def test_lwf_loss_includes_distillation_from_previous_model(base_model, new_texts, tmp_path):
    plugin = ProbePlugin()
    _update(base_model, new_texts[:20], tmp_path, "fine_tuning.strategy=lwf,probe", "options.lwf.alpha=2.0",
            "fine_tuning.learning_rate=0.003", pm=make_plugin_manager(extra_plugins=[plugin]))
    teacher = load_version(ModelStore(base_model), "0001").model.eval()
    steps = plugin.probes[0].steps
    expected = [_distillation(teacher, s, alpha=2.0) for s in steps]
    assert [s["extra"] for s in steps] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert expected[0] == pytest.approx(0, abs=1e-6)  # student == teacher at the first step
    assert min(expected[1:]) > 0


def test_composition_applies_every_strategy(stateful_base, new_texts, tmp_path):
    plugin = ProbePlugin()
    lam = 100000.0
    report = _update(stateful_base, new_texts[:20], tmp_path, "fine_tuning.strategy=low_lr,replay,ewc,lwf,probe",
                     "options.low_lr.schedule=cosine", f"options.ewc.ewc_lambda={lam}", "options.lwf.alpha=3.0",
                     "fine_tuning.learning_rate=0.003", pm=make_plugin_manager(extra_plugins=[plugin]))
    assert report["strategies"] == ["low_lr", "replay", "ewc", "lwf", "probe"]
    assert report["settings"]["schedule"] == "cosine"                       # low_lr
    previous = load_version(ModelStore(stateful_base), "0001")
    buffer = _state(stateful_base, "0001", "replay")["texts"]
    steps = plugin.probes[0].steps
    assert _batch_rows(plugin.probes[0]) & _first_rows(previous.lm, buffer)   # replay
    fisher = {k.removeprefix("importance/"): v for k, v in _state(stateful_base, "0001", "ewc").items()}
    anchor = dict(previous.model.named_parameters())
    teacher = previous.model.eval()
    ewc_terms = [lam * sum(float((fisher[k] * (s["params"][k] - anchor[k]) ** 2).sum()) for k in fisher)
                 for s in steps]
    lwf_terms = [_distillation(teacher, s, alpha=3.0) for s in steps]
    assert max(ewc_terms) > 1e-3 and max(lwf_terms) > 1e-3
    assert [s["extra"] for s in steps] == pytest.approx(
        [e + d for e, d in zip(ewc_terms, lwf_terms)], rel=1e-3, abs=1e-6)   # ewc + lwf
    for name in ("replay", "ewc"):
        assert (stateful_base / "versions" / "0002" / "strategy" / f"{name}.safetensors").is_file()


def test_every_listed_strategy_runs_an_update(stateful_base, new_texts, tmp_path):
    from typer.testing import CliRunner

    from retain.cli import app

    result = CliRunner().invoke(app, ["strategies", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    names = [row["name"] for row in listed]
    assert {"naive", "low_lr", *STATEFUL, "lwf"} <= set(names)
    registry = Registry(make_plugin_manager())
    for row in listed:
        from dataclasses import is_dataclass
        assert row["description"], row
        assert is_dataclass(registry.get("strategies", row["name"]).options), row["name"]

    for i, name in enumerate(names):
        copy = tmp_path / name
        shutil.copytree(stateful_base, copy)
        report = _update(copy, new_texts[i * 4:i * 4 + 10], tmp_path, f"fine_tuning.strategy={name}",
                         "fine_tuning.epochs=1", name=f"{name}.jsonl")
        assert report["status"] == "accepted" and report["strategies"] == [name], name
        if name in STATEFUL:  # its state was restored from 0001 and saved again with 0002
            files = ModelStore(copy).manifest("0002")["files"]
            assert any(f.startswith(f"strategy/{name}.") for f in files), name


def test_third_party_strategy_package_installs_and_runs(base_model, new_texts, tmp_path, monkeypatch):
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE, source)  # build outside the repo: no build/ or egg-info left behind
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True)
    monkeypatch.syspath_prepend(str(target))

    pm = make_plugin_manager()  # entry points only: the package is found through its metadata
    reg = Registry(pm).get("strategies", "l2_anchor")
    assert reg.plugin == "l2_anchor" and reg.option_defaults() == {"strength": 1.0}
    assert any(d.project_name == "retain-l2-anchor" for _, d in pm.list_plugin_distinfo())

    before = dict(load_version(ModelStore(base_model)).model.named_parameters())
    moved = {}
    for strategy, extra in (("low_lr", []), ("low_lr,l2_anchor", ["options.l2_anchor.strength=100.0"])):
        copy = tmp_path / strategy.replace(",", "+")
        shutil.copytree(base_model, copy)
        report = _update(copy, new_texts[:20], tmp_path, f"fine_tuning.strategy={strategy}",
                         "fine_tuning.learning_rate=0.003", *extra, pm=make_plugin_manager())
        assert report["status"] == "accepted"
        after = dict(load_version(ModelStore(copy)).model.named_parameters())
        moved[strategy] = sum(((after[k] - before[k]) ** 2).sum() for k in before).sqrt().item()
    assert moved["low_lr,l2_anchor"] < 0.5 * moved["low_lr"]
