"""`geoloc index` against a plain loop over the same network, side by side, on the same photos.

Each contender runs as a fresh process (start-up, imports and model load included), in
alternating order over several rounds (A B B A …, so a drift in the machine's load falls on
both alike); the wall time comes from the parent's clock and the peak RSS from the child's own
``ru_maxrss`` (``os.wait4``). Printed: the median time and RSS of each, the per-round and median
ratios, the descriptors' parity with the loop's (the reference implementation,
``benchmarks/plain_loop.py``), and the network's arithmetic rate against this CPU's float32
matrix-product peak, measured alternately in one process.

    python benchmarks/bench_vs_loop.py [--photos 16] [--rounds 3] [--precision fp32,bf16]
        [--random-weights] [--max-side 640] [--keep DIR]

The model is the default `netvlad-vgg16-pitts30k` (VGG-16 + NetVLAD + WPCA-4096). Without its
real weights in the cache (or with ``--random-weights``), a private GEOLOC_HOME gets a
checkpoint in the real Patch-NetVLAD layout with random weights (``tests/hub_fixtures.py``,
float64 WPCA like the released file), converted by `geoloc models download`: the arithmetic and
the memory of the default model, no download. Random weights make every photo's descriptor
alike (cosines between photos above 0.999), so parity is also given against the distance
between photos' descriptors.

Goals (issue 11): time ratio ≤ 0.9, RSS ratio ≤ 1.2, descriptors within 2e-3 of the loop's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LUND = ROOT.parent / "shared" / "data" / "lund" / "images"
MODEL = "netvlad-vgg16-pitts30k"
#: VGG-16 up to conv5_3 on 640×480: 2 × Σ H·W·C_out·C_in·9 over the 13 convolutions.
VGG16_GFLOP_640x480 = 187.9


def run_child(cmd: list[str], env: dict, cwd: Path = ROOT) -> dict:
    """Run ``cmd`` as a fresh process; its wall time, peak RSS (MiB) and stdout."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-2000:]}")
    return {"wall_s": wall, "rss_mib": usage.ru_maxrss / 1024, "stdout": stdout}


SETUP_SCRIPT = r"""
import json, sys
from pathlib import Path
from geoloc.models.registry import converted_path, get_entry, is_cached
entry = get_entry(sys.argv[1])
print(json.dumps({"cached": is_cached(entry), "file": str(converted_path(entry))}))
"""

SEED_SCRIPT = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from hub_fixtures import random_netvlad_weights, seed_patch_netvlad
work = Path(sys.argv[2])
print(seed_patch_netvlad(work / "hub", {4096: random_netvlad_weights(4096)}, work / "raw"))
"""


def python_json(script: str, *args: str, env: dict) -> dict:
    """Run a short script in a fresh interpreter; its last line of output, as JSON."""
    out = run_child([sys.executable, "-c", script, *args], env)["stdout"]
    return json.loads(out.strip().splitlines()[-1])


def setup_model(work: Path, random_weights: bool) -> tuple[dict, Path]:
    """The environment the contenders run in and the default model's converted file.

    Everything that loads torch or numpy runs in a child process: this parent stays small,
    because a child's ``ru_maxrss`` starts from the RSS of the process that spawned it.
    """
    env = dict(os.environ)
    if not random_weights and not python_json(SETUP_SCRIPT, MODEL, env=env)["cached"]:
        print(f"# {MODEL} is not cached: using random weights in the real layout")
        random_weights = True
    if random_weights:
        seeded = run_child([sys.executable, "-c", SEED_SCRIPT, str(ROOT / "tests"), str(work)], env)
        env["GEOLOC_HOME"] = str(work / "home")
        env["HF_HUB_CACHE"] = seeded["stdout"].strip().splitlines()[-1]
        env["HF_HUB_OFFLINE"] = "1"
    r = run_child([sys.executable, "-m", "geoloc", "models", "download", MODEL], env)
    shutil.rmtree(work / "raw", ignore_errors=True)
    print(f"# model: {MODEL}{' (random weights, real layout)' if random_weights else ''}; "
          f"`geoloc models download` (conversion, once): {r['wall_s']:.1f} s, peak RSS {r['rss_mib']:.0f} MiB")
    return env, Path(python_json(SETUP_SCRIPT, MODEL, env=env)["file"])


def make_photos(folder: Path, n: int) -> list[Path]:
    sources = sorted(LUND.glob("*.jpg"))
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        dest = folder / f"{i // len(sources):02d}_{sources[i % len(sources)].name}"
        shutil.copyfile(sources[i % len(sources)], dest)
        out.append(dest)
    return out


PEAK_SCRIPT = r"""
import json, sys, time, torch
from geoloc.models.registry import load_model
from geoloc.models import runtime
model = load_model(sys.argv[1])
runtime.prepare(model, "cpu", "fp32")
n = 4096
a, b = torch.randn(n, n), torch.randn(n, n)
x = torch.randn(1, 3, int(sys.argv[3]), int(sys.argv[2]))
peak, net = [], []
with torch.inference_mode():
    a @ b; model(x)  # warm-up (and the weights paged in)
    for _ in range(int(sys.argv[4])):
        t = time.perf_counter(); a @ b; peak.append(2 * n ** 3 / (time.perf_counter() - t) / 1e9)
        t = time.perf_counter(); model.local_features(x); net.append(time.perf_counter() - t)
        t = time.perf_counter(); model(x); whole = time.perf_counter() - t
