"""Same outputs before and after a refactor: every mode, both loops, seeded, compared byte for byte.

    python tests/same_outputs.py record DIR [--code TREE]    # run every case, keep what it wrote in DIR
    python tests/same_outputs.py compare DIR [--code TREE]   # run again (into a temporary folder), compare

`--code TREE` runs the `nst-ort` of another checkout (a `git archive` of the revision before the
refactor, say); default: this one. Each case runs the real CLI in a subprocess on the CPU provider
with one thread (the same inputs and thread count give the same bytes), in its own folder, with
`--loop host` and `--loop device`. Compared per case: the exit code, stderr, every file written
(images byte for byte; reports without their timings; checkpoints array by array and field by field,
since a .npz carries the time it was zipped). Cases: single (L-BFGS, also with a history of 3 that
wraps, and Adam), multi-scale, texture, masks, a two-style blend with histogram colors, an --init
image with luminance colors, iterate averaging, resume (also across a scale), --save-every with
checkpoints, a batch folder, and the NaN recovery (last finite image kept).

Exit 0: all the same; 1: differences (listed).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EX = ROOT / "examples"
CAT, STARRY, WAVE, COFFEE = (str(EX / n) for n in ("chelsea_cat.jpg", "starry_night.jpg", "great_wave.jpg",
                                                     "coffee.jpg"))
COMMON = ["--device", "cpu", "--threads", "1", "-q"]
LOOPS = ("host", "device")
# --average needs the image at every iteration: the host loop. `--loop device --average` ran the host
# loop silently until issue #10 and is refused (exit 2) since.
HOST_ONLY = {"average"}

# name -> list of CLI invocations (each a list of arguments), run in order in the case's folder.
CASES: dict[str, list[list[str]]] = {
    "single-lbfgs": [[CAT, STARRY, "-o", "out.png", "--size", "80", "--iterations", "8", "--report", "r.json"]],
    "lbfgs-short-history": [[CAT, STARRY, "-o", "out.png", "--size", "64", "--iterations", "12", "--history", "3",
                             "--report", "r.json", "--checkpoint", "ck.npz"]],
    "single-adam": [[CAT, STARRY, "-o", "out.png", "--size", "80", "--iterations", "8", "--optimizer", "adam",
                     "--report", "r.json"]],
    "multiscale": [[CAT, STARRY, "-o", "out.png", "--size", "96", "--scales", "64,96", "--scale-iterations", "4,3",
                    "--report", "r.json"]],
    "texture": [["--texture", STARRY, "-o", "out.png", "--texture-size", "96x64", "--iterations", "8", "--seed", "3",
                 "--report", "r.json"]],
    "masks": [[CAT, STARRY, WAVE, "-o", "out.png", "--size", "80", "--iterations", "6",
               "--style-masks", "{inputs}/left.png,{inputs}/right.png", "--report", "r.json"]],
    "blend-histogram": [[CAT, STARRY, WAVE, "-o", "out.png", "--size", "80", "--iterations", "6",
                         "--style-weights", "0.7,0.3", "--color", "histogram"]],
    "init-luminance": [[CAT, STARRY, "-o", "out.png", "--size", "80", "--iterations", "6", "--init", COFFEE,
                        "--color", "luminance"]],
    "average": [[CAT, STARRY, "-o", "out.png", "--size", "80", "--iterations", "6", "--average",
                 "--checkpoint", "ck.npz", "--report", "r.json"]],
    "resume": [[CAT, STARRY, "-o", "out.png", "--size", "80", "--iterations", "4", "--checkpoint", "ck1.npz"],
               [CAT, STARRY, "-o", "out.png", "--size", "80", "--iterations", "8", "--resume", "ck1.npz",
                "--checkpoint", "ck2.npz", "--report", "r.json"]],
    "resume-adam": [[CAT, STARRY, "-o", "out.png", "--size", "80", "--iterations", "4", "--optimizer", "adam",
                     "--checkpoint", "ck1.npz"],
                    [CAT, STARRY, "-o", "out.png", "--size", "80", "--iterations", "8", "--optimizer", "adam",
                     "--resume", "ck1.npz", "--checkpoint", "ck2.npz"]],
    "resume-next-scale": [[CAT, STARRY, "-o", "out.png", "--size", "96", "--scales", "64,96",
                           "--scale-iterations", "4,0", "--checkpoint", "ck1.npz"],
                          [CAT, STARRY, "-o", "out.png", "--size", "96", "--scales", "64,96",
                           "--scale-iterations", "4,3", "--resume", "ck1.npz", "--checkpoint", "ck2.npz"]],
    "save-every": [[CAT, STARRY, "-o", "out.png", "--size", "64", "--iterations", "5", "--save-every", "2",
                    "--checkpoint", "ck.npz"]],
    "batch": [["{inputs}/batch", STARRY, "-o", "outs", "--size", "64", "--iterations", "3"]],
    "nan": [[CAT, STARRY, "-o", "out.png", "--size", "64", "--iterations", "5", "--optimizer", "adam", "--lr", "1e30",
             "--report", "r.json", "--checkpoint", "ck.npz"]],
}


def make_inputs(folder: Path) -> None:
    """Masks (left and right half) and a batch folder, written the same way every time."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    left = np.zeros((60, 80), np.uint8)
    left[:, :40] = 255
    Image.fromarray(left).save(folder / "left.png")
    Image.fromarray(255 - left).save(folder / "right.png")
    (folder / "batch").mkdir(exist_ok=True)
    for name in ("chelsea_cat.jpg", "coffee.jpg"):
        shutil.copyfile(EX / name, folder / "batch" / name)
    (folder / "batch" / "broken.jpg").write_text("not an image")


