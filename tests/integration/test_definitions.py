import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

REPO = Path(__file__).resolve().parents[2]


def test_code_location_has_the_asset_graph_with_lineage() -> None:
    from dagster_project.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {
        "raw_catalog",
        "raw_interactions",
        "curated_conversations",
        "base_model",
        "tokenized_shards",
    } <= keys

    def parents(name: str) -> set[str]:
        return {k.to_user_string() for k in graph.get(dg.AssetKey(name)).parent_keys}

    assert parents("raw_interactions") == {"raw_catalog"}
    assert parents("curated_conversations") == {"raw_catalog", "raw_interactions"}
    assert parents("base_model") == {"curated_conversations"}
    assert parents("tokenized_shards") == {"curated_conversations", "base_model"}
    assert parents("trained_checkpoint") == {"tokenized_shards", "base_model"}
    assert parents("eval_report") == {"trained_checkpoint", "preference_checkpoint"}
    assert parents("preference_checkpoint") == {"preference_shards", "trained_checkpoint"}
    assert parents("preference_pairs") == {"raw_catalog", "raw_interactions"}
    assert parents("preference_shards") == {"preference_pairs", "base_model"}
    for name in (
        "raw_interactions",
        "curated_conversations",
        "tokenized_shards",
        "preference_pairs",
        "preference_shards",
    ):
        assert graph.get(dg.AssetKey(name)).partitions_def is not None
    checks = {k.name for k in defs.resolve_asset_graph().asset_check_keys}
    assert {
        "exact_masks",
        "train_serve_consistency",
        "manifest_checksums",
        "no_member_in_two_splits",
        "member_split_matches_conversations",
    } <= checks


