"""Files shipped with the app: the embedded scene, the 2D lab's image, a demo run."""
import os

ASSETS_DIR = os.path.dirname(os.path.abspath(__file__))
SCENE_DIR = os.path.join(ASSETS_DIR, "scene")
LAB_IMAGE = os.path.join(ASSETS_DIR, "lab_image.png")
DEMO_RUN = os.path.join(ASSETS_DIR, "demo_run")
