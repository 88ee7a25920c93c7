"""fastgan.compat: drop-ins that bind fastgan's ops onto other codebases' op packages, by name.

- ``fastgan.compat.nvlabs``: NVlabs' ``torch_utils.ops`` (StyleGAN2-ADA, StyleGAN3, R3GAN and the
  projects that vendor them): ``patch()``, ``unpatch()``, ``patched()``, and
  ``python -m fastgan.compat.nvlabs train.py ARGS...``.

(The submodules are not imported here, so that ``python -m fastgan.compat.nvlabs`` runs the
module once.)
"""