@pytest.mark.slow
def test_workspace_loads_with_the_dagster_cli(tmp_path: Path) -> None:
    """`dagster definitions validate` is what `dagster dev -w workspace.yaml` loads."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "PLATFORM_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr


def test_bad_settings_fail_with_advice(monkeypatch) -> None:
    import pytest

    from core.settings import load_settings

    monkeypatch.setenv("PLATFORM_DATA_SOURCE", "s3")
    with pytest.raises(ValueError, match="synthetic"):
        load_settings()
    monkeypatch.setenv("PLATFORM_DATA_SOURCE", "synthetic")
    monkeypatch.setenv("PLATFORM_PARTITION_START", "yesterday")
    with pytest.raises(ValueError, match="PLATFORM_PARTITION_START"):
        load_settings()


def test_one_training_run_at_a_time(tmp_path: Path) -> None:
    """trained_checkpoint sits in the `training` pool, and the instance we ship limits pools to 1."""
    import shutil

    from dagster_project.definitions import defs
    from dagster_project.instance import INSTANCE_TEMPLATE

    assets_def = defs.resolve_assets_def("trained_checkpoint")
    assert assets_def.node_def.pool == "training"
    shutil.copyfile(INSTANCE_TEMPLATE, tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


def test_leftover_ages_reach_the_artifact_store_and_bad_values_name_the_variable(monkeypatch) -> None:
    import pytest

    from core.settings import load_settings
    from dagster_project.resources import build_resources

    monkeypatch.setenv("ARTIFACT_TEMP_MAX_AGE_HOURS", "6")
    monkeypatch.setenv("ARTIFACT_STAGING_RETENTION_HOURS", "168")
    store = build_resources(load_settings())["artifacts"]
    assert (store.temp_dir_max_age_hours, store.staging_retention_hours) == (6.0, 168.0)
    monkeypatch.setenv("ARTIFACT_STAGING_RETENTION_HOURS", "0.1")
    with pytest.raises(ValueError, match="ARTIFACT_STAGING_RETENTION_HOURS"):
        build_resources(load_settings())


def test_file_globs_reach_the_landing_resource_by_variable_name(monkeypatch, tmp_path: Path) -> None:
    """The UI shows CATALOG_FILES, not the path; Dagster resolves the variable when the run starts."""
    from core.settings import load_settings
    from dagster_project.resources import build_resources
    from resources.landing import LandingArea

    monkeypatch.setenv("PLATFORM_HOME", str(tmp_path))
    monkeypatch.setenv("CATALOG_FILES", "/data/first/*.csv")
    monkeypatch.setenv("INTERACTION_FILES", "  /data/events/{day}.csv  ")  # trimmed by the settings: a value
    landing = build_resources(load_settings())["landing"]
    assert isinstance(landing.catalog_files, dg.EnvVar) and landing.catalog_files.env_var_name == "CATALOG_FILES"
    assert landing.interaction_files == "/data/events/{day}.csv"

    seen: list[str] = []

    @dg.asset
    def probe(landing: LandingArea) -> None:
        seen.append(landing.catalog_files)

    monkeypatch.setenv("CATALOG_FILES", "/data/second/*.csv")
    assert dg.materialize([probe], resources={"landing": landing}).success
    assert seen == ["/data/second/*.csv"]

    monkeypatch.delenv("CATALOG_FILES")
    assert build_resources(load_settings())["landing"].catalog_files == ""  # unset: the default, no EnvVar


def test_kubeconfig_reaches_the_kubernetes_launcher_by_variable_name(monkeypatch, tmp_path: Path) -> None:
    from core.settings import K8S_DEFAULT_NAMESPACE, load_settings
    from dagster_project.resources import build_launcher

    monkeypatch.setenv("PLATFORM_HOME", str(tmp_path))
    monkeypatch.setenv("TRAINING_LAUNCHER", "kubernetes")
    monkeypatch.setenv("K8S_IMAGE", "registry.example.com/catalog-posttrain:0.1.0")
    monkeypatch.setenv("K8S_KUBECONFIG", str(tmp_path / "kubeconfig"))
    launcher = build_launcher(load_settings())
    assert isinstance(launcher.kubeconfig, dg.EnvVar) and launcher.kubeconfig.env_var_name == "K8S_KUBECONFIG"
    assert launcher.namespace == K8S_DEFAULT_NAMESPACE == type(launcher)().namespace


@pytest.mark.slow
def test_sensor_intervals_and_the_cron_are_read_when_the_definitions_load(tmp_path: Path) -> None:
    """Decorator arguments: the values in the environment of the process that loads the code location."""
    env = {
        **os.environ,
        "PLATFORM_HOME": str(tmp_path),
        "LANDING_SENSOR_INTERVAL_SECONDS": "45",
        "RETRAIN_SENSOR_INTERVAL_SECONDS": "90",
        "NIGHTLY_RETRAIN_CRON": "30 4 * * *",
    }
    script = (
        "from dagster_project.definitions import defs\n"
        "print(defs.get_sensor_def('landing_sensor').minimum_interval_seconds,"
        " defs.get_sensor_def('retraining_sensor').minimum_interval_seconds,"
        " defs.get_schedule_def('nightly_retrain_schedule').cron_schedule)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["45", "90", "30", "4", "*", "*", "*"]


def test_the_code_location_loads_without_the_model_libraries(tmp_path: Path) -> None:
    """The webserver's code server, each sensor tick and every run worker import the definitions: an ingestion
    run or a UI reload must not wait for torch and transformers (they load in the steps that use them)."""
    script = (
        "import sys\n"
        "import dagster_project.definitions\n"
        "print(' '.join(m for m in ('torch', 'transformers', 'tokenizers', 'safetensors', 'matplotlib')"
        " if m in sys.modules) or 'none')\n"
    )
    env = {**os.environ, "PLATFORM_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["none"], f"imported when the code location loads: {proc.stdout}"


def test_the_ducklake_backend_is_a_setting_and_its_catalog_stays_an_env_var(monkeypatch, tmp_path) -> None:
    """The UI shows DUCKLAKE_CATALOG by name: the conninfo may hold a password."""
    from core.settings import load_settings
    from dagster_project.resources import build_warehouse

    monkeypatch.setenv("PLATFORM_HOME", str(tmp_path))
    monkeypatch.setenv("WAREHOUSE_BACKEND", "ducklake")
    monkeypatch.setenv("DUCKLAKE_CATALOG", "dbname=lake host=127.0.0.1 user=platform password=x")
    monkeypatch.delenv("DUCKLAKE_DATA_PATH", raising=False)
    warehouse = build_warehouse(load_settings())
    assert warehouse.backend == "ducklake"
    assert warehouse.ducklake_data_path == str(tmp_path.resolve() / "lake")
    assert "DUCKLAKE_CATALOG" in repr(warehouse.ducklake_catalog)
