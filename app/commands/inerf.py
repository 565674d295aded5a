"""`main.py inerf RUN_DIR`: recover a camera pose from an image with a trained field (iNeRF).

The starting guess is a dataset camera (--init-view) moved by --perturb-deg
about a random axis through the origin and --perturb-trans in a random
direction; errors are reported against that unperturbed camera, so the target
image should show that view: by default it is the dataset's own image of it,
or pass --image (e.g. assets/scene/test/r_3.png for test:3). The image must have
the dataset's field of view; its size may differ (the focal length is scaled).
"""
from __future__ import annotations

import math

from app.cli import UserError


def configure(p) -> None:
    p.add_argument("run_dir")
    p.add_argument("--image", default=None, help="target image (PNG/JPEG); default: the --init-view image")
    p.add_argument("--init-view", "--view", dest="init_view", default="test:0",
                   help="SPLIT:INDEX of the dataset camera to start from (and measure errors against)")
    p.add_argument("--perturb-deg", type=float, default=10.0, help="rotation of the starting guess, degrees")
    p.add_argument("--perturb-trans", type=float, default=0.1, help="translation of the starting guess, scene units")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch", type=int, default=512, help="rays per step")
    p.add_argument("--sampling", choices=["interest", "random"], default="interest",
                   help="pixels around corner keypoints (iNeRF) or uniform")
    p.add_argument("--seed", type=int, default=0, help="seed of the perturbation and the ray sampling")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--out-pose", default=None, help="write the recovered camera-to-world 4x4 as JSON")
    p.add_argument("--device", default="auto")


def parse_view(text: str, scene):
    split, sep, idx = text.partition(":")
    sp = scene.split(split or "test")
    try:
        i = int(idx) if sep else 0
        if i < 0:
            raise IndexError
        return sp, i, sp.c2w[i]
    except (ValueError, IndexError):
        raise UserError(f"--init-view: {text!r} is not SPLIT:INDEX with 0 <= INDEX < {len(sp)}") from None


def check_args(args) -> None:
    if not (1 <= args.steps <= 100_000):
        raise UserError(f"--steps must be between 1 and 100000, got {args.steps}")
    if not (0 <= args.perturb_deg <= 180):
        raise UserError(f"--perturb-deg must be between 0 and 180, got {args.perturb_deg}")
    if not (math.isfinite(args.perturb_trans) and args.perturb_trans >= 0):
        raise UserError(f"--perturb-trans must be a number >= 0, got {args.perturb_trans}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UserError(f"--lr must be a positive number, got {args.lr}")
    if not (1 <= args.batch <= 1 << 20):
        raise UserError(f"--batch must be between 1 and {1 << 20}, got {args.batch}")
    if args.log_every < 1:
        raise UserError(f"--log-every must be >= 1, got {args.log_every}")


def run(args) -> int:
    import numpy as np

    from app.tools.inerf import InvertPose, perturb_pose, rotation_error_deg, translation_error
    from app.engine.runs import load_run, write_json
    from loaders.images import composite_alpha, read_image

    check_args(args)
    target = None
    if args.image is not None:
        target = read_image(args.image)  # DataError naming the file when unreadable
    trainer, scene, _ = load_run(args.run_dir, args.device)
    sp, i, gt = parse_view(args.init_view, scene)
    camera = sp.cameras[i]  # the view's own intrinsics and distortion
    if target is None:
        target = sp.images[i]
    else:
        target = composite_alpha(target, scene.white_bkgd)[..., :3]
        h, w = target.shape[:2]
        if abs(h / w - trainer.height / trainer.width) > 0.01:
            raise UserError(f"--image: {args.image} is {w}x{h}, but the dataset's aspect ratio is "
                            f"{trainer.width}x{trainer.height}")
        camera = camera.resized(w, h)
    init = perturb_pose(gt, args.perturb_deg, args.perturb_trans, args.seed)
    try:
        inv = InvertPose(trainer, target, init, lr=args.lr, batch=args.batch, sampling=args.sampling,
                         seed=args.seed, camera=camera)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    for note in inv.notes:
        print(f"note: {note}")
    r0, t0 = rotation_error_deg(init, gt), translation_error(init, gt)
    print(f"target {target.shape[1]}x{target.shape[0]}, {len(inv.keypoints)} keypoints, "
          f"{len(inv.pool)} candidate pixels ({inv.sampling} sampling), {args.batch} rays/step")
    print(f"{'step':>6} {'loss':>9} {'rot err (deg)':>14} {'trans err':>10}")
    print(f"{0:>6} {'':>9} {r0:>14.3f} {t0:>10.4f}")

    def report(rec):
        if rec["step"] % args.log_every == 0 or rec["step"] == args.steps:
            print(f"{rec['step']:>6} {rec['loss']:>9.5f} {rec['rot_err_deg']:>14.3f} {rec['trans_err']:>10.4f}",
                  flush=True)
    hist = inv.run(args.steps, gt_c2w=gt, callback=report)
    last = hist[-1]
    print(f"final: rotation error {last['rot_err_deg']:.3f} deg (from {r0:.3f}), "
          f"translation error {last['trans_err']:.4f} (from {t0:.4f}) after {len(hist)} steps")
    if args.out_pose:
        # c2w in the capture's own frame (what its files and other tools use); the scene's
        # normalised frame, where the errors are measured, alongside.
        write_json(args.out_pose, {"c2w": scene.to_world_poses(last["c2w"]).tolist(),
                                   "init_c2w": scene.to_world_poses(init).tolist(),
                                   "c2w_scene": np.asarray(last["c2w"]).tolist(),
                                   "view": args.init_view, "rot_err_deg": last["rot_err_deg"],
                                   "trans_err": last["trans_err"], "steps": len(hist)})
        print(f"wrote {args.out_pose}")
    return 0

