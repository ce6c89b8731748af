"""The Ray engine (explain_dataset, gradcam explain --engine ray) against the local engine, on loopback only.

One local Ray cluster for the whole module, started by ``ray_cluster_run.py`` inside a
private network namespace (only ``lo``) and PID namespace that this module creates: no
Ray socket can reach the machine's network, and when the helper exits (or is killed at
the timeout) the kernel ends every Ray process it started.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("ray", reason='the Ray engine tests need ray[data]: pip install -e ".[dev]" (or "[ray]")')

from gradcam_model.runtime import CSV_FIELDS, explain_files, load_explainer, load_image, preprocess  # noqa: E402
from gradcam_model.runtime.images import DEFAULT_MAX_SIDE  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HELPER = Path(__file__).resolve().parent / "ray_cluster_run.py"
BATCH = 4
TIMEOUT_S = 240  # the whole cluster session; measured ~60-90 s on 2 busy cores


def _images(folder: Path) -> list[Path]:
    """11 JPEGs of varied sizes in two class folders and the root, plus one corrupt file."""
    rng = np.random.default_rng(3)
    paths = []
    for i in range(12):
        sub = folder / ("cat" if i % 3 == 0 else "dog" if i % 3 == 1 else "")
        sub.mkdir(parents=True, exist_ok=True)
        size = (int(rng.integers(40, 120)), int(rng.integers(40, 120)))
        picture = cv2.resize(rng.integers(0, 256, (3, 4, 3), dtype=np.uint8), size, interpolation=cv2.INTER_CUBIC)
        path = sub / f"img{i:02d}.jpg"
        cv2.imwrite(str(path), picture)
        paths.append(path)
    paths[5].write_bytes(b"not an image at all")
    return paths


def _namespace_command(spec: Path) -> list[str]:
    missing = [tool for tool in ("unshare", "ip", "ss") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        pytest.fail(
            f"the Ray tests run their cluster in a private network namespace: they need root and unshare, ip, ss "
            f"(missing: {', '.join(missing) or 'none'}; euid {os.geteuid()})"
        )
    inner = f"ip link set lo up && exec {sys.executable} {HELPER} {spec}"
    # --net: only a loopback interface; --pid --fork --kill-child: the helper is PID 1 of its own PID
    # namespace, so every Ray process dies with it, and it dies with unshare (killed at the timeout)
    return ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "sh", "-c", inner]


@pytest.fixture(scope="module")
def guided_artifact(tmp_path_factory):
    """A small guided Grad-CAM ONNX artifact (32x32, top 2): its sixth output is the guided gradient."""
    import torch

    import gradcam_model as gc

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    ).eval()  # fmt: skip
    wrapper = gc.GradCAMModel(model, "2", method="guided-gradcam", example_input=torch.randn(1, 3, 32, 32), top_k=2)
    return gc.export_onnx(wrapper, tmp_path_factory.mktemp("guided-artifact") / "guided.onnx")


@pytest.fixture(scope="module")
def ray_run(artifacts, tmp_path_factory, crop_artifact, odd_picture_dir, guided_artifact):
    work = tmp_path_factory.mktemp("ray")
    _images(work / "in")
    artifact = str(artifacts["static.onnx"])
    spec = {"artifact": artifact, "inputs": [str(work / "in")], "work": str(work), "batch_size": BATCH,
            "crash_marker": str(work / "crash.marker"), "results": str(work / "results.json"),
            "crop_artifact": str(crop_artifact), "odd_pictures": str(odd_picture_dir),
            "guided_artifact": str(guided_artifact)}  # fmt: skip
    (work / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(_namespace_command(work / "spec.json"), env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, cwd=work)  # fmt: skip
    assert done.returncode == 0, f"helper failed ({done.returncode}):\n{done.stderr[-6000:]}"
    local = explain_files(artifact, spec["inputs"], work / "local", batch_size=BATCH, progress=False, save_maps=True)
    return {"work": work, "spec": spec, "results": json.loads((work / "results.json").read_text()), "local": local}


def _rows(out: Path) -> list[dict]:
    with open(out / "predictions.csv", newline="") as f:
        return list(csv.DictReader(f))


def _relative(rows: list[dict], out: Path) -> list[dict]:
    """Rows with the overlay paths relative to their output folder (the only column that names it)."""
    fixed = []
    for row in rows:
        overlays = [str(Path(p).relative_to(out)) for p in row["overlay"].split(";") if p]
        fixed.append({**row, "overlay": ";".join(overlays)})
    return fixed


def test_only_loopback_exists_and_every_listener_is_on_it(ray_run):
    results = ray_run["results"]
    assert results["interfaces"] == ["lo"]
    for when in ("listeners", "listeners_end"):
        listeners = results[when]
        assert listeners, "no Ray listener seen: the check would be vacuous"
        hosts = {address.rsplit(":", 1)[0] for address in listeners}
        assert hosts <= {"127.0.0.1", "[::ffff:127.0.0.1]", "[::1]"}, f"{when}: {sorted(hosts)}"
    assert results["ray_initialized_after"] is False  # shut down by local_cluster's finally


def test_rows_equal_the_local_engine_including_a_corrupt_image(ray_run):
    work = ray_run["work"]
    ray_rows = _relative(_rows(work / "ray"), work / "ray")
    local_rows = _relative(_rows(work / "local"), work / "local")
    assert list(ray_rows[0]) == list(CSV_FIELDS)
    assert ray_rows == local_rows
    failed = [r for r in ray_rows if r["error"]]
    assert len(failed) == 1 and failed[0]["path"].endswith("img05.jpg") and "not a readable image" in failed[0]["error"]
    assert ray_run["results"]["equal_run"]["failures"] == 1


def test_maps_and_overlays_match_the_local_engine(ray_run):
    work = ray_run["work"]
    explainer = load_explainer(ray_run["spec"]["artifact"])
    local = ray_run["local"]
    ray_overlays = sorted(p.relative_to(work / "ray") for p in (work / "ray" / "overlays").rglob("*.jpg"))
    assert ray_overlays == sorted(p.relative_to(work / "local") for p in (work / "local" / "overlays").rglob("*.jpg"))
    checked = 0
    for prediction in local.predictions:
        if prediction.error:
            continue
        key = str(prediction.overlays[0].relative_to(work / "local" / "overlays").with_suffix(""))
        ray_map = np.load(work / "ray" / "maps" / f"{key}.npy")
        image = preprocess(load_image(prediction.path, max_side=DEFAULT_MAX_SIDE), explainer.metadata)
        local_map = explainer(image[None]).cam[0]
        np.testing.assert_allclose(ray_map, local_map, rtol=0, atol=1e-6)
        saved = np.load(work / "local" / "maps" / f"{key}.npy")  # --save-maps on the local engine: same format
        assert (saved.dtype, saved.shape) == (ray_map.dtype, ray_map.shape) == (np.float32, local_map.shape)
        np.testing.assert_allclose(saved, local_map, rtol=0, atol=1e-6)
        a = cv2.imread(str(prediction.overlays[0])).astype(int)
        b = cv2.imread(str(work / "ray" / "overlays" / f"{key}.jpg")).astype(int)
        assert np.abs(a - b).max() <= 2  # same uint8 picture up to a rounding step, through the JPEG codec
        checked += 1
    assert checked == 11


def test_parquet_holds_the_same_rows(ray_run):
    import pyarrow.parquet as pq

    work = ray_run["work"]
    table = pq.read_table(work / "ray" / "predictions.parquet").to_pylist()
    rows = _rows(work / "ray")
    assert [t["path"] for t in table] == [r["path"] for r in rows]
    for t, r in zip(table, rows, strict=True):
        assert (t["error"] or "") == r["error"]
        if not r["error"]:
            assert f"{t['probability']:.6f}" == r["probability"] and str(t["predicted_index"]) == r["predicted_index"]
            assert ";".join(t["overlay"]) == r["overlay"]


def test_a_killed_actor_is_retried_and_every_input_appears_once(ray_run):
    results, work = ray_run["results"], ray_run["work"]
    crash = results["crash"]
    assert crash["marker"] and crash["killed_pid"].isdigit()  # an actor really died mid-run
    expected = [str(p.path) for p in ray_run["local"].predictions]
    assert crash["paths"] == expected and crash["failures"] == 1
    rows = _rows(work / "crash")
    assert [r["path"] for r in rows] == expected
    assert len(list((work / "crash" / "overlays").rglob("*.jpg"))) == 11


def test_cli_engine_ray_and_overwrite_refusal(ray_run):
    results, work = ray_run["results"], ray_run["work"]
    first, again, forced = results["cli"], results["cli_again"], results["cli_overwrite"]
    assert first["rc"] == 1 and "explained 11 of 12 images on Ray (2 actors" in first["stdout"]
    assert "predictions.parquet" in first["stdout"] and "skipped:" in first["stderr"]
    assert again["rc"] == 2 and again["stdout"] == ""
    assert again["stderr"] == (
        f"gradcam: error: {work / 'cli'} already holds predictions.csv, predictions.parquet from an earlier run; "
        "pass --overwrite to replace its outputs or choose another output folder\n"
    )
    assert forced["rc"] == 1
    assert _relative(_rows(work / "cli"), work / "cli") == _relative(_rows(work / "local"), work / "local")


def test_sigterm_keeps_rows_and_resume_ends_with_the_local_engines_rows(ray_run):
    results, work = ray_run["results"], ray_run["work"]
    killed, resumed = results["killed"], results["resumed"]
    assert killed["rc"] == 143 and killed["stderr"].endswith("gradcam: terminated\n"), killed["stderr"]
    assert "add --resume to the same command to continue" in killed["stderr"]
    assert 4 <= results["killed_rows"] < 12
    assert resumed["rc"] == 1, resumed["stderr"]
    assert f"({results['killed_rows']} done by the interrupted run)" in resumed["stdout"]
    assert _relative(_rows(work / "resumed"), work / "resumed") == _relative(_rows(work / "local"), work / "local")
    assert not (work / "resumed" / "predictions.partial.csv").exists()
    assert not (work / "resumed" / ".gradcam-run").exists()
    assert len(list((work / "resumed" / "overlays").rglob("*.jpg"))) == 11


_RAY_NOISE = ("Token authentication", "core_worker.cc", "Progress bars disabled", "streaming_executor")


def test_ray_start_up_noise_is_hidden_unless_verbose(ray_run):
    quiet = ray_run["results"]["quiet"]
    assert quiet["default"]["rc"] == 0, quiet["default"]["stderr"]
    assert quiet["default"]["stderr"] == ""
    assert quiet["verbose"]["rc"] == 0
    # the token notice comes only from the first cluster of a machine that has no token yet
    shown = [n for n in _RAY_NOISE if n in quiet["verbose"]["stderr"]]
    assert {"core_worker.cc", "Progress bars disabled"} <= set(shown), quiet["verbose"]["stderr"]


def test_sigterm_stops_a_hanging_connection_at_once(ray_run):
    hang = ray_run["results"]["hang"]
    assert hang["alive"], "the command ended before the signal: the check would be vacuous"
    assert hang["rc"] in (-15, 143) and hang["exit_s"] < 3, hang
    assert not hang["out_exists"]  # nothing written before the cluster answered


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_an_unreachable_cluster_is_one_line_exit_2_within_15_s(artifacts, tmp_path, address):
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    argv = [sys.executable, "-m", "gradcam_model", "explain", str(artifacts["static.onnx"]), str(image), "--out",
            str(tmp_path / "out"), "--engine", "ray", "--address", address]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - started
    assert done.returncode == 2 and seconds < 15, (seconds, done.stderr)
    assert done.stderr == (
        f"gradcam: error: cannot reach the Ray cluster at {address} (connection refused); check --address (a Ray "
        "client: ray://HOST:10001, a cluster's head: HOST:6379, or auto on a cluster node)\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_ray_dataset_input_keeps_its_order(ray_run):
    results = ray_run["results"]
    expected = sorted(str(p) for p in Path(ray_run["spec"]["inputs"][0]).rglob("*") if p.is_file())
    assert results["dataset"]["paths"] == expected and results["dataset"]["failures"] == 1


def test_bench_ray_runs_end_to_end(ray_run):
    bench = ray_run["results"]["bench"]
    assert bench["rc"] == 0, bench["stderr"]
    measured = json.loads((ray_run["work"] / "bench-ray.json").read_text())
    assert (measured["images"], measured["batch_size"], list(measured["ray_s"])) == (4, 2, ["1 actor x 1 thread"])
    assert measured["local_s"] > 0 and measured["ray_s"]["1 actor x 1 thread"] > 0
    assert measured["actor_mb"]["1 actor x 1 thread"] > 0  # the actor reported its own peak memory
    assert "| Ray, 1 actor x 1 thread |" in bench["stdout"]


def test_bench_section_round_trip_and_help(tmp_path, capsys):
    from gradcam_model.bench.ray_engine import BEGIN, END, RayBenchResult, markdown
    from gradcam_model.bench.report import update_section
    from gradcam_model.cli import main

    result = RayBenchResult(images=8, size=(64, 48), batch_size=4, artifact="resnet18 gradcam at 'layer2'",
                            cluster_start_s=4.0, local_s=2.0, local_1_thread_s=3.0, ray_s={"1 actor x 1 thread": 4.0},
                            actor_ms={"1 actor x 1 thread": 9.5}, actor_mb={"1 actor x 1 thread": 300.0})  # fmt: skip
    section = markdown(result)
    assert section.startswith(BEGIN) and section.endswith(END) and "| 4.00 | 2.0 | 2.00 | 9.5 | 300 |" in section
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nkept\n\n{BEGIN}\nold\n{END}\n\ntail kept\n")
    update_section(doc, section)
    text = doc.read_text()
    assert "old" not in text and text.count(BEGIN) == 1 and text.endswith("\ntail kept\n")
    assert main(["bench", "--ray", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: gradcam bench --ray")


USER_ERRORS = [
    (["--threads", "2"], "--threads applies to --engine ray only"),
    (
        ["--engine", "ray", "--address", "127.0.0.1:1"],
        "cannot reach the Ray cluster at 127.0.0.1:1 (connection refused)",
    ),
    (["--engine", "ray", "--address", "ray://127.0.0.1:1"], "cannot reach the Ray cluster at ray://127.0.0.1:1"),
    (["--engine", "ray", "--address", "nowhere"], "expected 'auto', ray://HOST:PORT or HOST:PORT"),
    (["--engine", "ray", "--artifact-pt"], "the Ray engine runs .onnx artifacts"),
    (["--engine", "ray", "--no-ray"], 'needs ray[data], which this install lacks: pip install "gradcam_model[ray]"'),
]


@pytest.mark.parametrize(("flags", "message"), USER_ERRORS)
def test_user_errors_exit_2_before_any_cluster_starts(artifacts, tmp_path, capsys, monkeypatch, flags, message):
    from gradcam_model.cli import main

    artifact = str(artifacts["static.pt" if "--artifact-pt" in flags else "static.onnx"])
    if "--no-ray" in flags:
        monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    flags = [f for f in flags if f not in ("--artifact-pt", "--no-ray")]
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    assert main(["explain", artifact, str(image), "--out", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_cropping_artifact_on_odd_pictures_equals_the_local_engine(ray_run, crop_artifact, odd_picture_dir):
    """Same rows (the explained region included) and maps as explain_files, which equals runtime.preprocess."""
    work = ray_run["work"]
    assert ray_run["results"]["odd"]["failures"] == 0
    explain_files(crop_artifact, [odd_picture_dir], work / "odd-local", batch_size=BATCH, progress=False,
                  save_maps=True)  # fmt: skip
    ray_rows = _relative(_rows(work / "odd"), work / "odd")
    assert ray_rows == _relative(_rows(work / "odd-local"), work / "odd-local")
    assert len(ray_rows) == len(list(odd_picture_dir.iterdir()))
    for r in ray_rows:  # square centre crops (up to the resize's rounding of the longer side), never the whole
        assert float(r["region_w"]) == pytest.approx(float(r["region_h"]), rel=0.02), r["path"]
    page = (work / "odd" / "report.html").read_text()  # the Ray engine writes the report too
    assert page.count('"overlays":') == len(ray_rows)
    explainer = load_explainer(crop_artifact)
    for path in sorted(odd_picture_dir.iterdir()):
        expected = explainer(preprocess(load_image(path), explainer.metadata)[None]).cam[0]
        np.testing.assert_allclose(
            np.load(work / "odd" / "maps" / odd_picture_dir.name / f"{path.stem}.npy"), expected, rtol=0, atol=1e-6
        )
    import pyarrow.parquet as pq

    table = pq.read_table(work / "odd" / "predictions.parquet").to_pylist()
    for t, r in zip(table, ray_rows, strict=True):
        assert [t[k] for k in ("region_x", "region_y", "region_w", "region_h")] == pytest.approx(
            [float(r[k]) for k in ("region_x", "region_y", "region_w", "region_h")], abs=0.005
        )


def _decoded(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).astype(int)


def test_a_guided_artifacts_pictures_equal_the_local_engines(ray_run, guided_artifact):
    """``explain --engine ray`` with a guided Grad-CAM artifact (top 2) writes ``guided/`` as explain_files does:
    each overlay's guided picture under its name, the picture of the explainer's ``guided`` output."""
    from gradcam_model.runtime.visualize import encode_image, guided_picture

    work, result = ray_run["work"], ray_run["results"]["guided"]
    assert result["rc"] == 1 and "explained 11 of 12 images on Ray" in result["stdout"], result["stderr"]
    local = explain_files(guided_artifact, ray_run["spec"]["inputs"], work / "guided-local", batch_size=BATCH,
                          progress=False)  # fmt: skip
    assert _relative(_rows(work / "guided"), work / "guided") == _relative(_rows(work / "guided-local"),
                                                                           work / "guided-local")  # fmt: skip
    ray_files = sorted(p.relative_to(work / "guided" / "guided") for p in (work / "guided" / "guided").rglob("*.*"))
    explainer = load_explainer(guided_artifact)
    order = explainer.metadata.preprocessing.channel_order
    names = []
    for prediction in local.predictions:
        if prediction.error:
            continue
        image = preprocess(load_image(prediction.path, max_side=DEFAULT_MAX_SIDE), explainer.metadata)
        guided = explainer(image[None]).guided[0]  # [2, 3, 32, 32]
        for k, overlay in enumerate(prediction.overlays):
            name = overlay.relative_to(work / "guided-local" / "overlays")
            names.append(name)
            want = _decoded(encode_image(guided_picture(guided[k], channel_order=order), "jpg"))
            for out in ("guided-local", "guided"):
                got = cv2.imread(str(work / out / "guided" / name)).astype(int)
                assert got.shape == (32, 32, 3) and np.abs(got - want).max() <= 2, (out, name)
    assert len(names) == 22 and sorted(names) == ray_files  # 11 readable images x 2 classes, nothing else
