"""The benchmark harness runs end to end (tiny sizes, pylenet only) and writes its JSON."""
import json

from pylenet import bench


def test_bench_harness_writes_results(tmp_path):
    out = tmp_path / "r.json"
    assert bench.main(["--no-torch", "--steps", "2", "--repeats", "1", "--models", "lenet5,cudnn_lenet",
                       "--batches", "16", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["gemm_ceiling_gflops"] > 0
    assert [(r["model"], r["batch"]) for r in result["runs"]] == [("lenet5", 16), ("cudnn_lenet", 16)]
    for r in result["runs"]:
        p = r["pylenet"]
        assert p["train_samples_per_s"] > 0 and p["infer_images_per_s"] > 0 and p["memory_plan_bytes"] > 0
        assert "torch" not in r
