from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gemel_engine import zoo
from gemel_engine.bundle import MANIFEST_NAME, TENSORS_NAME, ModelRecipe, inspect_bundle, load_bundle, save_bundle
from gemel_engine.errors import BundleError
from gemel_engine.layers import analyze_models
from gemel_engine.memory import footprint
from gemel_engine.modelset import ModelSet
from gemel_engine.sharing import apply_plan

RECIPES = {"a": ModelRecipe("resnet18", {"num_classes": 2}), "b": ModelRecipe("resnet34", {"num_classes": 3})}


@pytest.fixture(scope="module")
def merged():
    torch.manual_seed(0)
    models = ModelSet({name: recipe.build() for name, recipe in RECIPES.items()})
    plan = analyze_models(models.as_dict()).plan()
    apply_plan(models, plan, warm_start="mean")
    return models, plan


@pytest.fixture
def bundle_dir(merged, tmp_path: Path) -> Path:
    models, plan = merged
    return save_bundle(models, plan, tmp_path / "bundle", recipes=RECIPES, metadata={"note": "test"})


def _manifest(bundle_dir: Path) -> dict:
    return json.loads((bundle_dir / MANIFEST_NAME).read_text())


def _write_manifest(bundle_dir: Path, manifest: dict) -> None:
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(manifest))


def _rehash(bundle_dir: Path) -> None:
    import hashlib

    manifest = _manifest(bundle_dir)
    manifest["tensor_sha256"] = hashlib.sha256((bundle_dir / TENSORS_NAME).read_bytes()).hexdigest()
    _write_manifest(bundle_dir, manifest)


def test_a_bundle_round_trips_bit_for_bit_with_its_sharing_restored(merged, bundle_dir: Path):
    models, plan = merged
    loaded = load_bundle(bundle_dir)
    for name in models:
        original, restored = models[name].state_dict(), loaded.models[name].state_dict()
        assert original.keys() == restored.keys()
        for key in original:
            assert torch.equal(original[key], restored[key]), f"{name}.{key}"
    for instance in loaded.plan.instances:
        modules = [loaded.models[ref.model].get_submodule(ref.layer) for ref in instance.members]
        assert len({m.weight.untyped_storage().data_ptr() for m in modules}) == 1
        assert all(m.weight is modules[0].weight for m in modules)
    assert loaded.plan == plan
    assert footprint(loaded.models) == footprint(models)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded.models["b"](x), models["b"](x))


def test_the_tensor_file_stores_each_shared_tensor_once(merged, bundle_dir: Path):
    models, _ = merged
    measured = footprint(models)
    size = (bundle_dir / TENSORS_NAME).stat().st_size
    assert abs(size - measured.total_bytes) <= 0.01 * measured.total_bytes
    assert size < measured.naive_param_bytes * 0.7


def test_inspect_reads_the_savings_from_the_tensor_header(merged, bundle_dir: Path):
    models, plan = merged
    info = inspect_bundle(bundle_dir)
    measured = footprint(models)
    assert info.unmerged_param_bytes == measured.naive_param_bytes
    assert info.unique_param_bytes == measured.param_bytes
    assert info.savings_bytes == analyze_models({n: models[n] for n in models}).max_savings_bytes
    assert [m["arch"] for m in info.models] == ["resnet18", "resnet34"]
    assert info.metadata == {"note": "test"} and len(info.plan.instances) == len(plan.instances)


def test_an_existing_bundle_is_not_overwritten_by_accident(merged, bundle_dir: Path):
    models, plan = merged
    with pytest.raises(BundleError, match="already exists"):
        save_bundle(models, plan, bundle_dir, recipes=RECIPES)
    save_bundle(models, plan, bundle_dir, recipes=RECIPES, overwrite=True)
    assert sorted(p.name for p in bundle_dir.parent.iterdir()) == ["bundle"]  # no staging left behind


def test_saving_models_the_plan_was_not_applied_to_is_refused(tmp_path: Path):
    models = ModelSet({name: recipe.build(device="cpu") for name, recipe in RECIPES.items()})
    plan = analyze_models(models.as_dict()).plan()
    with pytest.raises(BundleError, match="not applied"):
        save_bundle(models, plan, tmp_path / "b", recipes=RECIPES)
    assert not (tmp_path / "b").exists()