def run_all(out: Path, code: Path, only: list[str] | None) -> None:
    inputs = out / "inputs"
    make_inputs(inputs)
    env = {**os.environ, "PYTHONPATH": str(code), "NST_ORT_MEMORY_CHECK": "1"}
    env.pop("NST_ORT_TRAIN_GRAPH", None)
    where = subprocess.run([sys.executable, "-c", "import nst_ort; print(nst_ort.__file__)"], env=env,
                           capture_output=True, text=True, cwd=out).stdout.strip()
    if not where.startswith(str(code.resolve())):
        raise SystemExit(f"nst_ort would come from {where}, not from {code}")
    for name, calls in CASES.items():
        if only and name not in only:
            continue
        for loop in LOOPS:
            if name in HOST_ONLY and loop != "host":
                continue
            d = out / "cases" / f"{name}.{loop}"
            d.mkdir(parents=True, exist_ok=True)
            log = []
            for args in calls:
                argv = [a.replace("{inputs}", str(inputs)) for a in args] + ["--loop", loop, *COMMON]
                if "outs" in argv:
                    (d / "outs").mkdir(exist_ok=True)
                cmd = [sys.executable, "-c", "import sys; sys.modules['torch'] = None; from nst_ort.commands.cli import main; "
                       "sys.exit(main(sys.argv[1:]))", *argv]
                r = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=600)
                log.append({"argv": argv, "returncode": r.returncode, "stderr": r.stderr})
                print(f"{name}.{loop}: exit {r.returncode} {r.stderr.strip()[:150]}", flush=True)
            (d / "calls.json").write_text(json.dumps(log, indent=1) + "\n")


# -- comparing ----------------------------------------------------------------------------------------
TIMINGS = {"seconds", "wall_seconds", "median_iteration_seconds"}


def _without_timings(x):
    if isinstance(x, dict):
        return {k: _without_timings(v) for k, v in x.items() if k not in TIMINGS}
    if isinstance(x, list):
        return [_without_timings(v) for v in x]
    return x


