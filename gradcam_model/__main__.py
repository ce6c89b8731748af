"""``python -m gradcam_model``: the ``gradcam`` command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
