"""`main.py process` against reference poses: registration, pose accuracy, time per stage.

Runs process on INPUT into OUT (or reads an OUT made before, with --reuse), then, with
--ref (a COLMAP sparse model of the same images made by another tool), aligns the
processed cameras to the reference ones by a similarity (Umeyama on the camera centres:
structure from motion fixes poses only up to one) and prints the rotation and centre
errors per camera as median / 90th percentile / max, centre errors in % of the
reference cameras' spread (the RMS distance of their centres from their centroid). The
alignment is fitted twice: on all cameras, and on the cameras the two reconstructions
agree on (least median of squares), since a block of cameras either side placed wrongly
would otherwise drag every error; the view jumps of both sides say which.

    python bench/bench_process.py ../shared/data/captures/beer/images --out .data/beer_proc \\
        --ref ../shared/data/captures/beer/sparse/0
    python bench/bench_process.py ../shared/data/captures/bonsai_photos --out .data/bonsai_proc
    python bench/bench_process.py ../shared/data/captures/beer/Beer.mp4 --out .data/beer_video

The 2-core CPU is usually shared: the seconds are what one run saw, not a best case.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def compare_to_reference(out_dir: str, ref_model: str, robust: bool = False) -> dict:
    """pose_errors of the processed frames against the reference model's images of the
    same names (matched by file name), with both sides' view jumps (loaders.normalize)."""
    from loaders.colmap import c2w_from_rigid, read_reconstruction
    from loaders.normalize import pose_errors, view_jumps

    with open(os.path.join(out_dir, "transforms.json"), encoding="utf-8") as f:
        meta = json.load(f)
    est = {os.path.basename(fr["file_path"]): np.asarray(fr["transform_matrix"]) for fr in meta["frames"]}
    rec = read_reconstruction(ref_model)
    ref = {rec.images[i].name: c2w_from_rigid(rec.images[i].cam_from_world()) for i in rec.reg_image_ids()}
    names = sorted(set(est) & set(ref))
    if len(names) < 3:
        raise SystemExit(f"only {len(names)} images in common between {out_dir} and {ref_model}")
    e_c2w, r_c2w = np.stack([est[n] for n in names]), np.stack([ref[n] for n in names])
    e = pose_errors(e_c2w, r_c2w, robust=robust)
    e["names"], e["n_ref"] = names, len(ref)
    e["jumps_est"], e["jumps_ref"] = view_jumps(e_c2w), view_jumps(r_c2w)
    e["c2w"] = (e_c2w, r_c2w)
    return e


def blockwise(e: dict) -> dict:
    """Errors with a separate similarity per jump-free block of the reference (its cameras
    between two view jumps), centre errors still in % of the whole reference's spread:
    how well the processed cameras agree with each part of the reference that is itself
    consistent."""
    from loaders.normalize import pose_errors

    est, ref = e["c2w"]
    cuts = [0] + [int(j) + 1 for j in e["jumps_ref"]] + [len(ref)]
    rot, cen = [], []
    for a, b in zip(cuts[:-1], cuts[1:]):
        if b - a < 3:
            continue
        part = pose_errors(est[a:b], ref[a:b])
        rot.append(part["rot_deg"])
        cen.append(part["centre_rel"] * part["spread"] / e["spread"])
    return {"rot_deg": np.concatenate(rot), "centre_rel": np.concatenate(cen),
            "inliers": np.ones(sum(len(r) for r in rot), bool), "blocks": len(rot)}


def print_errors(e: dict, label: str) -> None:
    rot, cen = e["rot_deg"], 100 * e["centre_rel"]
    print(f"| {label} | {int(e['inliers'].sum())} | {np.median(rot):.3f} | {np.percentile(rot, 90):.3f} | "
          f"{rot.max():.3f} | {np.median(cen):.3f} | {np.percentile(cen, 90):.3f} | {cen.max():.3f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input", help="folder of photos or a video")
    p.add_argument("--out", required=True, help="dataset folder process writes (or wrote, with --reuse)")
    p.add_argument("--ref", default=None, help="reference COLMAP model of the same images (sparse/0)")
    p.add_argument("--reuse", action="store_true", help="OUT exists already: only compare")
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--matcher", default="auto")
    p.add_argument("--quadratic", action=argparse.BooleanOptionalAction, default=None)
    a = p.parse_args(argv)
    if not a.reuse:
        from app.commands.process import print_report
        from loaders.process import ProcessOptions, process_capture
        from tqdm import tqdm

        bar = lambda d, t, u: tqdm(total=t, desc=d, unit=u, dynamic_ncols=True)  # noqa: E731
        report = process_capture(a.input, a.out, ProcessOptions(frames=a.frames, matcher=a.matcher,
                                                                          quadratic=a.quadratic), bar=bar)
        print_report(report)
    with open(os.path.join(a.out, "report.json"), encoding="utf-8") as f:
        report = json.load(f)
    print()
    print("| input | registered / given | matcher | mean reproj. err (px) | "
          + " | ".join(f"{k} (s)" for k in report["seconds"]) + " | total (s) |")
    print("|" + "---|" * (5 + len(report["seconds"])))
    print(f"| {os.path.basename(os.path.normpath(report['input']))} | {report['registered']} / {report['given']} "
          f"({100 * report['registered_fraction']:.1f} %) | {report['matcher']} | "
          f"{report['mean_reprojection_error_px']:.3f} | "
          + " | ".join(f"{v:.1f}" for v in report["seconds"].values()) + f" | {report['total_seconds']:.1f} |")
    if a.ref:
        plain = compare_to_reference(a.out, a.ref)
        robust = compare_to_reference(a.out, a.ref, robust=True)
        print()
        print(f"against {a.ref}: {len(plain['names'])} cameras in common (reference has {plain['n_ref']}); "
              f"reference cameras' spread {plain['spread']:.4g} ref units")
        print("| Umeyama on | fitted on | rot median (deg) | rot 90th | rot max | centre median (% spread) | "
              "centre 90th | centre max |")
        print("|---|---|---|---|---|---|---|---|")
        print_errors(plain, "all cameras")
        print_errors(robust, "agreeing cameras (LMedS)")
        if len(plain["jumps_ref"]):
            blocks = blockwise(plain)
            print_errors(blocks, f"each of the reference's {blocks['blocks']} jump-free blocks")
        print()
        # Consecutive frames of one video cannot turn the view by more than 30 degrees: such
        # a jump marks cameras that reconstruction got wrong (repetitive texture).
        print(f"view jumps > 30 deg between consecutive images: processed {plain['jumps_est'].tolist()}, "
              f"reference {plain['jumps_ref'].tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
