"""Generate the embedded default scene: a NeRF-synthetic-style multi-view dataset.

The scene is a round platform with a fine grid, a checkerboard cube, a striped
cylinder, a small striped ball, a sign with printed text and a glossy sphere,
all inside [-1.5, 1.5]^3 with world up = +Z (as in the Blender synthetic
scenes). Views are rendered headless with moderngl (EGL) and written in the
Blender ``transforms_*.json`` format with RGBA PNGs (alpha = 0 on background).

Run::

    python -m assets.make_scene --out assets/scene --res 128

Conventions shared with the consumer (the NeRF loader):

* ``transform_matrix`` is camera-to-world in the OpenGL convention: the camera
  looks down its -Z axis, +Y is up in the image, +X is right.
* ``focal = 0.5 * W / tan(0.5 * camera_angle_x)``; pixel (i, j), column i and
  row j counted from the top-left, has camera-space direction
  ``((i + 0.5 - W/2) / focal, -(j + 0.5 - H/2) / focal, -1)``.
* Every visible surface lies within distance ``SCENE_RADIUS`` of the origin and
  cameras sit at ``RADIUS`` from it, so all geometry is inside depth [2, 6].
* PNG colours are sRGB with straight (non-premultiplied) alpha, so compositing
  on white is ``rgb * a + (1 - a)``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CAMERA_ANGLE_X = 0.6911112070083618  # same as the lego scene
RADIUS = 4.0
ELEVATION_RANGE_DEG = (10.0, 70.0)
NEAR, FAR = 2.0, 6.0

# World-space direction *towards* the light. Fixed in the world (not attached to
# the camera) so that specular colour changes with the viewing direction.
LIGHT_DIR = np.array([0.55, -0.35, 0.9], dtype=np.float64)
LIGHT_DIR /= np.linalg.norm(LIGHT_DIR)

PLATFORM_RADIUS = 1.2
PLATFORM_TOP = -0.45
PLATFORM_BOTTOM = -0.55


# --------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------

def look_at_c2w(position, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world matrix, OpenGL convention (camera looks down -Z).

    position, target, up: (3,) array-likes. Returns (4, 4) float64.
    """
    p = np.asarray(position, dtype=np.float64)
    fwd = np.asarray(target, dtype=np.float64) - p
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, np.asarray(up, dtype=np.float64))
    right /= np.linalg.norm(right)
    cam_up = np.cross(right, fwd)
    c2w = np.eye(4)
    c2w[:3, 0] = right
    c2w[:3, 1] = cam_up
    c2w[:3, 2] = -fwd
    c2w[:3, 3] = p
    return c2w


def spherical_position(azimuth_rad: float, elevation_rad: float, radius: float = RADIUS) -> np.ndarray:
    """(3,) point on the sphere of `radius`, azimuth measured from +X about +Z."""
    ce = math.cos(elevation_rad)
    return radius * np.array([ce * math.cos(azimuth_rad), ce * math.sin(azimuth_rad), math.sin(elevation_rad)])


def make_poses(n_train: int = 100, n_val: int = 10, n_test: int = 20, seed: int = 0,
               radius: float = RADIUS) -> dict[str, np.ndarray]:
    """Camera-to-world poses per split: {'train': (n_train,4,4), 'val': ..., 'test': ...}.

    Train views are random on the spherical band between the elevation limits;
    z is drawn uniformly (not the angle) so that views are uniform by solid
    angle and the low band is not under-sampled. val/test are deterministic
    orbits that do not depend on the seed, so metrics stay comparable across
    regenerations with different train seeds.
    """
    rng = np.random.default_rng(seed)
    lo, hi = (math.radians(e) for e in ELEVATION_RANGE_DEG)
    z = rng.uniform(math.sin(lo), math.sin(hi), size=n_train)
    az = rng.uniform(0.0, 2.0 * math.pi, size=n_train)
    train = [look_at_c2w(spherical_position(a, math.asin(s), radius)) for a, s in zip(az, z)]

    # Offsets keep val/test azimuths off each other and off the +X axis.
    val = [look_at_c2w(spherical_position(2 * math.pi * (k + 0.25) / max(n_val, 1), math.radians(30.0), radius))
           for k in range(n_val)]
    test = []
    for k in range(n_test):
        t = k / max(n_test, 1)
        elev = math.radians(40.0 + 20.0 * math.sin(2 * math.pi * t))  # spiral between 20 and 60 deg
        test.append(look_at_c2w(spherical_position(2 * math.pi * (t + 0.05), elev, radius)))

    def stack(ms):
        return np.stack(ms) if ms else np.zeros((0, 4, 4))

    return {"train": stack(train), "val": stack(val), "test": stack(test)}


def focal_length(width: int, camera_angle_x: float = CAMERA_ANGLE_X) -> float:
    return 0.5 * width / math.tan(0.5 * camera_angle_x)


