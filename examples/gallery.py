"""Make the README's gallery with the default model: python examples/gallery.py [--only NAME ...]

Every panel is a real nst-ort result; equivalent CLI commands are printed as it goes.
Takes about 40 minutes on 2 idle CPU cores (the 1024 px multi-scale panel is most of it).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from nst_ort import Config, StyleInput, Stylizer
from nst_ort.media.images import load_image, resize, save_image, fit_size

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "docs" / "images"
THREADS = 2


def run(cfg: Config, log: dict, name: str) -> np.ndarray:
    t0 = time.time()
    s = Stylizer(cfg)
    records = list(s.run())
    log[name] = {"seconds": round(time.time() - t0, 1), "iterations": len(records),
                 "first": {k: getattr(records[0], k) for k in ("loss", "content", "style")},
                 "final": {k: getattr(records[-1], k) for k in ("loss", "content", "style")}}
    print(f"{name}: {log[name]}", flush=True)
    return s.result()


def tile(images: list[np.ndarray], labels: list[str], height: int = 256) -> Image.Image:
    panels = []
    for img, label in zip(images, labels):
        w = round(img.shape[1] * height / img.shape[0])
        p = Image.fromarray((np.clip(resize(img, (w, height)), 0, 1) * 255 + 0.5).astype(np.uint8))
        d = ImageDraw.Draw(p)
        d.rectangle([0, height - 14, 6 * len(label) + 6, height], fill=(0, 0, 0))
        d.text((3, height - 13), label, fill=(255, 255, 255))
        panels.append(p)
    total = sum(p.width for p in panels) + 4 * (len(panels) - 1)
    out = Image.new("RGB", (total, height), (255, 255, 255))
    x = 0
    for p in panels:
        out.paste(p, (x, 0))
        x += p.width + 4
    return out


def cfg(content, styles, size=256, iterations=100, **kw) -> Config:
    c = Config(content=(HERE / content) if content else None,
               styles=[StyleInput(HERE / s, w) for s, w in styles], size=size, threads=THREADS, device="cpu", **kw)
    c.optim.iterations = iterations
    return c


def ex(name):
    return load_image(HERE / name)


def hero(log):
    # nst-ort examples/tuebingen_neckarfront.jpg examples/starry_night.jpg -o out.png --scales 256,512 --scale-iterations 200,100
    img = run(cfg("tuebingen_neckarfront.jpg", [("starry_night.jpg", 1)], size=512, scales=[256, 512],
                  scale_iterations=[200, 100]), log, "hero")
    save_image(img, OUT / "hero_result.png")
    tile([ex("tuebingen_neckarfront.jpg"), ex("starry_night.jpg"), img], ["content", "style", "nst-ort"], 300).save(OUT / "hero.png")


def styles(log):
    # nst-ort examples/chelsea_cat.jpg examples/STYLE.jpg -o out.png --size 256 --iterations 200
    names = ["starry_night.jpg", "great_wave.jpg", "composition_vii.jpg"]
    imgs = [run(cfg("chelsea_cat.jpg", [(n, 1)]), log, f"cat_{n}") for n in names]
    for n, img in zip(names, imgs):
        save_image(img, OUT / f"cat_{n.split('.')[0]}.png")
    tile([ex("chelsea_cat.jpg"), *imgs], ["content", *[n.split(".")[0] for n in names]], 200).save(OUT / "styles.png")


def colors(log):
    # ... --color luminance / --color histogram
    plain = load_image(OUT / "cat_composition_vii.png")  # from styles()
    lum = run(cfg("chelsea_cat.jpg", [("composition_vii.jpg", 1)], color="luminance"), log, "cat_luminance")
    hist = run(cfg("chelsea_cat.jpg", [("composition_vii.jpg", 1)], color="histogram"), log, "cat_histogram")
    tile([ex("chelsea_cat.jpg"), ex("composition_vii.jpg"), plain, lum, hist],
         ["content", "style", "style colors", "--color luminance", "--color histogram"], 200).save(OUT / "colors.png")


def blend(log):
    # nst-ort examples/chelsea_cat.jpg examples/starry_night.jpg examples/great_wave.jpg --style-weights 0.5,0.5
    img = run(cfg("chelsea_cat.jpg", [("starry_night.jpg", 0.5), ("great_wave.jpg", 0.5)]), log, "blend")
    tile([ex("starry_night.jpg"), ex("great_wave.jpg"), img], ["style A", "style B", "0.5 A + 0.5 B"], 200).save(OUT / "blend.png")


def texture(log):
    # nst-ort --texture examples/starry_night.jpg -o tex.png --texture-size 256x256 --iterations 300
    out = []
    for n in ["starry_night.jpg"]:
        c = cfg(None, [(n, 1)], size=320, iterations=200, texture_size=(320, 192), init="noise")
        out += [ex(n), run(c, log, f"texture_{n}")]
    tile(out, ["style", "texture from noise"], 200).save(OUT / "texture.png")


def multiscale(log):
    # nst-ort examples/tuebingen_neckarfront.jpg examples/great_wave.jpg -o big.jpg --size 1024 --scales 256,512,1024 --scale-iterations 100,50,20
    img = run(cfg("tuebingen_neckarfront.jpg", [("great_wave.jpg", 1)], size=1024, scales=[256, 512, 1024],
                  scale_iterations=[100, 50, 20]), log, "multiscale_1024")
    save_image(img, OUT / "multiscale_1024.jpg")


ALL = {"hero": hero, "styles": styles, "colors": colors, "blend": blend, "texture": texture, "multiscale": multiscale}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", choices=list(ALL), default=list(ALL))
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    log_path = OUT / "gallery_log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    for name in args.only:
        ALL[name](log)
        log_path.write_text(json.dumps(log, indent=1) + "\n")