print(json.dumps({"peak_gflops": max(peak), "trunk_s": min(net), "model_s": whole,
                  "threads": torch.get_num_threads()}))
"""


def network_rate(env: dict, width: int, height: int, reps: int = 3) -> dict:
    """The trunk's rate against the matmul peak, measured alternately in one fresh process."""
    return python_json(PEAK_SCRIPT, MODEL, str(width), str(height), str(reps), env=env)


LOAD_SCRIPT = r"""
import json, sys, time
def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) / 1024 for k in ("RssAnon", "RssFile")}
t0 = time.perf_counter()
import torch
from geoloc.models.registry import load_model
t1 = time.perf_counter()
before = rss()
model = load_model(sys.argv[1])
t2 = time.perf_counter()
loaded = rss()
from geoloc.models import runtime
runtime.prepare(model, "cpu", "fp32")
t3 = time.perf_counter()
prepared = rss()
with torch.inference_mode():
    model(torch.zeros(1, 3, 480, 640))
sizes = {}
for p in model.state_dict().values():
    sizes[str(p.dtype)] = sizes.get(str(p.dtype), 0) + p.numel() * p.element_size() / 2**20
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "prepare_s": t3 - t2, "weights_mib": sizes,
                  "whitening_mib": model.whiten.conv.weight.numel() * 4 / 2**20,
                  "anon_mib": loaded["RssAnon"] - before["RssAnon"], "file_mib": loaded["RssFile"] - before["RssFile"],
                  "after_prepare": prepared, "after_forward": rss()}))
"""


def model_load(env: dict) -> dict:
    """Load time and the memory the default model holds, in a fresh process: anonymous memory
    (copied) apart from file-backed pages (the memory-mapped safetensors file)."""
    return python_json(LOAD_SCRIPT, MODEL, env=env)


PARITY_SCRIPT = r"""
import json, sys
import numpy as np
from geoloc.database import Database
ref = np.load(sys.argv[1])
paths = [str(p) for p in ref["paths"]]
with Database.open(sys.argv[2]) as database:
    records = {str(r.path): r for r in database.photos()}
    ours = database.descriptors_for([records[p] for p in paths])
theirs = ref["descriptors"]
cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
scores = np.abs(ours @ ours.T - theirs @ theirs.T).max()
gap = np.linalg.norm(theirs[:, None] - theirs[None], axis=2)
np.fill_diagonal(gap, np.inf)
print(json.dumps({"min_cos": float(cos.min()), "max_score_diff": float(scores),
                  "error_vs_nearest_other": float(np.linalg.norm(ours - theirs, axis=1).max() / gap.min())}))
"""