def project_points(points_world, c2w, width: int, height: int,
                   camera_angle_x: float = CAMERA_ANGLE_X) -> np.ndarray:
    """Continuous pixel coordinates of world points under the dataset's pinhole model.

    points_world: (N, 3); c2w: (4, 4). Returns (N, 3): (x, y, depth) where x runs
    right and y down in pixel units with pixel (i, j)'s centre at (i + 0.5, j + 0.5),
    and depth is the distance along the camera's viewing axis.
    """
    pts = np.asarray(points_world, dtype=np.float64).reshape(-1, 3)
    c2w = np.asarray(c2w, dtype=np.float64)
    cam = (pts - c2w[:3, 3]) @ c2w[:3, :3]  # world -> camera = R^T (p - t)
    f = focal_length(width, camera_angle_x)
    depth = -cam[:, 2]
    x = width / 2 + f * cam[:, 0] / depth
    y = height / 2 - f * cam[:, 1] / depth
    return np.stack([x, y, depth], axis=1)


def gl_projection(width: int, height: int, camera_angle_x: float = CAMERA_ANGLE_X,
                  znear: float = 0.5, zfar: float = 20.0) -> np.ndarray:
    """(4, 4) OpenGL clip matrix matching `project_points` exactly.

    GL maps NDC -1..1 to the outer pixel edges and rasterises at pixel centres,
    so x_ndc = 2 f x_cam / (W * -z_cam) is the same pinhole as the JSON
    convention. The GL clip range is wider than the consumer's near/far on
    purpose: it only has to keep the whole scene.
    """
    f = focal_length(width, camera_angle_x)
    p = np.zeros((4, 4))
    p[0, 0] = 2.0 * f / width
    p[1, 1] = 2.0 * f / height
    p[2, 2] = -(zfar + znear) / (zfar - znear)
    p[2, 3] = -2.0 * zfar * znear / (zfar - znear)
    p[3, 2] = -1.0
    return p


# --------------------------------------------------------------------------
# Textures (sRGB uint8, row 0 = top of the image as PIL draws it)
# --------------------------------------------------------------------------