def test_a_truncated_tensor_file_fails_its_checksum(bundle_dir: Path):
    path = bundle_dir / TENSORS_NAME
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(BundleError, match="sha256 differs"):
        load_bundle(bundle_dir)


def test_a_truncated_tensor_file_with_a_forged_checksum_is_still_refused(bundle_dir: Path):
    path = bundle_dir / TENSORS_NAME
    path.write_bytes(path.read_bytes()[:-1000])
    _rehash(bundle_dir)
    with pytest.raises(BundleError, match="unreadable"):
        load_bundle(bundle_dir)


def test_a_flipped_byte_fails_the_checksum(bundle_dir: Path):
    path = bundle_dir / TENSORS_NAME
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="corrupted or tampered"):
        load_bundle(bundle_dir)


def test_tensors_of_another_architecture_are_refused_even_with_a_valid_checksum(bundle_dir: Path):
    other = zoo.get_model("resnet50", num_classes=2)
    state = {f"a/{k}": v.contiguous() for k, v in other.state_dict().items()}
    save_file(state, str(bundle_dir / TENSORS_NAME))
    _rehash(bundle_dir)
    with pytest.raises(BundleError, match=r"absent from the file|do not fit"):
        load_bundle(bundle_dir)


def test_a_manifest_that_unshares_what_the_plan_shares_is_refused(bundle_dir: Path):
    manifest = _manifest(bundle_dir)
    first = manifest["plan"]["instances"][0]["members"][1]
    key = f"{first['layer']}.weight"
    manifest["models"][1]["parameters"][key] = f"b/{key}"
    _write_manifest(bundle_dir, manifest)
    with pytest.raises(BundleError, match="separately"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(format_version=2), "unsupported bundle format version 2"),
        (lambda m: m.update(format="zip"), "not a gemel-bundle manifest"),
        (lambda m: m["models"][0].update(arch="resnet19"), "unknown architecture 'resnet19'"),
        (lambda m: m["models"][0].update(name="../evil"), "model name"),
        (lambda m: m["plan"].update(version=7), "invalid plan"),
        (lambda m: m.update(models=[]), "lists no models"),
    ],
)
def test_a_bad_manifest_is_refused_with_a_clear_error(bundle_dir: Path, edit, message):
    manifest = _manifest(bundle_dir)
    edit(manifest)
    _write_manifest(bundle_dir, manifest)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)


def test_a_bundle_written_before_the_one_version_key_still_loads(bundle_dir: Path):
    manifest = _manifest(bundle_dir)
    assert manifest["version"] == 1 and "format_version" not in manifest  # new bundles write the engine's one key
    manifest["format_version"] = manifest.pop("version")
    _write_manifest(bundle_dir, manifest)
    assert set(load_bundle(bundle_dir).models.as_dict()) == {m["name"] for m in manifest["models"]}


def test_a_manifest_that_is_not_json_or_absent_is_refused(bundle_dir: Path, tmp_path: Path):
    (bundle_dir / MANIFEST_NAME).write_text("{broken")
    with pytest.raises(BundleError, match="not readable JSON"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="not a bundle"):
        inspect_bundle(tmp_path)


def test_a_bundles_files_come_with_the_digests_its_manifest_records(bundle_dir: Path):
    import hashlib

    from gemel_engine.bundle import BUNDLE_FILE_NAMES, bundle_file_digests, bundle_model_names

    digests = bundle_file_digests(bundle_dir)
    assert list(digests) == list(BUNDLE_FILE_NAMES) == [MANIFEST_NAME, TENSORS_NAME]
    for name, record in digests.items():
        data = (bundle_dir / name).read_bytes()
        assert record == {"sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
    assert bundle_model_names(bundle_dir) == [m["name"] for m in json.loads((bundle_dir / MANIFEST_NAME).read_text())[
        "models"]]
    (bundle_dir / TENSORS_NAME).unlink()
    with pytest.raises(BundleError, match="missing"):
        bundle_file_digests(bundle_dir)