def parity(reference: Path, db: Path, env: dict) -> dict:
    """How far the database's descriptors are from the loop's, photo by photo."""
    return python_json(PARITY_SCRIPT, str(reference), str(db), env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="fp32", help="comma-separated: geoloc runs at each")
    parser.add_argument("--max-side", type=int, default=640)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="work in DIR and keep it")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="geoloc-vs-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        env, model_file = setup_model(work, args.random_weights)
        photos = make_photos(work / "photos", args.photos)
        precisions = [p for p in args.precision.split(",") if p]
        print(f"# {len(photos)} lund photos (1024×768), longest side {args.max_side}, "
              f"{len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.2f} at the start")
        loop_cmd = [sys.executable, str(ROOT / "benchmarks" / "plain_loop.py"), str(model_file),
                    *map(str, photos), "--max-side", str(args.max_side), "--out", str(work / "ref.npz")]
        results: dict[str, list[dict]] = {"loop": [], **{p: [] for p in precisions}}

        def geoloc_run(precision: str, db: Path) -> dict:
            shutil.rmtree(db, ignore_errors=True)
            return run_child([sys.executable, "-m", "geoloc", "index", str(work / "photos"), "--db", str(db),
                              "--max-side", str(args.max_side), "--precision", precision, "-q", "--json"], env)

        for r in range(args.rounds):
            order = ["loop", *precisions] if r % 2 == 0 else [*precisions, "loop"]
            for name in order:
                if name == "loop":
                    results["loop"].append(run_child(loop_cmd, env))
                else:
                    results[name].append(geoloc_run(name, work / f"db-{name}"))
            line = ", ".join(f"{n} {results[n][-1]['wall_s']:.1f} s / {results[n][-1]['rss_mib']:.0f} MiB"
                             for n in results)
            print(f"round {r + 1}: {line}", flush=True)

        rate = network_rate(env, args.max_side, args.max_side * 3 // 4)
        load = min((model_load(env) for _ in range(3)), key=lambda x: x["load_s"])
        loop_t = statistics.median(x["wall_s"] for x in results["loop"])
        loop_m = statistics.median(x["rss_mib"] for x in results["loop"])
        print(f"\nplain loop (batch 1, {json.loads(results['loop'][0]['stdout'])['threads']} torch threads, "
              f"fp32): {loop_t:.1f} s, peak RSS {loop_m:.0f} MiB (medians)")
        for p in precisions:
            t = statistics.median(x["wall_s"] for x in results[p])
            m = statistics.median(x["rss_mib"] for x in results[p])
            ratios = [g["wall_s"] / lo["wall_s"] for g, lo in zip(results[p], results["loop"])]
            par = parity(work / "ref.npz", work / f"db-{p}", env)
            print(f"geoloc index --precision {p}: {t:.1f} s, peak RSS {m:.0f} MiB")
            print(f"  time ratio {t / loop_t:.2f} (per round: {', '.join(f'{x:.2f}' for x in ratios)}), "
                  f"RSS ratio {m / loop_m:.2f}")
            print(f"  descriptors vs the loop's: min cosine {par['min_cos']:.6f}, max |score difference| "
                  f"{par['max_score_diff']:.2e}, largest error / smallest distance between two photos "
                  f"{par['error_vs_nearest_other']:.3f}")
        gflop = VGG16_GFLOP_640x480 * (args.max_side * (args.max_side * 3 // 4)) / (640 * 480)
        print(f"\nnetwork (fp32, batch 1, {rate['threads']} threads, channels-last): trunk {rate['trunk_s']:.2f} s "
              f"= {gflop / rate['trunk_s']:.0f} GFLOP/s, whole model {rate['model_s']:.2f} s a photo; "
              f"float32 matmul peak (4096², same process, alternating) {rate['peak_gflops']:.0f} GFLOP/s: "
              f"{100 * gflop / rate['trunk_s'] / rate['peak_gflops']:.0f} % of it")
        print(f"model load (best of 3 fresh processes): import torch + geoloc {load['import_s']:.2f} s, "
              f"load_model {load['load_s']:.2f} s, channels-last {load['prepare_s']:.2f} s; weights "
              + ", ".join(f"{v:.0f} MiB {k.removeprefix('torch.')}" for k, v in load["weights_mib"].items())
              + f" (the {MODEL} whitening {load['whitening_mib']:.0f} MiB); RSS added by the load: "
              f"{load['anon_mib']:.0f} MiB anonymous, {load['file_mib']:.0f} MiB file-backed (memory-mapped), "
              f"{sum(load['after_prepare'].values()):.0f} MiB in all after channels-last, "
              f"{load['after_forward']['RssAnon']:.0f} MiB anonymous + {load['after_forward']['RssFile']:.0f} MiB "
              "file-backed after one photo")
        print(f"# load average {os.getloadavg()[0]:.2f} at the end")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