def checker_texture(n: int, c0, c1, size: int = 256) -> np.ndarray:
    """(size, size, 3) uint8 checkerboard with n x n squares."""
    idx = (np.arange(size) * n // size)
    mask = (idx[:, None] + idx[None, :]) % 2 == 0
    return np.where(mask[..., None], np.array(c0, np.uint8), np.array(c1, np.uint8))


def stripe_texture(n: int, c0, c1, width: int = 512, height: int = 256, slant: float = 0.0) -> np.ndarray:
    """(height, width, 3) uint8 stripes along u; `slant` shears them into a helix.

    n stripe pairs around u in [0, 1) so the texture tiles seamlessly in u.
    """
    u = (np.arange(width) + 0.5)[None, :] / width
    v = (np.arange(height) + 0.5)[:, None] / height
    phase = (u + slant * v) * n
    mask = (np.floor(phase * 2).astype(int) % 2) == 0
    return np.where(mask[..., None], np.array(c0, np.uint8), np.array(c1, np.uint8))


def grid_texture(n_cells: int, bg, fg, major_every: int = 4, size: int = 1024) -> np.ndarray:
    """(size, size, 3) uint8 grid of n_cells x n_cells with a thicker line every `major_every`."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = bg
    cell = size / n_cells
    for k in range(n_cells + 1):
        w = 6 if k % major_every == 0 else 2
        c = int(round(k * cell))
        lo, hi = max(c - w // 2, 0), min(c + (w + 1) // 2, size)
        img[lo:hi, :] = fg
        img[:, lo:hi] = fg
    return img


def text_texture(lines, bg, fg, width: int = 512, height: int = 256, border=None) -> np.ndarray:
    """(height, width, 3) uint8 texture with centred lines of text drawn by PIL.

    lines: list of (text, font_px).
    """
    img = Image.new("RGB", (width, height), tuple(bg))
    draw = ImageDraw.Draw(img)
    fonts = [ImageFont.load_default(size=px) for _, px in lines]
    boxes = [draw.textbbox((0, 0), t, font=f) for (t, _), f in zip(lines, fonts)]
    heights = [b[3] - b[1] for b in boxes]
    gap = height * 0.06
    y = (height - sum(heights) - gap * (len(lines) - 1)) / 2
    for (t, _), f, b, h in zip(lines, fonts, boxes, heights):
        x = (width - (b[2] - b[0])) / 2 - b[0]
        draw.text((x, y - b[1]), t, font=f, fill=tuple(fg))
        y += h + gap
    if border is not None:
        draw.rectangle([4, 4, width - 5, height - 5], outline=tuple(border), width=8)
    return np.asarray(img)


def solid_texture(color) -> np.ndarray:
    """(4, 4, 3) uint8 single colour."""
    return np.broadcast_to(np.array(color, np.uint8), (4, 4, 3)).copy()


# --------------------------------------------------------------------------
# Meshes: (N, 8) float32 triangle lists, columns = position xyz, normal xyz, uv
# --------------------------------------------------------------------------

def quad_mesh(center, half_u, half_v) -> np.ndarray:
    """(6, 8) two triangles of the rectangle center +- half_u +- half_v.

    uv (0,0) is at center - half_u - half_v; the normal is half_u x half_v, so
    the texture reads correctly when seen from the side the normal points to.
    """
    c, a, b = (np.asarray(x, np.float64) for x in (center, half_u, half_v))
    n = np.cross(a, b)
    n /= np.linalg.norm(n)
    corners = [(c - a - b, (0, 0)), (c + a - b, (1, 0)), (c + a + b, (1, 1)), (c - a + b, (0, 1))]
    tri = [corners[i] for i in (0, 1, 2, 0, 2, 3)]
    return np.array([[*p, *n, *uv] for p, uv in tri], np.float32)


def rot_z(angle_rad: float) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def box_faces(center, half_size, yaw_rad: float = 0.0) -> list[np.ndarray]:
    """Six (6, 8) face meshes of a box rotated by yaw about +Z.

    Order: +X, -X, +Y, -Y, +Z, -Z. Side faces get v pointing up (+Z) so that
    textures stand upright; the faces are separate so each can carry its own
    texture without atlas bleeding between mip levels.
    """
    R = rot_z(yaw_rad)
    hx, hy, hz = half_size
    ex, ey, ez = R[:, 0], R[:, 1], R[:, 2]
    c = np.asarray(center, np.float64)
    return [
        quad_mesh(c + hx * ex, hy * ey, hz * ez),
        quad_mesh(c - hx * ex, -hy * ey, hz * ez),
        quad_mesh(c + hy * ey, -hx * ex, hz * ez),
        quad_mesh(c - hy * ey, hx * ex, hz * ez),
        quad_mesh(c + hz * ez, hx * ex, hy * ey),
        quad_mesh(c - hz * ez, hx * ex, -hy * ey),
    ]


def cylinder_side_mesh(base_center, radius: float, height: float, segments: int = 96) -> np.ndarray:
    """(segments*6, 8) smooth-shaded side of a +Z-aligned cylinder; u wraps once around."""
    base = np.asarray(base_center, np.float64)
    rows = []
    for k in range(segments):
        t0, t1 = k / segments, (k + 1) / segments
        verts = []
        for t, z in ((t0, 0.0), (t1, 0.0), (t1, height), (t0, height)):
            a = 2 * math.pi * t
            n = np.array([math.cos(a), math.sin(a), 0.0])
            verts.append([*(base + radius * n + [0, 0, z]), *n, t, z / height])
        rows += [verts[i] for i in (0, 1, 2, 0, 2, 3)]
    return np.array(rows, np.float32)


def disc_mesh(center, radius: float, up: bool = True, segments: int = 96) -> np.ndarray:
    """(segments*3, 8) flat disc in a z = const plane; uv is the planar xy map into [0,1]^2."""
    c = np.asarray(center, np.float64)
    n = np.array([0.0, 0.0, 1.0 if up else -1.0])
    rows = []
    for k in range(segments):
        a0, a1 = 2 * math.pi * k / segments, 2 * math.pi * (k + 1) / segments
        if not up:
            a0, a1 = a1, a0
        for a in (None, a0, a1):
            d = np.zeros(2) if a is None else np.array([math.cos(a), math.sin(a)])
            p = c + radius * np.array([d[0], d[1], 0.0])
            rows.append([*p, *n, 0.5 + 0.5 * d[0], 0.5 + 0.5 * d[1]])
    return np.array(rows, np.float32)


def sphere_mesh(center, radius: float, n_lon: int = 96, n_lat: int = 48) -> np.ndarray:
    """(n_lon*n_lat*6, 8) UV sphere about +Z; u = longitude / 2pi, v = 0 at the south pole."""
    c = np.asarray(center, np.float64)

    def vert(i, j):
        lon = 2 * math.pi * i / n_lon
        lat = -math.pi / 2 + math.pi * j / n_lat
        n = np.array([math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)])
        return [*(c + radius * n), *n, i / n_lon, j / n_lat]

    rows = []
    for i in range(n_lon):
        for j in range(n_lat):
            v00, v10, v11, v01 = vert(i, j), vert(i + 1, j), vert(i + 1, j + 1), vert(i, j + 1)
            rows += [v00, v10, v11, v00, v11, v01]
    return np.array(rows, np.float32)


# --------------------------------------------------------------------------
# Scene
# --------------------------------------------------------------------------

@dataclass
class Part:
    """One draw call: mesh (N, 8) float32, texture (h, w, 3) uint8 sRGB, Blinn-Phong material.

    `reflect` mixes in a reflection of a sky/ground gradient; together with the
    specular lobe it makes the glossy sphere's colour depend on view direction
    everywhere on its surface, not only at the highlight.
    """
    mesh: np.ndarray
    texture: np.ndarray
    ks: float = 0.05
    shininess: float = 16.0
    reflect: float = 0.0
    emissive: bool = False  # unlit: exact texture colour (used by the projection test)


CUBE_CENTER = np.array([-0.5, -0.45, PLATFORM_TOP + 0.35])
CUBE_HALF = 0.35
CUBE_YAW = math.radians(25.0)
CYL_BASE = np.array([0.55, -0.45, PLATFORM_TOP])
CYL_RADIUS, CYL_HEIGHT = 0.26, 0.95
GLOSSY_CENTER = np.array([0.42, 0.5, PLATFORM_TOP + 0.36])
GLOSSY_RADIUS = 0.36
BALL_RADIUS = 0.17
BALL_CENTER = np.array([CUBE_CENTER[0], CUBE_CENTER[1], CUBE_CENTER[2] + CUBE_HALF + BALL_RADIUS])
SIGN_CENTER = np.array([-0.45, 0.55, PLATFORM_TOP + 0.42])
SIGN_HALF = (0.46, 0.03, 0.25)  # width, thickness, height (half extents)
SIGN_YAW = math.radians(-30.0)


def build_scene() -> list[Part]:
    """The default scene as a list of Parts (all geometry within SCENE_RADIUS of the origin)."""
    parts: list[Part] = []

    # Platform: a thin round slab rather than a square one so that no corner
    # pokes out of the field of view from low, diagonal viewpoints.
    grid = grid_texture(24, bg=(226, 222, 210), fg=(60, 60, 70))
    parts.append(Part(disc_mesh([0, 0, PLATFORM_TOP], PLATFORM_RADIUS), grid, ks=0.04, shininess=8))
    parts.append(Part(disc_mesh([0, 0, PLATFORM_BOTTOM], PLATFORM_RADIUS, up=False), solid_texture((90, 90, 96))))
    rim = stripe_texture(72, (70, 70, 80), (200, 200, 205), width=1024, height=16)
    parts.append(Part(cylinder_side_mesh([0, 0, PLATFORM_BOTTOM], PLATFORM_RADIUS, PLATFORM_TOP - PLATFORM_BOTTOM,
                                         segments=192), rim))

    # Checker cube: each face has its own colour pair so faces (and thus the
    # viewing side) can be told apart.
    face_colors = [((210, 40, 40), (250, 235, 220)), ((40, 150, 60), (240, 240, 225)),
                   ((35, 80, 200), (245, 240, 220)), ((235, 170, 20), (40, 35, 30)),
                   ((140, 50, 170), (245, 245, 245)), ((30, 30, 30), (200, 200, 200))]
    for mesh, (c0, c1) in zip(box_faces(CUBE_CENTER, (CUBE_HALF,) * 3, CUBE_YAW), face_colors):
        parts.append(Part(mesh, checker_texture(6, c0, c1), ks=0.12, shininess=24))

    # Striped cylinder: slanted stripes make a helix, which is high-frequency
    # both around and along the axis.
    parts.append(Part(cylinder_side_mesh(CYL_BASE, CYL_RADIUS, CYL_HEIGHT),
                      stripe_texture(10, (20, 120, 190), (250, 250, 245), slant=0.6), ks=0.15, shininess=32))
    top = checker_texture(8, (250, 200, 40), (30, 30, 30))
    parts.append(Part(disc_mesh(CYL_BASE + [0, 0, CYL_HEIGHT], CYL_RADIUS), top, ks=0.1, shininess=24))

    # Small striped ball resting on the cube.
    parts.append(Part(sphere_mesh(BALL_CENTER, BALL_RADIUS, 64, 32),
                      stripe_texture(8, (230, 60, 120), (250, 250, 250)), ks=0.2, shininess=40))

    # Sign with text on both sides; the back is a different text so a model
    # cannot cheat by mirroring.
    front = text_texture([("NeRF Lab", 88), ("0123456789", 48)], bg=(250, 248, 240), fg=(20, 20, 30),
                         border=(200, 30, 30))
    back = text_texture([("HELLO", 96), ("view-dependent?", 40)], bg=(30, 40, 70), fg=(250, 230, 120),
                        border=(250, 230, 120))
    edge = solid_texture((120, 100, 80))
    hx, hy, hz = SIGN_HALF
    faces = box_faces(SIGN_CENTER, SIGN_HALF, SIGN_YAW)
    # -Y face looks "front" in the sign's frame; its u axis runs along +X so text reads left-to-right.
    for k, mesh in enumerate(faces):
        tex = {3: front, 2: back}.get(k, edge)
        parts.append(Part(mesh, tex, ks=0.05, shininess=16))

    # Glossy sphere: strong, tight highlight from the fixed world light plus an
    # environment reflection.
    parts.append(Part(sphere_mesh(GLOSSY_CENTER, GLOSSY_RADIUS), solid_texture((170, 22, 28)),
                      ks=1.0, shininess=90.0, reflect=0.5))
    return parts


def scene_radius(parts: list[Part]) -> float:
    """Largest distance from the origin of any vertex."""
    return float(max(np.linalg.norm(p.mesh[:, :3], axis=1).max() for p in parts))


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

_VERT = """
#version 330
uniform mat4 mvp;
uniform mat4 light_mvp;
in vec3 in_pos;
in vec3 in_normal;
in vec2 in_uv;
out vec3 v_pos;
out vec3 v_normal;
out vec2 v_uv;
out vec4 v_light;
void main() {
    v_pos = in_pos;
    v_normal = in_normal;
    v_uv = in_uv;
    v_light = light_mvp * vec4(in_pos, 1.0);
    gl_Position = mvp * vec4(in_pos, 1.0);
}
"""

_FRAG = """
#version 330
uniform sampler2D tex;
uniform sampler2DShadow shadow_map;
uniform vec3 cam_pos;
uniform vec3 light_dir;
uniform float ks;
uniform float shininess;
uniform float reflect_k;
uniform bool emissive;
uniform bool use_shadow;
uniform float shadow_texel;
in vec3 v_pos;
in vec3 v_normal;
in vec2 v_uv;
in vec4 v_light;
out vec4 f_color;

vec3 sky(vec3 d) {
    // Linear-space gradient: bright bluish sky above, dark warm ground below.
    float t = clamp(d.z * 0.5 + 0.5, 0.0, 1.0);
    return mix(vec3(0.05, 0.04, 0.03), vec3(0.55, 0.65, 0.85), smoothstep(0.35, 0.65, t));
}

// Anisotropic filtering done by hand: llvmpipe's built-in GL anisotropy makes
// it compile shader variants for tens of seconds and render 4x slower. Eight
// trilinear taps spread along the footprint's major axis, each at the LOD of
// the footprint's minor axis (or of 1/8 of the major one, whichever is larger).
vec3 sample_aniso(vec2 uv) {
    vec2 size = vec2(textureSize(tex, 0));
    vec2 dx = dFdx(uv), dy = dFdy(uv);
    float lx = length(dx * size), ly = length(dy * size);
    vec2 major = lx > ly ? dx : dy;
    float lmaj = max(lx, ly), lmin = min(lx, ly);
    float lod = log2(max(max(lmin, lmaj / 8.0), 1e-6));
    vec3 acc = vec3(0.0);
    for (int k = 0; k < 8; ++k)
        acc += textureLod(tex, uv + major * ((float(k) + 0.5) / 8.0 - 0.5), lod).rgb;
    return acc / 8.0;
}

void main() {
    vec3 albedo = sample_aniso(v_uv);  // sRGB texture format -> already linear here
    if (emissive) { f_color = vec4(albedo, 1.0); return; }
    vec3 n = normalize(v_normal);
    vec3 v = normalize(cam_pos - v_pos);
    // Thin sheets can be seen from behind; shade the side facing the camera.
    if (dot(n, v) < 0.0) n = -n;
    vec3 l = normalize(light_dir);
    float ndl = max(dot(n, l), 0.0);

    float lit = 1.0;
    if (use_shadow) {
        vec3 s = v_light.xyz / v_light.w * 0.5 + 0.5;
        // Slope-scaled bias: grazing surfaces need more to avoid acne.
        float bias = 0.0015 + 0.004 * (1.0 - ndl);
        lit = 0.0;
        for (int dx = -2; dx <= 2; ++dx)
            for (int dy = -2; dy <= 2; ++dy)
                lit += texture(shadow_map, vec3(s.xy + vec2(dx, dy) * shadow_texel, s.z - bias));
        lit /= 25.0;
    }

    float hemi = mix(0.10, 0.28, n.z * 0.5 + 0.5);
    vec3 color = albedo * (hemi + 0.95 * ndl * lit);
    vec3 h = normalize(l + v);
    float spec = ndl > 0.0 ? pow(max(dot(n, h), 0.0), shininess) : 0.0;
    color += ks * spec * lit * vec3(1.0);
    if (reflect_k > 0.0) {
        float fres = 0.04 + 0.96 * pow(1.0 - max(dot(n, v), 0.0), 5.0);
        color += reflect_k * mix(0.08, 1.0, fres) * sky(reflect(-v, n));
    }
    // Clamp before the MSAA resolve so that a blown-out highlight does not
    // bleed into its anti-aliased neighbours.
    f_color = vec4(clamp(color, 0.0, 1.0), 1.0);
}
"""

_SHADOW_VERT = """
#version 330
uniform mat4 light_mvp;
in vec3 in_pos;
void main() { gl_Position = light_mvp * vec4(in_pos, 1.0); }
"""

_SHADOW_FRAG = """
#version 330
void main() {}
"""

GL_SRGB8 = 0x8C41


def create_context():
    """Headless moderngl context: EGL first (no display needed), else the default backend."""
    import moderngl

    errors = []
    for kwargs in ({"backend": "egl"}, {}):
        try:
            return moderngl.create_standalone_context(**kwargs)
        except Exception as e:  # noqa: BLE001 - any failure means "try the next backend"
            errors.append(f"{kwargs or 'default'}: {e}")
    raise RuntimeError("could not create a headless OpenGL context (" + "; ".join(errors) + ")")


def ortho(half: float, znear: float, zfar: float) -> np.ndarray:
    """(4, 4) symmetric orthographic projection."""
    p = np.eye(4)
    p[0, 0] = p[1, 1] = 1.0 / half
    p[2, 2] = -2.0 / (zfar - znear)
    p[2, 3] = -(zfar + znear) / (zfar - znear)
    return p


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)


class Renderer:
    """Renders a list of Parts to (H, W, 4) uint8 straight-alpha sRGB images.

    Anti-aliasing combines `samples`x MSAA with `ss`x supersampling and a box
    filter: MSAA alone smooths silhouettes but not the texture and specular
    detail inside them, which is exactly what the dataset is meant to stress.
    """

    def __init__(self, parts: list[Part], width: int, height: int, camera_angle_x: float = CAMERA_ANGLE_X,
                 ss: int = 2, samples: int = 4, shadows: bool = True, ctx=None):
        self._own_ctx = ctx is None
        self.ctx = ctx if ctx is not None else create_context()
        self.width, self.height, self.ss = width, height, ss
        self.camera_angle_x = camera_angle_x
        ctx = self.ctx
        samples = min(samples, ctx.max_samples)
        W, H = width * ss, height * ss
        self.prog = ctx.program(vertex_shader=_VERT, fragment_shader=_FRAG)
        self.color_rb = ctx.renderbuffer((W, H), 4, samples=samples, dtype="f4")
        self.depth_rb = ctx.depth_renderbuffer((W, H), samples=samples)
        self.fbo = ctx.framebuffer(self.color_rb, self.depth_rb)
        self.resolve_tex = ctx.texture((W, H), 4, dtype="f4")
        self.resolve_fbo = ctx.framebuffer(self.resolve_tex)

        self.draws = []
        for p in parts:
            vbo = ctx.buffer(np.ascontiguousarray(p.mesh, np.float32).tobytes())
            vao = ctx.vertex_array(self.prog, [(vbo, "3f 3f 2f", "in_pos", "in_normal", "in_uv")])
            tex = self._texture(p.texture)
            self.draws.append((p, vbo, vao, tex))

        # Light-space matrix for a directional light: orthographic over the scene's bounding sphere.
        r = scene_radius(parts) * 1.05
        light_view = np.linalg.inv(look_at_c2w(LIGHT_DIR * 4.0 * r))
        self.light_mvp = ortho(r, 0.1, 8.0 * r) @ light_view
        self.shadows = shadows
        self.shadow_size = 2048
        if shadows:
            self.shadow_tex = ctx.depth_texture((self.shadow_size, self.shadow_size))
            self.shadow_tex.compare_func = "<="
            self.shadow_tex.filter = (ctx.LINEAR, ctx.LINEAR)
            self.shadow_tex.repeat_x = self.shadow_tex.repeat_y = False
            self.shadow_fbo = ctx.framebuffer(depth_attachment=self.shadow_tex)
            self.shadow_prog = ctx.program(vertex_shader=_SHADOW_VERT, fragment_shader=_SHADOW_FRAG)
            self.shadow_vaos = [ctx.vertex_array(self.shadow_prog, [(vbo, "3f 20x", "in_pos")])
                                for _, vbo, _, _ in self.draws]
            self._render_shadow_map()

    def _texture(self, img: np.ndarray):
        # GL's texture origin is the bottom row; flip so v = 1 is the image top.
        data = np.ascontiguousarray(np.flipud(img)[..., :3], np.uint8)
        h, w = data.shape[:2]
        try:
            tex = self.ctx.texture((w, h), 3, data.tobytes(), alignment=1, internal_format=GL_SRGB8)
        except Exception:  # noqa: BLE001 - drivers without sRGB textures: gamma in numpy instead
            lin = (np.power(data / 255.0, 2.2)).astype(np.float32)
            tex = self.ctx.texture((w, h), 3, lin.tobytes(), dtype="f4")
        tex.build_mipmaps()
        tex.filter = (self.ctx.LINEAR_MIPMAP_LINEAR, self.ctx.LINEAR)
        return tex

    def _render_shadow_map(self):
        self.shadow_fbo.use()
        self.shadow_fbo.clear(depth=1.0)
        self.ctx.enable(self.ctx.DEPTH_TEST)
        self.shadow_prog["light_mvp"].write(self.light_mvp.T.astype("f4").tobytes())
        for (p, _, _, _), vao in zip(self.draws, self.shadow_vaos):
            if not p.emissive:
                vao.render()

    def render_linear(self, c2w: np.ndarray) -> np.ndarray:
        """(H, W, 4) float32 linear RGB, *premultiplied* by coverage alpha, rows top to bottom."""
        ctx = self.ctx
        W, H = self.width * self.ss, self.height * self.ss
        view = np.linalg.inv(np.asarray(c2w, np.float64))
        mvp = gl_projection(W, H, self.camera_angle_x) @ view
        self.fbo.use()
        ctx.viewport = (0, 0, W, H)
        self.fbo.clear(0.0, 0.0, 0.0, 0.0, depth=1.0)
        ctx.enable(ctx.DEPTH_TEST)
        ctx.disable(ctx.CULL_FACE)
        prog = self.prog
        prog["mvp"].write(mvp.T.astype("f4").tobytes())  # GL reads column-major
        prog["light_mvp"].write(self.light_mvp.T.astype("f4").tobytes())
        prog["cam_pos"].value = tuple(float(x) for x in np.asarray(c2w)[:3, 3])
        prog["light_dir"].value = tuple(float(x) for x in LIGHT_DIR)
        prog["tex"].value = 0
        prog["use_shadow"].value = self.shadows
        if self.shadows:
            self.shadow_tex.use(location=1)
            prog["shadow_map"].value = 1
            prog["shadow_texel"].value = 1.0 / self.shadow_size
        for p, _, vao, tex in self.draws:
            tex.use(location=0)
            prog["ks"].value = p.ks
            prog["shininess"].value = p.shininess
            prog["reflect_k"].value = p.reflect
            prog["emissive"].value = p.emissive
            vao.render()
        ctx.copy_framebuffer(self.resolve_fbo, self.fbo)
        img = np.frombuffer(self.resolve_fbo.read(components=4, dtype="f4"), np.float32).reshape(H, W, 4)
        img = img[::-1]  # GL rows are bottom-up
        s = self.ss
        # Box filter over s x s blocks: the block's mean sample position is the
        # low-res pixel centre, so the pinhole convention is preserved.
        return img.reshape(self.height, s, self.width, s, 4).mean(axis=(1, 3))

    def render(self, c2w: np.ndarray) -> np.ndarray:
        """(H, W, 4) uint8 RGBA, sRGB colour with straight alpha (as Blender writes PNGs)."""
        lin = self.render_linear(c2w)
        a = lin[..., 3:4]
        rgb = np.where(a > 1e-6, lin[..., :3] / np.maximum(a, 1e-6), 0.0)
        out = np.empty(lin.shape, np.uint8)
        out[..., :3] = np.round(linear_to_srgb(rgb) * 255.0)
        out[..., 3:] = np.round(np.clip(a, 0.0, 1.0) * 255.0)
        # Colour under fully transparent pixels is meaningless; zero it so PNGs compress better.
        out[out[..., 3] == 0, :3] = 0
        return out

    def release(self):
        """Free GL objects; the context too if this renderer created it."""
        # Rebind the default framebuffer first: moderngl re-binds the last used
        # one when creating the next framebuffer, which is a GL error if deleted.
        self.ctx.detect_framebuffer(0).use()
        objs = [o for _, vbo, vao, tex in self.draws for o in (vao, vbo, tex)]
        objs += [self.fbo, self.color_rb, self.depth_rb, self.resolve_fbo, self.resolve_tex, self.prog]
        if self.shadows:
            objs += self.shadow_vaos + [self.shadow_fbo, self.shadow_tex, self.shadow_prog]
        for o in objs:
            o.release()
        if self._own_ctx:
            self.ctx.release()


# --------------------------------------------------------------------------
# Dataset writing
# --------------------------------------------------------------------------

def write_dataset(out_dir: str, res: int = 128, n_train: int = 100, n_val: int = 10, n_test: int = 20,
                  seed: int = 0, ss: int = 2, samples: int = 4, verbose: bool = True) -> dict:
    """Render all splits into out_dir in Blender format. Returns {'seconds': ..., 'frames': ...}."""
    t0 = time.perf_counter()
    parts = build_scene()
    poses = make_poses(n_train, n_val, n_test, seed)
    renderer = Renderer(parts, res, res, ss=ss, samples=samples)
    n_frames = 0
    try:
        for split, mats in poses.items():
            split_dir = os.path.join(out_dir, split)
            os.makedirs(split_dir, exist_ok=True)
            # Drop frames from an earlier, larger run so the folder matches the JSON.
            for name in os.listdir(split_dir):
                if name.startswith("r_") and name.endswith(".png"):
                    os.remove(os.path.join(split_dir, name))
            frames = []
            for k, c2w in enumerate(mats):
                rgba = renderer.render(c2w)
                # optimize=True is slow at 800 px but deterministic and keeps the committed copy small.
                Image.fromarray(rgba, "RGBA").save(os.path.join(split_dir, f"r_{k}.png"), optimize=True)
                frames.append({"file_path": f"./{split}/r_{k}", "rotation": 0.0,
                               "transform_matrix": [[float(x) for x in row] for row in c2w]})
                n_frames += 1
            with open(os.path.join(out_dir, f"transforms_{split}.json"), "w") as f:
                json.dump({"camera_angle_x": CAMERA_ANGLE_X, "frames": frames}, f, indent=4)
                f.write("\n")
            if verbose:
                print(f"{split}: {len(frames)} frames", file=sys.stderr)
    finally:
        renderer.release()
    secs = time.perf_counter() - t0
    if verbose:
        print(f"wrote {n_frames} frames at {res}x{res} to {out_dir} in {secs:.1f} s", file=sys.stderr)
    return {"seconds": secs, "frames": n_frames}


def noise_texture(seed: int, size: int = 1024) -> np.ndarray:
    """(size, size, 3) uint8 coloured multi-scale noise: unlike the scene's grids, checkers
    and stripes, every patch of it is unique, which is what feature matching needs."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((size, size, 3), np.float32)
    for cells, weight in ((4, 1.0), (16, 0.7), (64, 0.5), (256, 0.35)):
        small = Image.fromarray((rng.random((cells, cells, 3)) * 255).astype(np.uint8))
        acc += weight * np.asarray(small.resize((size, size), Image.BICUBIC), np.float32)
    acc -= acc.min()
    return (acc / acc.max() * 255).astype(np.uint8)


def backdrop_parts(seed: int = 0) -> list[Part]:
    """A floor and a surrounding wall in unique noise textures, for captures that feature
    matching must register (the object scene alone repeats its patterns)."""
    floor = quad_mesh([0, 0, PLATFORM_BOTTOM - 0.02], [5.0, 0, 0], [0, 5.0, 0])
    wall = cylinder_side_mesh([0, 0, PLATFORM_BOTTOM - 0.02], 6.0, 4.0, segments=96)
    wall[:, 3:6] *= -1  # seen from inside
    return [Part(floor, noise_texture(seed), ks=0.0), Part(wall, noise_texture(seed + 1), ks=0.0)]


def write_capture(out_dir: str, n_views: int = 16, res: int = 192, elevation_deg: float = 35.0,
                  arc_deg: float = 360.0, radius: float = RADIUS, background=(90, 90, 90), ext: str = ".jpg",
                  ctx=None) -> np.ndarray:
    """A photo-like capture for structure-from-motion tests: the scene on a noise-textured
    floor inside a noise-textured wall (backdrop_parts), n_views images along an orbit arc
    of arc_deg (every view looks at the origin; the elevation alternates by 10
    degrees so the cameras are not in one plane) written as view_000.jpg, ...; no poses
    are written.
    Returns the true camera-to-world matrices (n_views, 4, 4), OpenGL convention, and the
    pinhole focal is ``focal_length(res)``."""
    os.makedirs(out_dir, exist_ok=True)
    renderer = Renderer(build_scene() + backdrop_parts(), res, res, ss=1, samples=4, shadows=False, ctx=ctx)
    poses = []
    try:
        for k in range(n_views):
            el = math.radians(elevation_deg + (5.0 if k % 2 else -5.0))
            step = math.radians(arc_deg) / (n_views if arc_deg >= 360.0 else max(n_views - 1, 1))
            c2w = look_at_c2w(spherical_position(k * step, el, radius))
            rgba = renderer.render(c2w).astype(np.float32) / 255.0
            a = rgba[..., 3:]
            rgb = rgba[..., :3] * a + (1 - a) * np.asarray(background, np.float32) / 255.0
            img = Image.fromarray((rgb * 255 + 0.5).astype(np.uint8))
            img.save(os.path.join(out_dir, f"view_{k:03d}{ext}"), **({"quality": 95} if ext == ".jpg" else {}))
            poses.append(c2w)
    finally:
        renderer.release()
    return np.stack(poses)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "scene"))
    ap.add_argument("--res", type=int, default=128, help="square image size in pixels")
    ap.add_argument("--n-train", type=int, default=100)
    ap.add_argument("--n-val", type=int, default=10)
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seed for the random train poses")
    ap.add_argument("--ss", type=int, default=2, help="supersampling factor per axis")
    ap.add_argument("--samples", type=int, default=4, help="MSAA samples")
    args = ap.parse_args(argv)
    write_dataset(args.out, args.res, args.n_train, args.n_val, args.n_test, args.seed, args.ss, args.samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