def _npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def compare_file(a: Path, b: Path, root_a: Path, root_b: Path) -> str | None:
    """root_a, root_b: the two record folders, whose paths the reports contain."""
    if a.suffix == ".json" and a.name != "calls.json":
        ja, jb = (_without_timings(json.loads(p.read_text().replace(str(r), "<dir>")))
                  for p, r in ((a, root_a), (b, root_b)))
        return None if ja == jb else f"differs: {_first_difference(ja, jb)}"
    if a.suffix == ".npz":
        za, zb = _npz(a), _npz(b)
        if sorted(za) != sorted(zb):
            return f"arrays {sorted(za)} != {sorted(zb)}"
        for k in za:
            if za[k].dtype != zb[k].dtype or za[k].shape != zb[k].shape or za[k].tobytes() != zb[k].tobytes():
                if k == "__meta__":
                    ma, mb = (json.loads(bytes(z[k]).decode()) for z in (za, zb))
                    return f"meta differs: {_first_difference(ma, mb)}"
                return f"array {k} differs"
        return None
    return None if a.read_bytes() == b.read_bytes() else "bytes differ"


def _first_difference(a, b, where="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{where}.{k} only on one side"
            if a[k] != b[k]:
                return _first_difference(a[k], b[k], f"{where}.{k}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return _first_difference(x, y, f"{where}[{i}]")
    return f"{where}: {str(a)[:200]!r} != {str(b)[:200]!r}"


def compare_trees(before: Path, after: Path) -> list[str]:
    problems = []
    cases_a, cases_b = before / "cases", after / "cases"
    names = sorted(p.name for p in cases_b.iterdir())
    for name in names:
        if not (cases_a / name).is_dir():
            problems.append(f"{name}: not in the recording {before}")
            continue
        fa = {str(p.relative_to(cases_a / name)) for p in (cases_a / name).rglob("*") if p.is_file()}
        fb = {str(p.relative_to(cases_b / name)) for p in (cases_b / name).rglob("*") if p.is_file()}
        if fa != fb:
            problems.append(f"{name}: files {sorted(fa ^ fb)} on one side only")
        ca = json.loads((cases_a / name / "calls.json").read_text())
        cb = json.loads((cases_b / name / "calls.json").read_text())
        for i, (x, y) in enumerate(zip(ca, cb)):
            xs = x["stderr"].replace(str(before), "<dir>")
            ys = y["stderr"].replace(str(after), "<dir>")
            if x["returncode"] != y["returncode"] or xs != ys:
                problems.append(f"{name} call {i + 1}: exit {x['returncode']} -> {y['returncode']}, "
                                f"stderr {xs.strip()!r} -> {ys.strip()!r}")
        for rel in sorted(fa & fb):
            if rel == "calls.json":
                continue
            why = compare_file(cases_a / name / rel, cases_b / name / rel, before, after)
            if why:
                problems.append(f"{name}/{rel}: {why}")
    return problems


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((folder / "cases").rglob("*.png"))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["record", "compare"])
    p.add_argument("dir", type=Path)
    p.add_argument("--code", type=Path, default=ROOT, help="the checkout whose nst_ort runs")
    p.add_argument("--only", nargs="*", help="case names (default: all)")
    args = p.parse_args()
    if args.action == "record":
        if args.dir.exists() and any(args.dir.iterdir()):
            raise SystemExit(f"{args.dir}: not empty")
        run_all(args.dir.resolve(), args.code.resolve(), args.only)
        (args.dir / "digests.json").write_text(json.dumps(digests(args.dir), indent=1) + "\n")
        return 0
    with tempfile.TemporaryDirectory(prefix="same-outputs-") as tmp:
        now = Path(tmp)
        run_all(now, args.code.resolve(), args.only)
        problems = compare_trees(args.dir.resolve(), now)
        images = len(digests(now))
    for line in problems:
        print("DIFFERENT", line)
    cases = len(args.only or CASES) * len(LOOPS)
    print(f"{cases} case runs, {images} images compared: "
          + ("all the same" if not problems else f"{len(problems)} difference(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
